"""8-bit GPTQ quantization for T4 GPUs, with GPTQModel (the maintained successor of AutoGPTQ).

    python -m training.quantize training/recipes/quantize.yaml
    python -m training.quantize training/recipes/tiny/quantize.yaml      # CPU, tiny model
    python -m training.quantize --verify DIR                             # load back and generate

Bits 8, group size 128, symmetric, quantized in activation order (desc_act), calibrated on 256
TIR texts in the served chat template (training.data.calibration_texts). The output is a GPTQ
checkpoint (quantize_config.json and config.json's quantization_config: quant_method "gptq",
checkpoint_format "gptq", bits 8, group_size 128; qweight/qzeros/scales/g_idx tensors) that
GPTQModel, transformers+optimum and vLLM (quantization=gptq, dtype float16 on a T4) load.

Activation order with static groups (`static_groups: true`, the default): the columns are
quantized in activation order, as the winners did, but each group keeps its original columns, so
g_idx is the plain i // 128 and the checkpoint is written with desc_act false: "static activation
ordering". vLLM 0.32 refuses desc_act true outright ("GPTQ group activation ordering
(desc_act=True) is no longer supported"); `static_groups: false` writes the classic AutoGPTQ
desc_act checkpoint (permuted g_idx) for older loaders.

Why GPTQModel and not llm-compressor: GPTQModel writes the GPTQ checkpoint format the served
model uses (llm-compressor writes compressed-tensors) and quantizes on CPU too, so the tiny recipe
runs on a laptop; AutoGPTQ itself is archived and cannot quantize without CUDA.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.data import DataSpec, calibration_texts
from training.recipe import ModelSection, QuantizationSection, load_recipe, section

log = logging.getLogger(__name__)

# GPTQModel sizes its CPU thread pool at import: half the cores, up to 12. Its model loader asks
# for 2 workers, so on a 2-core machine that default (1) fails.
MIN_CPU_WORKERS, MAX_CPU_WORKERS = 2, 12

# What vLLM's GPTQ loader reads (quantize_config.json): static activation order, see above.
EXPECTED_GPTQ = {"quant_method": "gptq", "bits": 8, "group_size": 128, "desc_act": False, "static_groups": True}


@dataclass
class QuantizeSummary:
    output_dir: str
    calibration_samples: int
    seconds: float
    quantize_config: dict[str, Any]


def cpu_workers(requested: int | None = None) -> int:
    """GPTQModel's CPU thread pool: `requested`, else half the cores this process may use (2 to 12)."""
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(MIN_CPU_WORKERS, min(MAX_CPU_WORKERS, cores // 2))


def _set_cpu_workers(requested: int | None = None) -> None:
    """Before GPTQModel is imported (it reads the variable then); an explicit $GPTQMODEL_CPU_WORKERS wins."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(cpu_workers(requested)))


def _gptq_config(q: QuantizationSection):
    from gptqmodel import QuantizeConfig

    return QuantizeConfig(
        bits=q.bits,
        group_size=q.group_size,
        desc_act=q.desc_act,
        static_groups=q.static_groups,
        act_group_aware=False,  # GPTQModel's alternative to desc_act; the two exclude each other
        sym=q.sym,
        damp_percent=q.damp_percent,
    )


def run_quantize(recipe: dict[str, Any], output_dir: str | Path | None = None) -> QuantizeSummary:
    q = section(recipe, "quantization", QuantizationSection)
    model = section(recipe, "model", ModelSection)
    _set_cpu_workers(q.cpu_workers)
    import torch
    from gptqmodel import GPTQModel
    from transformers import AutoTokenizer

    from training.models import prepare_tokenizer, torch_dtype

    output_dir = str(output_dir or recipe["output_dir"])
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(model.name_or_path), model)
    calibration = _calibration(tokenizer, DataSpec.from_dict(recipe["data"]), q)

    started = time.monotonic()
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    quantized = GPTQModel.load(model.name_or_path, _gptq_config(q), dtype=torch_dtype(q.dtype), device=device)
    quantized.quantize(calibration, batch_size=q.batch_size, calibration_data_min_length=1)
    quantized.save(output_dir)
    tokenizer.save_pretrained(output_dir)
    seconds = time.monotonic() - started
    if q.static_activation_order:
        mark_static_activation_order(Path(output_dir), q.group_size)
    config = read_gptq_config(output_dir)
    summary = QuantizeSummary(output_dir, len(calibration), round(seconds, 1), config)
    Path(output_dir, "quantize_summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary


def _calibration(tokenizer: Any, spec: DataSpec, q: QuantizationSection) -> list[dict[str, list[int]]]:
    """`q.calibration_samples` texts in the served format, tokenized and cut to `q.calibration_max_length`."""
    calibration = []
    for text in calibration_texts(spec, q.calibration_samples):
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=q.calibration_max_length)
        calibration.append({"input_ids": ids["input_ids"], "attention_mask": [1] * len(ids["input_ids"])})
    return calibration


def mark_static_activation_order(path: Path, group_size: int) -> None:
    """Write desc_act false (and static_groups true) once every g_idx is the plain i // group_size.

    With static groups the activation order only decided the order GPTQ quantized the columns
    in; at inference the checkpoint is an ordinary grouped one, which is what desc_act false
    tells a loader. Raises if a g_idx is permuted (then desc_act false would be wrong).
    """
    import torch
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as tensors:
            for name in tensors.keys():
                if name.endswith(".g_idx"):
                    g_idx = tensors.get_tensor(name)
                    expected = torch.arange(g_idx.numel(), dtype=g_idx.dtype) // group_size
                    if not torch.equal(g_idx, expected):
                        raise RuntimeError(f"{name} is permuted: not a static-groups checkpoint")
    for name in ("quantize_config.json", "config.json"):
        file = path / name
        data = json.loads(file.read_text())
        section = data["quantization_config"] if name == "config.json" else data
        section["desc_act"] = False
        section["static_groups"] = True
        section.setdefault("meta", {})["activation_order"] = "static"
        file.write_text(json.dumps(data, indent=2))


def read_gptq_config(path: str | Path) -> dict[str, Any]:
    """The GPTQ settings a loader sees: quantize_config.json, overlaid by config.json's quantization_config."""
    path = Path(path)
    config: dict[str, Any] = {}
    if (path / "quantize_config.json").exists():
        config.update(json.loads((path / "quantize_config.json").read_text()))
    model_config = json.loads((path / "config.json").read_text())
    config.update(model_config.get("quantization_config") or {})
    return config


def verify_checkpoint(
    path: str | Path, problem: str = "What is $12 \\times 34$?", max_new_tokens: int = 16
) -> dict[str, Any]:
    """Load a quantized checkpoint back with GPTQModel and generate from the served prompt.

    Returns the kernel GPTQModel picked, the quantized linear layers found and the generated text.
    """
    _set_cpu_workers()
    import torch
    from gptqmodel import GPTQModel

    model = GPTQModel.load(str(path), device="cuda:0" if torch.cuda.is_available() else "cpu")
    tokenizer = model.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": problem}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[0][inputs["input_ids"].shape[1] :]
    quantized = sorted({type(m).__name__ for m in model.model.modules() if hasattr(m, "qweight")})
    return {
        "prompt": prompt,
        "generated": tokenizer.decode(new_tokens, skip_special_tokens=True),
        "new_tokens": int(new_tokens.shape[0]),
        "quantized_modules": quantized,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", help="a recipe YAML (not with --verify)")
    parser.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides, e.g. model.name_or_path=...")
    parser.add_argument("--output-dir")
    parser.add_argument("--verify", metavar="DIR", help="load a quantized checkpoint back and generate; print JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.verify:
        print(json.dumps(verify_checkpoint(args.verify)))
        return
    if not args.recipe:
        parser.error("a recipe is required")
    summary = run_quantize(load_recipe(args.recipe, args.overrides), args.output_dir)
    c = summary.quantize_config
    print(
        f"GPTQ done in {summary.seconds:.0f} s on {summary.calibration_samples} calibration samples: "
        f"{c.get('quant_method')} bits={c.get('bits')} group_size={c.get('group_size')} desc_act={c.get('desc_act')} "
        f"format={c.get('checkpoint_format', c.get('format'))}; checkpoint in {summary.output_dir}"
    )


if __name__ == "__main__":
    main()
