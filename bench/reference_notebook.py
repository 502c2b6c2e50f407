"""The reference's step rules and answer path, transcribed from the winning notebook, to measure ours against.

The reference is project-numina's `kaggle-solution.ipynb` (AIMO Progress Prize 1;
github.com/project-numina/aimo-progress-prize, cells "Post-processing and solution
extraction utilities", "Tree search control flow" and "Sample filtering and majority
voting"). These functions follow its code line for line, quirks included, and share no
code with service/answers.py, whose `aimo` mode must give the same votes:

- `process_answer(gen_text)`: process_code's answer branch. Only the last 100 characters
  count; an answer is read when they hold "answer is" or "\\boxed" and the text does not
  end with "```output\\n": the last box of that tail if the tail says "boxed" (any failure:
  "-1"), else the whole tail, through normalize_answer. None: no answer read this step
  (the candidate keeps its "-1" default, or the answer of an earlier step).
- `filter_answers(answers)`: round(float(a)) (its 0.2 tolerance compares a rounded value
  with itself, so it never fires), negatives dropped, mod 1000.
- `get_majority_vote(answers)`: Counter.most_common's first (the first seen on a tie); 0
  when nothing is left.
- `run_candidate(...)`: the notebook's main loop and process_code for one candidate, with
  the generation and the code's output given as functions (the notebook's vLLM and REPL).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

CHECK_LAST_N_CHARS = 100
OUTPUT_MARKER = "```output\n"


def extract_boxed_answer(text):
    def last_boxed_only_string(text):
        idx = text.rfind("\\boxed")
        if idx < 0:
            idx = text.rfind("\\fbox")
            if idx < 0:
                return None
        i = idx
        right_brace_idx = None
        num_left_braces_open = 0
        while i < len(text):
            if text[i] == "{":
                num_left_braces_open += 1
            if text[i] == "}":
                num_left_braces_open -= 1
                if num_left_braces_open == 0:
                    right_brace_idx = i
                    break
            i += 1
        if right_brace_idx is None:
            return None
        return text[idx : right_brace_idx + 1]

    def remove_boxed(boxed):
        left = "\\boxed{"
        try:
            assert boxed[: len(left)] == left
            assert boxed[-1] == "}"
            return boxed[len(left) : -1]
        except Exception:
            return None

    boxed = last_boxed_only_string(text)
    if boxed is None:
        return None
    return remove_boxed(boxed)


def normalize_answer(answer):
    match = re.search(r"(.*?)Problem:", answer, flags=re.S)
    if match:
        answer = match.group(1)
    subs = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
            (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"), ("\\le", "<")]  # fmt: skip
    remove = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots",
              "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters",
              "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
              "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;",
              r",\!", "{,}", '"', "\\dots", "\n", "\r", "\f", "\\%"]  # fmt: skip
    sub_patterns = [
        r"(\\text\{)(.*?)(\})",
        r"(\\textbf\{)(.*?)(\})",
        r"(\\overline\{)(.*?)(\})",
        r"(\\boxed\{)(.*)(\})",
    ]
    split_patterns = [r"finalansweris(.*)", r"answer?is:?(.*)", r"oxed\{(.*?)\}", r"\$(.*?)\$"]
    for before, after in subs:
        answer = answer.replace(before, after)
    for expr in remove:
        answer = answer.replace(expr, "")
    for pattern in sub_patterns:
        answer = re.sub(pattern, "\\2", answer)
    for pattern in split_patterns:
        if len(re.findall(pattern, answer)) > 0:
            answer = re.findall(pattern, answer)[-1]
    answer = answer.strip()
    if "rac" in answer and "\\frac" not in answer:
        answer = answer.replace("rac", "\\frac")
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


def process_answer(gen_text: str) -> str | None:
    """process_code's answer branch (the caller has checked for code and executed output)."""
    region_to_check = gen_text[-CHECK_LAST_N_CHARS:]
    if gen_text.endswith(OUTPUT_MARKER) or not ("answer is" in region_to_check or "\\boxed" in region_to_check):
        return None
    if "boxed" in region_to_check:
        try:
            return normalize_answer(extract_boxed_answer(region_to_check))
        except Exception:
            return "-1"
    return normalize_answer(region_to_check)


def filter_answers(answers):
    def validate_answer_is_numeric(x, tolerance=0.2):
        try:
            x = round(float(x))
            f = float(x)
            if abs(x - f) > tolerance:
                x = -1
        except Exception:
            x = -1
        return x

    formatted = [validate_answer_is_numeric(a) for a in answers]
    return [a % 1000 for a in formatted if a >= 0]


def get_majority_vote(answers):
    if not len(answers):
        return 0
    value, _ = Counter(answers).most_common()[0]
    return value


def process_code(sample, restart_on_fail, last_step, execute, check_last_n_chars=100):
    """The notebook's process_code; `execute(gen_text)` stands for postprocess_completion's output."""
    gen_text = sample["gen_texts"]
    num_python_blocks = len(re.findall(r"```python(.*?)```", gen_text, re.DOTALL))
    region_to_check = gen_text[-check_last_n_chars:]
    if num_python_blocks == 0:
        if restart_on_fail:
            sample["gen_texts"] = sample["text"]
        else:
            sample["should_prune"] = True
            sample["has_code"] = False
        return sample
    if not gen_text.endswith("```output\n") and ("answer is" in region_to_check or "\\boxed" in region_to_check):
        num_output_blocks = len(re.findall(r"```output(.*?)```", gen_text, re.DOTALL))
        if num_output_blocks == 0:
            sample["should_prune"] = True
            return sample
        if "boxed" in region_to_check:
            try:
                answer = normalize_answer(extract_boxed_answer(region_to_check))
            except Exception:
                answer = "-1"
        else:
            answer = normalize_answer(region_to_check)
        sample["model_answers"] = answer
        return sample
    if last_step:
        return sample
    if not gen_text.endswith("```output\n"):
        if restart_on_fail:
            sample["gen_texts"] = sample["text"]
        else:
            sample["should_prune"] = True
        return sample
    code_result = execute(gen_text)
    truncation_limit = 200
    if len(code_result) > truncation_limit:
        code_result = code_result[:truncation_limit] + " ... (output truncated)"
    sample["gen_texts"] = gen_text + f"{code_result}\n```"
    return sample


def run_candidate(
    prompt: str,
    generate: Callable[[int, str], str],
    execute: Callable[[str], str],
    num_generations: int,
    restart_on_fail: bool = True,
) -> dict:
    """One candidate through the notebook's loop: `generate(step, gen_text)` is the step's new text."""
    sample = {"text": prompt, "gen_texts": prompt, "should_prune": False, "model_answers": "-1", "has_code": True}
    for step in range(num_generations):
        sample["gen_texts"] += generate(step, sample["gen_texts"])
        sample = process_code(sample, restart_on_fail, step == num_generations - 1, execute)
        if sample["should_prune"]:
            break
    return sample
