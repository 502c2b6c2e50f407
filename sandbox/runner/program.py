"""How a model-written block becomes a program, and how its failure is reported.

This is the code preparation of the reference (the AIMO Progress Prize 1 winning
notebook's `PythonREPL`), as we run it, as pure functions, plus the notebook-like
`Session` of the `session` execution mode. The module is stdlib-only on
purpose: the runner (sandbox/runner/) imports it in every interpreter
that executes model code, e.g. inside the sandbox image next to the runner,
where there is nothing but python3 and the math packages.

The reference prepends the preamble, wraps the last line in `print(...)`
textually, runs `python3 tmp.py` and, on failure, filters the traceback
(bench/reference_executor.py reimplements it exactly, to measure against);
here the preamble is the same and the last line is printed when `ast` says
it is an expression (`with_auto_print`).
"""

from __future__ import annotations

import ast
import re
import sys

PREAMBLE = "import math\nimport numpy as np\nimport sympy as sp\n"
PREAMBLE_LINES = PREAMBLE.count("\n")

# The file name of session blocks in tracebacks (every block gets its own
# linecache entry "<block-N>"; `Session.run` renames them all to this before
# trimming, so a frame from a function defined in an earlier block is kept).
SESSION_FILENAME = "<block>"


def with_auto_print(code: str) -> str:
    """Print the value of the block's last line, as the reference does, without breaking valid code.

    The reference wraps the last line in `print(...)` whenever that line does not
    contain "print(" (cutting a trailing comment first), so a block ending in
    an expression shows its value like a notebook cell. Done textually it
    breaks valid code: `x = 1` becomes `print(x = 1)` (a TypeError), a last
    line inside a block (`    return x`, `    total += i`) becomes an
    IndentationError or SyntaxError, `import x`, `pass`, `for ...:`... a
    SyntaxError, `a; b` becomes `print(a; b)`, the closing line of a
    multi-line call becomes `print(    2))`, and `"#"` inside a string gets
    cut. Each of those turns a block that would have run into an error fed
    back to the model.

    Deviation: we decide with `ast`. We wrap only when the last top-level
    statement is an expression statement that ends on the last line (trailing
    whitespace ignored, as the reference's `strip()` does), and wrap exactly that
    expression (by its column offsets, so a trailing comment, `a; b` and a
    multi-line expression all stay valid). We do not wrap when the last line
    is comment-only, when the statement is not an expression (assignment,
    import, def, for, if, return, pass...), when it is already a `print(...)`
    call, or when the last line contains "print(" at all (the reference's own
    rule: `[print(i) for i in r]` is not wrapped, so no extra `[None, ...]`).
    Code that does not parse is returned unchanged, so Python reports the
    SyntaxError itself. In every case where the reference's rewrite was valid
    Python, the result prints the same thing; that includes a bare tuple,
    `a, b` -> `print(a, b)`, which prints "1 2" rather than "(1, 2)".
    """
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    stripped = code.rstrip()
    if "print(" in stripped[stripped.rfind("\n") + 1 :]:
        return code  # the reference's own rule, checked before parsing: most model blocks end in a print
    try:
        tree = ast.parse(code)
    except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError...
        return code
    if not tree.body:
        return code
    last = tree.body[-1]
    lines = code.split("\n")
    last_line_no = len(stripped.split("\n"))  # 1-based, trailing blanks ignored
    if not isinstance(last, ast.Expr) or last.end_lineno != last_line_no:
        return code
    value = last.value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "print":
        return code

    # Column offsets are UTF-8 byte offsets: convert to str indices.
    def to_index(line: str, byte_offset: int) -> int:
        return len(line.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore"))

    start_line, end_line = last.lineno - 1, last.end_lineno - 1
    end = to_index(lines[end_line], last.end_col_offset)
    lines[end_line] = lines[end_line][:end] + ")" + lines[end_line][end:]
    start = to_index(lines[start_line], last.col_offset)
    lines[start_line] = lines[start_line][:start] + "print(" + lines[start_line][start:]
    return "\n".join(lines)


def block_program(code: str) -> str:
    """The whole program of a `last_block` execution: the preamble, then the block."""
    return PREAMBLE + with_auto_print(code)


def trim_traceback(stderr: str, filename: str, line_offset: int = 0) -> str:
    """The reference's traceback trimming, minus its path-removal bug.

    Kept, as in the reference: every line containing "Traceback", every line that
    mentions `filename` plus the line right after it (the source line), and
    the last line (the exception message). Everything else (frames inside
    numpy/sympy, the `~~~^^^` markers of Python 3.11+) is dropped.

    The reference meant to strip the path from `  File "/tmp/x/tmp.py", line 3, in
    <module>` but its slicing cuts everything from the path on, leaving `  File "`;
    here it reads `  line 3, in <module>`. `line_offset` is subtracted from the line
    numbers of `filename` (pass the preamble's length, so the model sees the
    line numbers of its own block). Any other mention of `filename` (e.g. a
    warning's `/tmp/x/tmp.py:4:`) loses its directory part.
    """
    lines = stderr.strip().split("\n")
    if not lines or lines == [""]:
        return ""
    basename = filename.replace("\\", "/").rsplit("/", 1)[-1]
    frame = re.compile(r'^(\s*)File "' + re.escape(filename) + r'", line (\d+)(.*)$')

    def renumber(number: str) -> str:
        n = int(number) - line_offset
        return str(n) if n >= 1 else number

    kept = []
    want_next = False
    for i, line in enumerate(lines):
        if i == len(lines) - 1 or "Traceback" in line:
            kept.append(line)
            want_next = False
        elif filename in line:
            match = frame.match(line)
            if match:
                indent, number, rest = match.groups()
                kept.append(f"{indent}line {renumber(number)}{rest}")
            else:
                kept.append(line.replace(filename, basename))
            want_next = True
        elif want_next:
            kept.append(line)
            want_next = False
    return "\n".join(kept).strip()


# ---------------------------------------------------------------------------
# Sessions: one long-lived namespace per candidate, blocks share state.


class OutputLimitExceeded(BaseException):
    """Raised inside user code once it has printed far past the cap (a BaseException: `except Exception` misses it)."""


class CappedOutput:
    """A text stream that keeps the first `cap` characters and stops the block past twice that."""

    encoding = "utf-8"  # like a pipe's: sympy's pprint picks Unicode from it
    errors = "strict"

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.stored = 0
        self.seen = 0

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def isatty(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.seen += len(s)
        room = self.cap - self.stored
        if room > 0:
            self.parts.append(s[:room])
            self.stored += min(room, len(s))
        if self.seen > 2 * self.cap:
            raise OutputLimitExceeded
        return len(s)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def getvalue(self) -> str:
        return "".join(self.parts)


class Session:
    """A notebook-like namespace: the preamble once, then blocks that share its state.

    `run(code)` executes `code` as given (the caller applies `with_auto_print`)
    with sys.stdout/sys.stderr captured in memory up to `cap` characters, and
    returns {"ok": bool, "stdout": str, "error": str, "truncated": bool}; the
    error of a raised block is the reference-style trimmed traceback, with frames
    of every block of the session named SESSION_FILENAME (a function defined
    in an earlier block keeps its frame). Output written around sys.stdout
    (os.write(1, ...), child processes) is not captured: the runner points
    fd 1 of a session at /dev/null. Constructing it runs the preamble and
    raises whatever that raises (e.g. ModuleNotFoundError without numpy).
    """

    def __init__(self, cap: int = 65536, namespace: dict | None = None) -> None:
        import builtins

        self.cap = cap
        self.blocks = 0
        self.namespace: dict = namespace if namespace is not None else {}
        self.namespace.update({"__name__": "__main__", "__builtins__": builtins})
        # dont_inherit: not this file's `from __future__ import annotations`.
        exec(compile(PREAMBLE, "<preamble>", "exec", dont_inherit=True), self.namespace)

    def run(self, code: str) -> dict:
        import linecache
        import traceback

        self.blocks += 1
        name = f"<block-{self.blocks}>"
        # Register the source so tracebacks show the offending line.
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        out, err = CappedOutput(self.cap), CappedOutput(self.cap)
        real_stdout, real_stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        ok, error = True, ""
        try:
            exec(compile(code, name, "exec", dont_inherit=True), self.namespace)
        except OutputLimitExceeded:
            ok, error = False, f"Output exceeded {self.cap} characters; the block was stopped."
        except SystemExit as exit_:
            if exit_.code not in (None, 0):
                ok = False
                error = str(exit_.code) if isinstance(exit_.code, str) else f"SystemExit: {exit_.code}"
        except BaseException as exc:  # the model's error, reported
            ok = False
            tb = exc.__traceback__
            if tb is not None and tb.tb_frame.f_code.co_filename != name:
                tb = tb.tb_next  # drop our own frame (the exec call)
            try:
                text = "".join(traceback.format_exception(type(exc), exc, tb))
            except BaseException as format_error:  # e.g. a __str__ that raises or recurses
                text = f"{type(exc).__name__}: <unprintable: {type(format_error).__name__}>"
            text = re.sub(r'File "<block-\d+>"', f'File "{SESSION_FILENAME}"', text)
            error = trim_traceback(text, SESSION_FILENAME)
        finally:
            sys.stdout, sys.stderr = real_stdout, real_stderr
        if len(error) > self.cap:  # e.g. a huge exception message: keep its end
            error = error[-self.cap :]
        return {"ok": ok, "stdout": out.getvalue(), "error": error, "truncated": out.seen > self.cap}
