"""bench/reference_executor.py: the notebook's PythonREPL, reimplemented, on small hand-written blocks.

Each expected text is derived by hand from the notebook's code (project-numina/aimo-progress-prize,
kaggle-solution.ipynb, PythonREPL.__call__, execute_completion, process_code; see the module's
docstring), not from our runner. Blocks are given as the notebook extracts them: the text between
"```python" and "```", so starting with a newline.
"""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from bench.reference_executor import (
    REFERENCE_PREAMBLE,
    ReferenceExecutor,
    reference_munge_stderr,
    reference_output_block,
    reference_program,
    reference_truncate,
)
from sandbox.execution import ExecutionStatus

MISSING = [name for name in ("numpy", "sympy") if importlib.util.find_spec(name) is None]
needs_packages = pytest.mark.skipif(
    bool(MISSING), reason=f"the reference's preamble imports numpy and sympy; missing: {', '.join(MISSING)}"
)

PATH = "/tmp/tmpabcd1234/tmp.py"

# block -> the exact text the notebook puts before its 200-character cap
BLOCKS = {
    "assign": "\nx = 5\n",
    "float": "\n2.5\n",
    "comment": "\ny = 3  # the answer\ny  # show it\n",
    "assign_comment": "\nx = 1  # set x\n",
    "function": "\ndef f(n):\n    return 10 // n\nprint(f(0))\n",
    "library_frame": "\nimport fractions\nfractions.Fraction(1, 0)\n",
    "prints": "\nprint(1)\nprint(2)\n",
    "comprehension": "\n[print(i) for i in range(2)]\n",
    "syntax": "\nif True\n    x = 1\nprint(x)\n",
    "warning_error": '\nimport warnings\nwarnings.warn("careful")\n1/0\n',
    "warning_ok": '\nimport warnings\nwarnings.warn("careful")\nprint(1)\n',
    "exit": "\nimport sys\nsys.exit(3)\n",
    "partial": '\nprint("partial")\n1/0\n',
    "closing_line": "\nx = (1,\n  2)\n",
    "crlf": '\nprint("a\\r\\nb\\rc")\n',
    "subprocess": '\nimport subprocess\nprint("ran")\n',
    "sleep": "\nimport time\ntime.sleep(30)\n",
}


# Each block starts a fresh interpreter that imports numpy and sympy (the preamble): about a second on an
# idle machine, several on a loaded one; only the sleeping block is meant to reach the limit.
TIMEOUT_S = 8


@pytest.fixture(scope="module")
def results():
    """Every block of BLOCKS through one ReferenceExecutor, concurrently (a fresh interpreter each)."""
    if MISSING:
        pytest.skip(f"the reference's preamble imports numpy and sympy; missing: {', '.join(MISSING)}")

    async def run():
        executor = ReferenceExecutor(timeout_s=TIMEOUT_S, concurrency=4)
        names = list(BLOCKS)
        done = await asyncio.gather(*(executor.execute(BLOCKS[name]) for name in names))
        await executor.close()
        return dict(zip(names, done))

    return asyncio.run(run())


# --- the program text (PythonREPL.__call__'s rewrite), no subprocess


def test_program_prepends_the_preamble_and_wraps_the_last_line():
    """query = preamble + query; query.strip().split("\\n"); the last line becomes print(...)."""
    assert reference_program("\nx = 5\n") == REFERENCE_PREAMBLE + "\nprint(x = 5)"


def test_program_cuts_the_last_line_at_any_hash_even_inside_a_string():
    """`if "#" in query[-1]: query[-1] = query[-1].split("#")[0]`, before wrapping."""
    assert reference_program('\ns = "a#b"\n').endswith('\nprint(s = "a)')
    assert reference_program("\ny  # show it\n").endswith("\nprint(y  )")


def test_program_keeps_a_last_line_that_contains_print_anywhere():
    """`if "print(" not in query[-1]`: any "print(" on the line prevents the wrap."""
    assert reference_program("\n[print(i) for i in range(2)]\n").endswith("\n[print(i) for i in range(2)]")


def test_program_wraps_an_indented_last_line_with_its_indentation():
    """The line is wrapped as it is: "print(" + "    return x" + ")"."""
    assert reference_program("\ndef f():\n    return 1\n").endswith("\nprint(    return 1)")


def test_program_of_an_empty_block_wraps_the_preamble():
    """The last line of the stripped program is the preamble's own."""
    assert reference_program("\n\n") == "import math\nimport numpy as np\nprint(import sympy as sp)"


# --- the traceback munging, no subprocess


def test_munging_blanks_the_frame_line_from_its_path_on():
    """st = index of '"/' + 1, and ed is never 0, so m[st:] is removed: `  File "` is left."""
    stderr = (
        "Traceback (most recent call last):\n"
        f'  File "{PATH}", line 6, in <module>\n'
        "    print(1/0)\n"
        "          ~^~\n"
        "ZeroDivisionError: division by zero\n"
    )
    assert reference_munge_stderr(stderr, PATH) == (
        'Traceback (most recent call last):\n  File "\n    print(1/0)\nZeroDivisionError: division by zero'
    )


def test_munging_drops_other_files_frames_and_keeps_lines_equal_to_the_last():
    """Frames not in tmp.py are dropped; a line equal to the last one is kept wherever it is."""
    stderr = (
        "ValueError: bad\n"
        "\n"
        "During handling of the above exception, another exception occurred:\n"
        "\n"
        "Traceback (most recent call last):\n"
        f'  File "{PATH}", line 5, in <module>\n'
        "    g()\n"
        '  File "/usr/lib/python3/dist-packages/sympy/core/x.py", line 9, in g\n'
        "    raise ValueError('bad')\n"
        "ValueError: bad"
    )
    assert reference_munge_stderr(stderr, PATH) == (
        'ValueError: bad\nTraceback (most recent call last):\n  File "\n    g()\nValueError: bad'
    )


def test_munging_empties_a_warning_line_and_keeps_its_source_line():
    """A warning's `/tmp/.../tmp.py:5: UserWarning: ...` has no '"/': st = 0, the whole line goes."""
    stderr = f'{PATH}:5: UserWarning: careful\n  warnings.warn("careful")\nTraceback (most recent call last):\nE: x'
    assert reference_munge_stderr(stderr, PATH) == 'warnings.warn("careful")\nTraceback (most recent call last):\nE: x'


def test_cap_lives_in_process_code_200_characters_and_a_suffix():
    """process_code: len > 200 -> [:200] + " ... (output truncated)"; appended as f"{code_result}\\n```"."""
    assert reference_truncate("x" * 200) == "x" * 200
    assert reference_truncate("x" * 201) == "x" * 200 + " ... (output truncated)"
    assert reference_output_block("42") == "42\n```"


# --- real executions (a fresh interpreter per block, as the notebook's python3 tmp.py)


@needs_packages
def test_assignment_on_the_last_line_becomes_a_typeerror(results):
    """`x = 5` -> `print(x = 5)`: a keyword argument print() rejects; the frame line is munged to `File "`."""
    result = results["assign"]
    assert result.status is ExecutionStatus.ERROR
    assert result.feedback == (
        "Traceback (most recent call last):\n"
        '  File "\n'
        "    print(x = 5)\n"
        "TypeError: 'x' is an invalid keyword argument for print()"
    )


@needs_packages
def test_an_expression_on_the_last_line_is_printed(results):
    """`2.5` -> `print(2.5)`; on success the output is stdout.strip()."""
    assert results["float"].status is ExecutionStatus.OK
    assert results["float"].feedback == "2.5"


@needs_packages
def test_a_trailing_comment_is_cut_before_wrapping(results):
    """`y  # show it` -> `print(y  )` prints 3; `x = 1  # set x` -> `print(x = 1  )`, a TypeError."""
    assert results["comment"].feedback == "3"
    assert results["assign_comment"].feedback.endswith("TypeError: 'x' is an invalid keyword argument for print()")


@needs_packages
def test_an_exception_in_a_function_keeps_both_frames_munged(results):
    """Both frames are in tmp.py: each becomes `File "` plus its source line; the ~~^^ markers are dropped."""
    assert results["function"].feedback == (
        "Traceback (most recent call last):\n"
        '  File "\n'
        "    print(f(0))\n"
        '  File "\n'
        "    return 10 // n\n"
        "ZeroDivisionError: integer division or modulo by zero"
    )


@needs_packages
def test_frames_of_library_files_are_dropped(results):
    """The fractions.py frame and its source line are neither tmp.py lines nor the line after one."""
    assert results["library_frame"].feedback == (
        "Traceback (most recent call last):\n"
        '  File "\n'
        "    print(fractions.Fraction(1, 0))\n"
        "ZeroDivisionError: Fraction(1, 0)"
    )


@needs_packages
def test_a_last_line_that_prints_is_left_alone(results):
    """ "print(" in the last line: no wrap, so no `None` and no doubled output."""
    assert results["prints"].feedback == "1\n2"
    assert results["comprehension"].feedback == "0\n1"


@needs_packages
def test_a_syntax_error_has_no_traceback_line_and_loses_its_indentation(results):
    """SyntaxError: `  File "...", line 5` -> `  File "`; the final strip() takes its two spaces."""
    assert results["syntax"].status is ExecutionStatus.ERROR
    assert results["syntax"].feedback == "File \"\n    if True\nSyntaxError: expected ':'"


@needs_packages
def test_a_warning_before_an_error_leaves_its_source_line(results):
    """The warning line (tmp.py:N: UserWarning...) becomes empty, the source line after it is kept."""
    assert results["warning_error"].feedback == (
        'warnings.warn("careful")\n'
        "Traceback (most recent call last):\n"
        '  File "\n'
        "    print(1/0)\n"
        "ZeroDivisionError: division by zero"
    )


@needs_packages
def test_warnings_of_a_successful_block_are_ignored(results):
    """returncode 0: only stdout, stripped."""
    assert results["warning_ok"].feedback == "1"


@needs_packages
def test_a_nonzero_exit_without_a_traceback_gives_empty_output(results):
    """sys.exit(3): stderr is empty, "".split("\\n") == [""] is kept as the last line: the output is ""."""
    assert results["exit"].status is ExecutionStatus.ERROR
    assert results["exit"].feedback == ""


@needs_packages
def test_stdout_of_a_failed_block_is_dropped(results):
    """On a non-zero exit the notebook returns only the munged stderr."""
    assert "partial" not in results["partial"].feedback
    assert results["partial"].feedback.endswith("ZeroDivisionError: division by zero")


@needs_packages
def test_the_closing_line_of_a_multiline_statement_is_wrapped(results):
    """`x = (1,\\n  2)` -> `x = (1,\\nprint(  2))`: valid, and it prints 2."""
    assert results["closing_line"].feedback == "2"


@needs_packages
def test_text_mode_translates_carriage_returns(results):
    """subprocess.run(text=True): "\\r\\n" and "\\r" become "\\n"."""
    assert results["crlf"].feedback == "a\nb\nc"


@needs_packages
def test_the_subprocess_check_does_not_stop_the_block(results):
    """execute_completion's `continue` leaves only the inner loop: the block runs, its output is used."""
    assert results["subprocess"].feedback == "ran"


@needs_packages
def test_a_timeout_reads_as_the_notebooks_timeouterror(results):
    """The alarm's TimeoutError(f"Timed out after {seconds} seconds."), caught by execute_completion."""
    assert results["sleep"].status is ExecutionStatus.TIMEOUT
    assert results["sleep"].feedback == f"Timed out after {TIMEOUT_S} seconds."
