"""A replica's settings, resolved on the replica's own node.

The application is built on one node (the driver of `sctir cluster up`, or the node `serve run` builds it
on), but its replicas run elsewhere. Settings whose defaults describe a machine (execution_concurrency from
the CPU count, the python interpreter, the demo model's KV cache from the memory available) would be the
builder's if the built Settings were pickled to the replicas. So the replicas get only what was set (SCTIR_*,
flags, a config file's args), plus the engine and the model chosen once for the whole application (every
replica must serve the same model), and resolve the rest in their own process.
"""

from __future__ import annotations

from typing import Any

from service.machine import choose
from service.settings import EngineKind, Settings

Overrides = dict[str, Any]


def overrides(settings: Settings) -> Overrides:
    """What the replicas are told: the fields set explicitly, with the engine (vLLM: the cluster hosts its
    own engines) and the model resolved here, so that no replica picks another model by its own hardware."""
    chosen = choose(settings.model_copy(update={"engine": EngineKind.VLLM}))
    return settings.model_dump(include=settings.model_fields_set) | {"engine": chosen.engine, "model": chosen.model}


def resolve(given: Overrides) -> Settings:
    """The settings of a replica on this node: `given` over this node's SCTIR_* environment and defaults, and
    the demo model's CPU settings (its KV cache sized from this node's memory) where none was given."""
    return choose(Settings(**given))
