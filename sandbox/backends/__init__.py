"""Backends: what starts and stops the runners (sandbox/runner/) of a pool, one kind of runner each.

- `DockerBackend` (docker.py): a hardened container of the sandbox image per runner,
  attached over its stdin/stdout; which containers are whose is owners.py's business;
- `LocalBackend` (local.py): a plain subprocess of this host, NOT isolated.

The pool (sandbox/pool.py) does the rest: it keeps slots warm, checks and replaces them,
and routes blocks to them.
"""

from sandbox.backends.base import Backend, SandboxUnavailable, Slot
from sandbox.backends.docker import DockerBackend, DockerLimits
from sandbox.backends.local import LocalBackend

__all__ = ["Backend", "DockerBackend", "DockerLimits", "LocalBackend", "SandboxUnavailable", "Slot"]
