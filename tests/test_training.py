"""Training tier: every recipe stage on a tiny model on CPU, and the demo model's proof.

Each stage runs as its command (`python -m training.sft RECIPE ...`) in a subprocess, the way a
user runs it, with OMP_NUM_THREADS=1 (two threads on a busy 2-core machine ran 9x slower), on the
tiny recipes (training/recipes/tiny/) with real TRL, DeepSpeed, GPTQModel and vLLM (or the
transformers engine where vLLM is not installed). The expensive products are session fixtures,
built once: the tiny stage 1 and stage 2 models. The demo model is the one shipped in models/demo
(the `demo_model` fixture; tests/test_demo_model.py checks that it is the current recipe's and
that a short run of that recipe learns).

Stage 1 and 2 train on the reference data (tests skip without ../shared/data); KTO and the
demo model need none.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="the training dependencies are not installed (pip install -e '.[train]')")

from training.data import data_dir  # noqa: E402
from training.quantize import EXPECTED_GPTQ, read_gptq_config  # noqa: E402
from training.recipe import RECIPES_DIR  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY = RECIPES_DIR / "tiny"


def run(args: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    """A training command in a subprocess (one thread), its output kept for the failure message."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout
    )
    print(f"\n$ {' '.join(args)}  ({time.monotonic() - started:.0f} s)")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def needs_data(name: str) -> Path:
    path = data_dir() / name
    if not path.exists():
        pytest.skip(f"{path} absent: the tiny SFT recipes train on the reference data (set SCTIR_DATA_DIR)")
    return path


# -- stage 1 and stage 2 SFT ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs_data("math_test.jsonl")
    out = tmp_path_factory.mktemp("stage1-cot")
    run(["-m", "training.sft", str(TINY / "stage1_cot.yaml"), "--output-dir", str(out)], timeout=600)
    return out


@pytest.fixture(scope="session")
def stage2(stage1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs_data("tora_corpus_examples.jsonl")
    out = tmp_path_factory.mktemp("stage2-tir")
    run(
        ["-m", "training.sft", str(TINY / "stage2_tir.yaml"), f"model.name_or_path={stage1}", "--output-dir", str(out)],
        timeout=600,
    )
    return out


def assert_loss_decreased(summary: dict) -> None:
    losses = summary["losses"]
    assert len(losses) >= 6, losses
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert all(math.isfinite(x) for x in losses)
    assert last < first * 0.95, f"loss did not decrease: {losses}"


@pytest.mark.data
def test_stage1_cot_sft_learns(stage1: Path) -> None:
    summary = json.loads((stage1 / "sft_summary.json").read_text())
    assert_loss_decreased(summary)
    assert summary["steps"] > 10
    assert (stage1 / "model.safetensors").exists() and (stage1 / "config.json").exists()


@pytest.mark.data
def test_stage2_tir_sft_continues_from_stage1(stage1: Path, stage2: Path) -> None:
    from transformers import AutoTokenizer

    summary = json.loads((stage2 / "sft_summary.json").read_text())
    assert_loss_decreased(summary)
    # Same tokenizer as stage 1, and the served chat template in the checkpoint.
    assert (stage1 / "tokenizer.json").read_text() == (stage2 / "tokenizer.json").read_text()
    tokenizer = AutoTokenizer.from_pretrained(stage2)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "### Problem: Q?\n### Solution: "


@pytest.mark.data
def test_zero3_accelerate_config_runs_sft_steps_on_cpu(stage1: Path, tmp_path: Path) -> None:
    """The DeepSpeed ZeRO-3 path of a recipe, on one CPU process (first start compiles an op)."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "zero3"
    run(
        [
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(RECIPES_DIR / "accelerate" / "zero3_cpu.yaml"),
            "-m",
            "training.sft",
            str(TINY / "stage2_tir.yaml"),
            f"model.name_or_path={stage1}",
            "training.max_steps=3",
            "training.logging_steps=1",
            "--output-dir",
            str(out),
        ],
        timeout=900,
    )
    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["steps"] == 3 and len(summary["losses"]) == 3
    assert (out / "model.safetensors").exists()


# -- 8-bit GPTQ -----------------------------------------------------------------------------------


PREPARE_WEIGHTS = REPO / "deploy" / "prepare-weights.sh"


def prepare_weights(served: Path, quantized_dir: Path, base: Path) -> subprocess.CompletedProcess[str]:
    """The compose stack's weights step (deploy/prepare-weights.sh), with the tiny recipe."""
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # this venv's `sctir`
        "OMP_NUM_THREADS": "1",
        "SCTIR_MODEL": str(served),
        "QUANTIZED_DIR": str(quantized_dir),
        "BASE_MODEL": str(base),
        "QUANTIZE_RECIPE": str(TINY / "quantize.yaml"),
    }
    proc = subprocess.run(["sh", str(PREPARE_WEIGHTS)], cwd=REPO, env=environment, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="session")
def quantized(stage2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8-bit GPTQ of the tiny stage 2 model, made as the compose stack makes the served weights."""
    pytest.importorskip("gptqmodel")
    out = tmp_path_factory.mktemp("gptq") / "served"
    prepare_weights(out, out, stage2)
    return out


@pytest.mark.data
def test_weights_step_runs_once_and_only_for_its_own_output(quantized: Path, stage2: Path, tmp_path: Path) -> None:
    summary = (quantized / "quantize_summary.json").read_text()
    again = prepare_weights(quantized, quantized, stage2)
    assert "ready" in again.stdout and (quantized / "quantize_summary.json").read_text() == summary
    elsewhere = prepare_weights(Path("someone/else"), tmp_path / "unused", stage2)
    assert "serving it as is" in elsewhere.stdout and not (tmp_path / "unused").exists()
    assert not quantized.with_name("served.partial").exists()


@pytest.mark.data
def test_gptq_checkpoint_has_the_config_vllm_expects(quantized: Path) -> None:
    """8 bits, groups of 128, quantized in activation order with static groups (g_idx sequential)."""
    config = read_gptq_config(quantized)
    assert {k: config.get(k) for k in EXPECTED_GPTQ} == EXPECTED_GPTQ
    assert config["checkpoint_format"] == "gptq" and config["sym"] is True
    assert config["meta"]["activation_order"] == "static"
    quantize_config = json.loads((quantized / "quantize_config.json").read_text())
    assert (quantize_config["bits"], quantize_config["group_size"], quantize_config["quant_method"]) == (8, 128, "gptq")
    summary = json.loads((quantized / "quantize_summary.json").read_text())
    assert summary["calibration_samples"] == 256

    import torch
    from safetensors import safe_open

    with safe_open(str(quantized / "model.safetensors"), "pt") as tensors:
        names = set(tensors.keys())
        proj = "model.layers.0.mlp.down_proj"
        assert {f"{proj}.{t}" for t in ("qweight", "qzeros", "scales", "g_idx")} <= names
        assert f"{proj}.weight" not in names
        g_idx = tensors.get_tensor(f"{proj}.g_idx")
        in_features = g_idx.shape[0]
        assert torch.equal(g_idx, torch.arange(in_features, dtype=g_idx.dtype) // 128)  # static groups
        assert tensors.get_tensor(f"{proj}.qweight").shape[0] == in_features // 4  # 8 bits: 4 per int32
        assert tensors.get_tensor(f"{proj}.scales").shape[0] == in_features // 128

    try:
        from vllm.model_executor.layers.quantization import get_quantization_config
    except ImportError:
        return
    # What vLLM makes of the checkpoint with quantization=gptq (a desc_act=True one it refuses).
    parsed = get_quantization_config("gptq").from_config(quantize_config)
    assert (parsed.weight_bits, parsed.group_size, parsed.desc_act) == (8, 128, False)
    with pytest.raises(ValueError, match="desc_act=True"):
        get_quantization_config("gptq").from_config({**quantize_config, "desc_act": True})


@pytest.mark.data
def test_gptq_checkpoint_loads_back_and_generates(quantized: Path) -> None:
    proc = run(["-m", "training.quantize", "--verify", str(quantized)], timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["new_tokens"] > 0
    assert result["quantized_modules"], result
    assert result["prompt"].endswith("### Solution: ")


# -- the demo model -------------------------------------------------------------------------------


def test_transformers_engine_serves_the_demo_model_through_the_solver(demo_model: Path) -> None:
    """training.hf_engine through the real solver and the local executor: code, output, answer."""
    import asyncio

    from sandbox.executors import LocalExecutor
    from service.engines.base import Engine
    from service.solver import CandidateStatus
    from training.evaluate import checkpoint_engine, solve_all, solve_config
    from training.synthetic import heldout_problems

    async def main():
        engine = checkpoint_engine(str(demo_model), "transformers", max_model_len=1024)
        assert isinstance(engine, Engine)
        await engine.start()
        executor = LocalExecutor(timeout_s=10.0, concurrency=2)
        await executor.start()
        try:
            problems = [(p.problem, str(p.answer)) for p in heldout_problems(8)]
            config = solve_config(num_samples=2, temperature=0.7, max_new_tokens=128)
            return await solve_all(engine, executor, problems, config, concurrency=4)
        finally:
            await executor.close()
            await engine.close()

    evaluation = asyncio.run(main())
    assert evaluation.correct >= 7, [(o.problem, o.reference, o.answer) for o in evaluation.outcomes]
    candidate = evaluation.outcomes[0].result.candidates[0]
    assert candidate.status is CandidateStatus.ANSWERED and candidate.executions >= 1
    assert "```python\nprint(" in candidate.text and "```output\n" in candidate.text


def _docker_sandbox_missing() -> str | None:
    """Why the Docker sandbox cannot run here, or None when its image is there."""
    from service.settings import Settings

    image = getattr(Settings(), "sandbox_image", None)
    if not image or not shutil.which("docker"):
        return "no docker CLI or sandbox image setting"
    proc = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True)
    return None if proc.returncode == 0 else f"sandbox image {image} not built (scripts/build-sandbox-image.sh)"


@pytest.mark.parametrize("executor", ["local", "docker"])
def test_demo_model_answers_from_the_tool(demo_model: Path, tmp_path: Path, executor: str) -> None:
    """>= 95% of 100 held-out problems with code execution, <= 10% with every output block empty."""
    if executor == "docker" and (reason := _docker_sandbox_missing()):
        pytest.skip(reason)
    results_file = tmp_path / "demo.json"
    run(
        ["-m", "bench.demo_model", "--model", str(demo_model), "--executor", executor, "--json-out", str(results_file)],
        timeout=900,
    )
    results = json.loads(results_file.read_text())
    runs = results["runs"]
    print(json.dumps({name: run["accuracy"] for name, run in runs.items()}), results["engine"], executor)
    assert runs["with execution"]["total"] == 100
    assert runs["with execution"]["executions"] >= 100  # every problem ran its code
    assert runs["with execution"]["accuracy"] >= 0.95, runs["with execution"]["failures"]
    assert runs["execution disabled"]["accuracy"] <= 0.10


# -- KTO ------------------------------------------------------------------------------------------


def test_kto_on_self_sampled_completions(demo_model: Path, tmp_path: Path) -> None:
    from service.answers import AnswerMode, matches_reference

    out = tmp_path / "kto"
    proc = run(
        ["-m", "training.kto", str(TINY / "kto.yaml"), f"model.name_or_path={demo_model}", "--output-dir", str(out)],
        timeout=900,
    )
    samples = [json.loads(line) for line in (out / "kto_samples.jsonl").read_text().splitlines()]
    sampling = json.loads((out / "sampling_summary.json").read_text())
    assert sampling["problems"] == 16 and len(samples) == sampling["completions"] == 64  # 4 per problem
    labels = {s["label"] for s in samples}
    assert labels == {True, False}, "self-sampling at T=1.5 should give right and wrong completions"
    for sample in samples:
        assert sample["prompt"][0]["role"] == "user" and sample["completion"][0]["role"] == "assistant"
        assert sample["label"] == matches_reference(sample["answer"], sample["reference"], AnswerMode.INTEGER)
    executed = [s for s in samples if s["label"]]
    assert all("```output\n" in s["completion"][0]["content"] for s in executed)

    summary = json.loads((out / "kto_summary.json").read_text())
    assert summary["steps"] >= 1 and (out / "model.safetensors").exists()
    rewards = summary["rewards"]  # per logging step; a step whose batches held no rejected one logs none
    assert any("rewards/chosen" in r and "rewards/rejected" in r and "rewards/margins" in r for r in rewards), rewards
    values = [v for r in rewards for k, v in r.items() if k.startswith("rewards/")]
    assert values and all(math.isfinite(v) for v in values)
    assert "rewards: chosen" in proc.stdout
