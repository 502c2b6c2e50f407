"""Training tier, fast part: the recipes equal the winners' table; data formatting; the demo task.

No training here (see tests/test_training.py); everything runs in seconds.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import random
import re
import string
from collections import Counter
from pathlib import Path

import pytest
import yaml

from sandbox.runner.program import block_program
from service.answers import AnswerMode, extract_answer
from service.tir import (
    NUMINA_CHAT_TEMPLATE,
    NUMINA_PROMPT_TEMPLATE,
    OUTPUT_MARKER,
    TRUNCATION_SUFFIX,
    classify_step,
    format_prompt,
    last_code_block,
)
from training.data import (
    DataSpec,
    DataUnavailable,
    data_dir,
    format_example,
    format_tir_solution,
    load_records,
    load_splits,
    normalize_record,
    resolve_path,
)
from training.recipe import RECIPES_DIR, batch_arguments, load_recipe, total_batch

# The winners' hyperparameters (NuminaMath-7B-TIR, AIMO progress prize 1).
WINNERS = {
    "stage1_cot.yaml": {
        "base": "deepseek-ai/deepseek-math-7b-base",
        "dataset": "AI-MO/NuminaMath-CoT",
        "learning_rate": 2e-5,
        "total_batch": 32,
        "block": 2048,
        "epochs": 3,
        "scheduler": "cosine",
        "warmup": 0.1,
    },
    "stage2_tir.yaml": {
        "base": "outputs/stage1-cot",
        "dataset": "AI-MO/NuminaMath-TIR",
        "learning_rate": 2e-5,
        "total_batch": 32,
        "block": 1024,
        "epochs": 4,
        "scheduler": "cosine",
        "warmup": 0.1,
    },
}


@pytest.mark.parametrize("name", sorted(WINNERS))
def test_sft_recipes_equal_the_winners_table(name: str) -> None:
    recipe = load_recipe(RECIPES_DIR / name)
    expected = WINNERS[name]
    training = recipe["training"]
    assert recipe["stage"] == "sft"
    assert recipe["model"]["name_or_path"] == expected["base"]
    assert recipe["data"]["dataset"] == expected["dataset"]
    assert training["learning_rate"] == expected["learning_rate"]
    assert total_batch(recipe, processes=8) == expected["total_batch"]
    assert batch_arguments(recipe, processes=8)["gradient_accumulation_steps"] == 1  # 4 per GPU x 8 GPUs
    assert training["max_length"] == expected["block"]
    assert training["num_train_epochs"] == expected["epochs"]
    assert training["lr_scheduler_type"] == expected["scheduler"]
    assert training["warmup_steps"] == expected["warmup"]  # transformers 5: a float < 1 is a ratio
    # Full fine-tuning with packing, gradient checkpointing, bf16 and the served chat template.
    assert training["packing"] is True
    assert training["gradient_checkpointing"] is True
    assert training["bf16"] is True
    assert "peft" not in recipe and "lora" not in json.dumps(recipe).lower()
    assert recipe["model"]["chat_template"] == "numina"
    assert recipe["model"]["dtype"] == "bfloat16"


def test_stage2_starts_from_stage1() -> None:
    stage1 = load_recipe(RECIPES_DIR / "stage1_cot.yaml")
    stage2 = load_recipe(RECIPES_DIR / "stage2_tir.yaml")
    assert stage2["model"]["name_or_path"] == stage1["output_dir"]
    assert stage2["data"]["format"] == "tir" and stage1["data"]["format"] == "cot"


def test_total_batch_is_kept_whatever_the_processes() -> None:
    recipe = load_recipe(RECIPES_DIR / "stage1_cot.yaml")
    for processes, accumulation in ((8, 1), (4, 2), (2, 4), (1, 8)):
        args = batch_arguments(recipe, processes)
        assert args["gradient_accumulation_steps"] == accumulation
        assert total_batch(recipe, processes) == 32
    with pytest.raises(ValueError, match="not a multiple"):
        batch_arguments(recipe, processes=3)


def test_zero3_accelerate_config_for_8_gpus() -> None:
    config = yaml.safe_load((RECIPES_DIR / "accelerate" / "zero3.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"]["zero_stage"] == 3
    assert config["num_processes"] == 8 and config["num_machines"] == 1
    assert config["mixed_precision"] == "bf16"
    cpu = yaml.safe_load((RECIPES_DIR / "accelerate" / "zero3_cpu.yaml").read_text())
    assert cpu["deepspeed_config"]["zero_stage"] == 3 and cpu["num_processes"] == 1 and cpu["use_cpu"] is True


def test_gptq_and_kto_recipes() -> None:
    quantize = load_recipe(RECIPES_DIR / "quantize.yaml")["quantization"]
    assert (quantize["bits"], quantize["group_size"], quantize["desc_act"], quantize["static_groups"]) == (
        8,
        128,
        True,
        True,
    )
    assert quantize["calibration_samples"] == 256 and quantize["dtype"] == "float16"
    kto = load_recipe(RECIPES_DIR / "kto.yaml")
    assert kto["sampling"]["samples_per_problem"] == 4
    assert kto["model"]["name_or_path"] == load_recipe(RECIPES_DIR / "stage2_tir.yaml")["output_dir"]


@pytest.mark.parametrize("name", ["stage1_cot.yaml", "stage2_tir.yaml", "kto.yaml", "quantize.yaml"])
def test_every_recipe_has_a_tiny_cpu_variant(name: str) -> None:
    full = load_recipe(RECIPES_DIR / name)
    tiny = load_recipe(RECIPES_DIR / "tiny" / name)
    assert tiny["stage"] == full["stage"]
    assert tiny["output_dir"].startswith("outputs/tiny/")
    if "training" in tiny:
        assert tiny["training"]["use_cpu"] is True and tiny["training"]["bf16"] is False
        # What the tiny variant does not override is the full recipe's.
        assert tiny["training"]["lr_scheduler_type"] == full["training"]["lr_scheduler_type"]
    if "quantization" in tiny:
        assert tiny["quantization"] == {**full["quantization"], "calibration_max_length": 512}


def test_tiny_pipeline_chains_its_stages() -> None:
    tiny = {
        name: load_recipe(RECIPES_DIR / "tiny" / f"{name}.yaml") for name in ("stage1_cot", "stage2_tir", "quantize")
    }
    assert tiny["stage2_tir"]["model"]["name_or_path"] == tiny["stage1_cot"]["output_dir"]
    assert tiny["quantize"]["model"]["name_or_path"] == tiny["stage2_tir"]["output_dir"]


def test_overrides_and_extends(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("a: {b: 1, c: 2}\nlist: [1, 2]\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\na: {c: 3}\n")
    recipe = load_recipe(tmp_path / "child.yaml", ["a.b=5", "new.key=[x, y]", "list=[3]"])
    assert recipe["a"] == {"b": 5, "c": 3}
    assert recipe["new"] == {"key": ["x", "y"]} and recipe["list"] == [3]
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_recipe(tmp_path / "child.yaml", ["nonsense"])


# -- data ---------------------------------------------------------------------------------------


def test_chat_template_renders_the_served_prompt() -> None:
    from jinja2 import Template

    problem = "Find {x} if $x^2 = 4$."
    rendered = Template(NUMINA_CHAT_TEMPLATE).render(
        messages=[{"role": "user", "content": problem}], add_generation_prompt=True
    )
    assert rendered == format_prompt(problem) == NUMINA_PROMPT_TEMPLATE.replace("{problem}", problem)
    both = Template(NUMINA_CHAT_TEMPLATE).render(
        messages=[{"role": "user", "content": problem}, {"role": "assistant", "content": "S"}]
    )
    assert both == format_example(problem, "S")


def test_tir_solution_output_blocks_are_cut_as_the_service_cuts_them() -> None:
    long = "1" * 300
    solution = f"Compute.\n```python\nprint(1)\n```\n```output\n{long}\n```\nSo the answer is $\\boxed{{1}}$."
    formatted = format_tir_solution(solution)
    assert f"{OUTPUT_MARKER}{'1' * 200}{TRUNCATION_SUFFIX}\n```\nSo the answer" in formatted
    short = "```python\nprint(2)\n```\n```output\n2\n```\nThe answer is $\\boxed{2}$."
    assert format_tir_solution(short) == short
    # The text up to the marker is a step the solver would execute.
    prefix = formatted[: formatted.index(OUTPUT_MARKER) + len(OUTPUT_MARKER)]
    assert classify_step(prefix, executed_before=False, last_step=False).value == "execute"
    assert last_code_block(prefix).strip() == "print(1)"


@pytest.mark.parametrize(
    ("row", "problem", "answer", "has_code"),
    [
        (  # NuminaMath-TIR / -CoT
            {
                "problem": "P?",
                "solution": "x\n```python\nprint(3)\n```\n```output\n3\n```\n$\\boxed{3}$",
                "messages": [],
            },
            "P?",
            "3",
            True,
        ),
        (  # ToRA corpus: messages and gt
            {
                "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A \\boxed{7}"}],
                "gt": "7",
            },
            "Q?",
            "7",
            False,
        ),
        (  # ToRA traces: question, code list, gt
            {"question": "R?", "code": ["```python\nprint(1)\n```\n```output\n1\n```\n\\boxed{1}"], "gt": 1},
            "R?",
            "1",
            True,
        ),
        ({"problem": "S?", "solution": "so $\\boxed{\\frac{1}{2}}$."}, "S?", "\\frac{1}{2}", False),  # MATH
    ],
)
def test_records_from_every_source_layout(row: dict, problem: str, answer: str, has_code: bool) -> None:
    record = normalize_record(row)
    assert record is not None
    assert (record.problem, record.answer) == (problem, answer)
    assert ("```python" in record.solution) is has_code


def test_local_paths_expand_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCTIR_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    assert resolve_path("$SCTIR_DATA_DIR/x.jsonl") == tmp_path / "x.jsonl"
    assert resolve_path("${SCTIR_DATA_DIR}/y.jsonl") == tmp_path / "y.jsonl"
    with pytest.raises(DataUnavailable, match="not found"):
        load_records(DataSpec(dataset="$SCTIR_DATA_DIR/missing.jsonl"))


def test_hub_names_are_not_local_paths() -> None:
    assert not DataSpec(dataset="AI-MO/NuminaMath-TIR").is_local
    assert DataSpec(dataset="$SCTIR_DATA_DIR/tora_corpus_examples.jsonl").is_local
    assert DataSpec(dataset="./data/train.parquet").is_local


def test_local_jsonl_splits(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    rows = [
        {"problem": f"p{i}", "solution": f"```python\nprint({i})\n```\n```output\n{i}\n```\n\\boxed{{{i}}}"}
        for i in range(20)
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    train, test = load_splits(DataSpec(dataset=str(path), test_size=5, format="tir"))
    assert len(train) == 15 and len(test) == 5
    assert not set(train["text"]) & set(test["text"])
    assert all(t.startswith("### Problem: p") and "\n### Solution: " in t and t.endswith("}\n") for t in train["text"])


@pytest.mark.data
def test_reference_data_loads() -> None:
    pytest.importorskip("datasets")
    path = data_dir() / "tora_corpus_examples.jsonl"
    if not path.exists():
        pytest.skip(f"{path} absent (set SCTIR_DATA_DIR)")
    records = load_records(DataSpec(dataset=str(path), require_code=True, require_answer=True))
    assert len(records) >= 20
    assert all(r.answer and "```python" in r.solution for r in records)


# -- the demo task ------------------------------------------------------------------------------


def run_block(code: str) -> str:
    """What a block prints, run as the executor runs it (the reference's preamble, the auto-print)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(block_program(code), {"__name__": "__main__"})  # noqa: S102 - the demo task's own code
    return printed.getvalue()


def test_demo_solutions_box_the_value_their_code_prints() -> None:
    """Every family, held-out and training problems: run the code, compare with the boxed answer."""
    from training.data import synthetic_records
    from training.synthetic import EXAMPLES, FAMILIES, heldout_problems, solution_text, training_problems

    heldout = heldout_problems()
    assert len({p.problem for p in heldout}) == 100
    assert Counter(p.family for p in heldout) == {"arithmetic": 34, "word": 33, "equation": 33}
    training = list(itertools.islice(training_problems(0, exclude=heldout), 300))
    assert {p.family for p in training} == set(FAMILIES)
    for problem in heldout + training:
        printed = run_block(problem.code)
        text = solution_text(problem)
        assert printed == f"{problem.answer}\n", (problem, printed)
        assert extract_answer(text) == str(problem.answer)
        assert last_code_block(text).strip() == problem.code
        assert f"{OUTPUT_MARKER}{problem.answer}\n```" in text
        if problem.family == "arithmetic":  # the problem's `^` is the code's `**`, nothing else differs
            assert problem.code == f"print({arithmetic_expression(problem.problem).replace('^', '**')})"
        if problem.family == "equation":
            assert "sp.solve(" in problem.code and equation_holds(problem.problem, problem.answer)
    statements = {p.problem for p in training} | {r.problem for r in synthetic_records(500, seed=0)}
    assert not statements & ({p.problem for p in heldout} | {e.problem for e in EXAMPLES})


def arithmetic_expression(problem: str) -> str:
    from training.synthetic import ARITHMETIC_QUESTIONS

    for question in ARITHMETIC_QUESTIONS:
        before, after = question.split("{}")
        if problem.startswith(before) and problem.endswith(after):
            return problem[len(before) : len(problem) - len(after)]
    raise AssertionError(f"not an arithmetic question of the demo task: {problem!r}")


def linear_equation(problem: str) -> str:
    from training.synthetic import EQUATION_QUESTIONS

    for question in EQUATION_QUESTIONS:
        before, after = question.split("{}")
        if problem.startswith(before) and problem.endswith(after):
            return problem[len(before) : len(problem) - len(after)]
    raise AssertionError(f"not an equation of the demo task: {problem!r}")


def equation_holds(problem: str, x: int) -> bool:
    """The problem's equation, read as a person reads it ("3x", "2(x + 1)"), at `x`."""
    left, right = (re.sub(r"(\d)([x(])", r"\1*\2", side) for side in linear_equation(problem).split(" = "))
    return eval(left, {"x": x}) == eval(right, {"x": x})  # noqa: S307 - the demo task's own equations


def word_pattern(template: str) -> re.Pattern[str]:
    """A word-problem template as a regex: numbers, names and things as groups, repeats as back-references."""
    regex, seen = "", set()
    for literal, name, _, _ in string.Formatter().parse(template):
        regex += re.escape(literal)
        if name is None:
            continue
        regex += f"(?P={name})" if name in seen else (rf"(?P<{name}>\d+)" if name in "abc" else rf"(?P<{name}>\w+)")
        seen.add(name)
    return re.compile(regex + "$")


def test_every_readme_example_is_a_problem_of_the_task_and_its_answer_is_right() -> None:
    """The examples are phrased as the model was trained (numbers aside), and their answers are correct."""
    from training.synthetic import EXAMPLES, FAMILIES, ITEMS, NAMES, WORD_TEMPLATES, make_problem

    def shape(text: str) -> str:
        return re.sub(r"\d+", "9", text)

    rng = random.Random(0)
    shapes = {
        family: {shape(make_problem(rng, family).problem) for _ in range(3000)} for family in ("arithmetic", "equation")
    }
    families = []
    for example in EXAMPLES:
        words = [(m, formula) for t, formula in WORD_TEMPLATES if (m := word_pattern(t).match(example.problem))]
        if words:
            [(match, formula)] = words
            fields = match.groupdict()
            assert {fields[k] for k in ("n", "m") if k in fields} <= set(NAMES)
            assert fields["i"] in ITEMS
            assert eval(formula.format(**fields)) == example.answer  # noqa: S307 - our own template
            families.append("word")
        elif example.problem.startswith(("Solve", "Find x", "What value of x")):
            assert shape(example.problem) in shapes["equation"], example.problem
            assert equation_holds(example.problem, example.answer)
            families.append("equation")
        else:
            assert shape(example.problem) in shapes["arithmetic"], example.problem
            expression = arithmetic_expression(example.problem).replace("^", "**")
            assert eval(expression) == example.answer  # noqa: S307 - our own arithmetic
            families.append("arithmetic")
    assert set(families) == set(FAMILIES)
    assert "What is 2^10 - 1?" in {example.problem for example in EXAMPLES}


def test_blind_execution_and_answer_comparison() -> None:
    import asyncio

    from service.answers import matches_reference
    from training.evaluate import BlindExecutor

    result = asyncio.run(BlindExecutor().execute("print(1)"))
    assert result.feedback == ""
    assert matches_reference("1,234", "1234", AnswerMode.INTEGER)
    assert not matches_reference("1235", "1234", AnswerMode.INTEGER)
    assert not matches_reference(None, "1234", AnswerMode.INTEGER)
    assert matches_reference("\\frac{1}{2}", "0.5", AnswerMode.EXPRESSION)


def test_demo_tokenizer_round_trips_and_splits_digits(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from training.scratch import build_tokenizer, save_tokenizer
    from training.synthetic import heldout_problems, solution_text

    texts = [format_example(p.problem, solution_text(p)) for p in heldout_problems(200, seed=1)]
    tokenizer = save_tokenizer(build_tokenizer(texts, vocab_size=256), tmp_path, texts[:50])
    prompt = format_prompt("What is $48213 \\times 907$?")
    tokens = tokenizer.tokenize(prompt)
    assert tokens[0] == "### Problem: " and tokens[-1] == "### Solution: "  # the trailing space stays inside
    assert [t for t in tokens if t.strip("Ġ").isdigit()] == list("48213907")  # one token per digit
    assert tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q"}], tokenize=False, add_generation_prompt=True
    ) == format_prompt("Q")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "Qwen2Tokenizer"


# -- the transformers engine ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer Qwen2 with the demo tokenizer: text is noise, but every engine rule applies."""
    pytest.importorskip("transformers")
    from training.scratch import ModelShape, build_tokenizer, random_qwen2, save_tokenizer
    from training.synthetic import heldout_problems, solution_text

    out = tmp_path_factory.mktemp("random-model")
    texts = [format_example(p.problem, solution_text(p)) for p in heldout_problems(100, seed=3)]
    tokenizer = save_tokenizer(build_tokenizer(texts, vocab_size=256), out, texts[:10])
    model = random_qwen2(tokenizer, ModelShape(num_layers=1, intermediate_size=128), seed=0)
    model.generation_config.eos_token_id = len(tokenizer) + 100  # never sampled: steps end by length or stop
    model.save_pretrained(out)
    return out


def test_transformers_engine_seeds_stops_and_aborts(random_model: Path) -> None:
    import asyncio

    from service.engines.base import Engine, SamplingParams, StepRequest
    from training.hf_engine import TransformersEngine

    def step(rid: str, seed: int | None, *, tokens: int = 24, stop: tuple[str, ...] = (), temperature: float = 1.0):
        params = SamplingParams(temperature=temperature, max_new_tokens=tokens, stop=stop, seed=seed)
        return StepRequest(rid, format_prompt("What is $12 \\times 34$?"), params)

    async def main() -> None:
        engine = TransformersEngine(str(random_model), max_batch=8)
        assert isinstance(engine, Engine)
        assert not await engine.ready()
        await engine.start()
        assert await engine.ready()
        assert engine.format_prompt("Q") == format_prompt("Q")
        together = await asyncio.gather(*(engine.complete(step(f"r-{i}", seed)) for i, seed in enumerate([1, 2, 3, 1])))
        alone = await engine.complete(step("alone", 1))
        assert together[0].text == together[3].text == alone.text  # a seed's text, whatever the batch
        assert len({r.text for r in together[:3]}) == 3
        assert all(r.finish_reason == "length" and r.completion_tokens == 24 for r in together)
        greedy = [await engine.complete(step(f"g-{i}", i, temperature=0.0)) for i in range(2)]
        assert greedy[0].text == greedy[1].text
        # A stop string that the unconstrained text contains: cut right after it, kept.
        seed = 5
        long = await engine.complete(step("long", seed, tokens=60))
        stop = next(long.text[i : i + 2] for i in range(8, 19) if long.text[i : i + 2].isascii())
        stopped = await engine.complete(step("stopped", seed, tokens=60, stop=(stop,)))
        assert stopped.finish_reason == "stop" and stopped.text.endswith(stop)
        assert long.text.startswith(stopped.text) and stop not in stopped.text[: -len(stop)]
        # Abort: a long step ends at once with finish_reason "abort".
        task = asyncio.create_task(engine.complete(step("abort-me", 7, tokens=2000)))
        await asyncio.sleep(0.3)
        await engine.abort("abort-me")
        aborted = await asyncio.wait_for(task, 30)
        assert aborted.finish_reason == "abort"
        await engine.abort("unknown")  # no-op
        await engine.close()
        assert not await engine.ready()

    asyncio.run(main())


@pytest.mark.parametrize("name", ["stage1_cot.yaml", "stage2_tir.yaml"])
def test_full_recipes_are_valid_trainer_arguments(name: str, tmp_path: Path) -> None:
    """Every key of `training:` is an SFTConfig argument (bf16 off: this host may have no bf16)."""
    pytest.importorskip("trl")
    from training.sft import sft_config

    recipe = load_recipe(RECIPES_DIR / name, ["training.bf16=false"])
    args = sft_config(recipe, str(tmp_path))
    assert args.learning_rate == 2e-5 and args.lr_scheduler_type == "cosine"
    assert args.warmup_steps == 0.1 and args.packing and args.gradient_checkpointing
    assert args.max_length == recipe["training"]["max_length"]
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 32  # one process here


def test_kto_recipe_is_valid_trainer_arguments(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from training.kto import kto_config

    recipe = load_recipe(RECIPES_DIR / "kto.yaml", ["training.bf16=false"])
    args = kto_config(recipe, str(tmp_path), desirable=30, undesirable=90)
    assert args.beta == 0.1 and args.train_sampling_strategy == "sequential"
    assert (args.desirable_weight, args.undesirable_weight) == (3.0, 1.0)  # 30 x 3 ~ 90 x 1
    args = kto_config(recipe, str(tmp_path), desirable=90, undesirable=30)
    assert (args.desirable_weight, args.undesirable_weight) == (1.0, 3.0)


def test_recipe_sections_are_typed_and_refuse_unknown_keys() -> None:
    from training.quantize import cpu_workers
    from training.recipe import FromScratch, ModelSection, QuantizationSection, SamplingSection, section

    sampling = section(load_recipe(RECIPES_DIR / "tiny" / "kto.yaml"), "sampling", SamplingSection)
    assert sampling.answer_mode is AnswerMode.INTEGER and sampling.temperature == 1.5 and sampling.seed == 0
    model = section(load_recipe(RECIPES_DIR / "tiny" / "stage1_cot.yaml"), "model", ModelSection)
    assert model.from_scratch == FromScratch(num_layers=2, intermediate_size=256, vocab_size=512)
    assert section({}, "quantization", QuantizationSection).static_activation_order
    with pytest.raises(ValueError, match="sampling section: temprature"):
        section({"sampling": {"temprature": 1.0}}, "sampling", SamplingSection)
    assert cpu_workers(3) == 3 and 2 <= cpu_workers() <= 12
