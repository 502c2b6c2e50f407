"""The offline demo model shipped in models/demo: current, servable, and its recipe still learns.

The weights are committed because CI has no time to train them (a build takes about ten
CPU-minutes); these tests keep them honest: the build record must name the current recipe, and a
short run of the same build code must still learn. What the shipped model answers through the
real service (vLLM, the Docker sandbox, every README example): tests/test_e2e.py; with and without
code execution: tests/test_training.py (bench/demo_model.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.tir import format_prompt
from training.demo import BUILD_RECORD, BUILD_VERSION, build_signature
from training.synthetic import FAMILIES

REPO = Path(__file__).resolve().parent.parent
STALE = "models/demo was built by another recipe: run `make demo-model` and commit models/demo"


def test_the_shipped_model_is_built_by_the_current_recipe(demo_model: Path) -> None:
    record = json.loads((demo_model / BUILD_RECORD).read_text())
    assert record["report"]["build_version"] == BUILD_VERSION, STALE
    assert record["signature"] == build_signature(), STALE


def test_the_shipped_model_is_a_small_ordinary_checkpoint(demo_model: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(demo_model)
    assert config.model_type == "qwen2" and config.num_attention_heads == 4
    assert config.hidden_size // config.num_attention_heads >= 32  # vLLM's CPU attention
    assert (demo_model / "model.safetensors").stat().st_size < 8 * 2**20  # a few MB in git
    report = json.loads((demo_model / BUILD_RECORD).read_text())["report"]
    assert report["teacher_forced_accuracy"] >= 0.9
    assert set(report["by_family"]) == set(FAMILIES) and min(report["by_family"].values()) >= 0.85
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    problem = "What is 2^10 - 1?"
    messages = [{"role": "user", "content": problem}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == format_prompt(problem)
    assert {"generation_config.json", "tokenizer.json", "config.json"} <= {p.name for p in demo_model.iterdir()}


SHORT_RUN = """
import json, sys
from training.demo import build_demo_model
from training.demo_training import DemoConfig
config = DemoConfig(steps=60, warmup_steps=5, batch_size=2, eval_every=15, eval_problems=6)
build_demo_model(sys.argv[1], config, threads=1, progress=False)
print(json.dumps(config.__dict__))
"""


def test_a_short_run_of_the_recipe_learns(tmp_path: Path) -> None:
    """The build code end to end (data, tokenizer round trip, packing, masking, save), 60 steps."""
    pytest.importorskip("transformers")
    from training.demo_training import DemoConfig

    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-c", SHORT_RUN, str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((out / BUILD_RECORD).read_text())
    losses = [entry["loss"] for entry in record["report"]["history"]]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), losses
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.6 * losses[0], f"the loss did not fall: {losses}"
    config = DemoConfig(**json.loads(proc.stdout.strip().splitlines()[-1]))
    assert record["signature"] == build_signature(config) != build_signature()
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
