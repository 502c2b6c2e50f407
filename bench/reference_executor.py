"""The reference's code execution, reimplemented from the winning notebook's code (not from ours).

The reference is project-numina's `kaggle-solution.ipynb` (AIMO Progress
Prize 1, the submission that scored 29/50), read at
github.com/project-numina/aimo-progress-prize, commits 0b222d5cc51f and
fa3eae15e9bf (cells "Python REPL and code execution utilities" and "Tree
search control flow"; the two commits differ only in where
`output = str(outputs[-1]).strip()` is indented, which changes nothing for
one block). Its metadata says it ran on Kaggle's Python 3.10.14.

What the notebook does with the model's text once a step ends with
"```output\\n" (process_code -> postprocess_completion -> execute_completion
-> PythonREPL.__call__):

1. `re.findall(r"```python(.*?)```", completion, re.DOTALL)[-1]`: the LAST
   block, as the text between the fences (so it starts with the newline
   after "```python"). That string is `query` below.
2. execute_completion first loops `for lib in ("subprocess", "venv")` and,
   if `lib in code`, appends "{lib} is not allowed" to its outputs and
   `continue`s -- the inner loop, not the outer one: the block is executed
   anyway and its result is appended after, and only `outputs[-1]` is used.
   The check has no effect on the output block.
3. PythonREPL.__call__(query), timeout 5:
       query = "import math\\nimport numpy as np\\nimport sympy as sp\\n" + query
       query = query.strip().split("\\n")
       if "print(" not in query[-1]:
           if "#" in query[-1]:
               query[-1] = query[-1].split("#")[0]
           query[-1] = "print(" + query[-1] + ")"
       query = "\\n".join(query)
   i.e. purely textual: the last line (of the stripped program, so trailing
   blank lines do not count) is wrapped unless it contains "print(" anywhere;
   a "#" anywhere in it (also inside a string) cuts the line there; the
   wrap keeps the line's indentation inside the parentheses. An empty block
   wraps the preamble's last line: `print(import sympy as sp)`.
4. The program is written (utf-8) to tmp.py in a fresh
   `tempfile.TemporaryDirectory()` (/tmp/tmpXXXXXXXX/tmp.py) and run as
   `subprocess.run(["python3", path], capture_output=True, text=True,
   timeout=5)` inside a `signal.alarm(5)` context whose handler raises
   `TimeoutError(f"Timed out after {seconds} seconds.")`. The alarm is armed
   before the process starts, so it fires first; the 5 s include the
   interpreter's start and the numpy/sympy imports. `text=True` decodes
   with the locale's encoding (UTF-8 on Kaggle) and turns "\\r\\n" and "\\r"
   into "\\n".
5. returncode == 0: the output is `stdout.strip()`; stderr (warnings) is
   ignored.
6. returncode != 0 (an exception, a SyntaxError, sys.exit(n), a signal): the
   stdout is dropped; the output is stderr.strip() split on "\\n" and
   filtered, line by line, in this order:
   - a line containing "Traceback" is kept (want_next untouched);
   - else a line equal to the LAST line (anywhere: a duplicate of the
     exception message earlier in stderr is kept too) is kept;
   - else a line containing the temp file's path is kept after
     `m.replace(m[st:], "")` with st = index of '"/' + 1 (0 without one):
     its slicing (`clr = m[st:ed] if not ed else m[st:]`, and `ed` is never
     0) removes everything from the path on, so `  File "/tmp/tmpab/tmp.py",
     line 5, in <module>` becomes `  File "` (the line number and function
     name are gone), and a warning line `/tmp/tmpab/tmp.py:5: RuntimeWarning:
     ...` becomes "" (an empty line); then want_next = True;
   - else, if want_next, the line is kept (the source line under a frame)
     and want_next = False;
   - everything else (frames of numpy/sympy files and their source lines,
     Python 3.11's ~~~^^^ markers, "During handling..." lines, warning text
     not in the script) is dropped.
   The kept lines are joined with "\\n" and stripped: so a SyntaxError
   (no "Traceback" line) starts with `File "` without its indentation, and a
   non-zero exit with empty stderr (sys.exit(1)) gives the empty string.
7. The alarm's TimeoutError is caught by execute_completion: the output is
   `str(e).strip()` = "Timed out after 5 seconds." (process_code calls it
   with return_status=True, so the `output = ""` of a failure without
   status never applies on this path). Nothing else is caught: the
   `subprocess.TimeoutExpired` of the run's own timeout, a UnicodeDecodeError
   of non-UTF-8 output, a UnicodeEncodeError writing a lone surrogate would
   all abort the notebook's map.
8. process_code then caps the text: `if len(code_result) > 200:
   code_result = code_result[:200] + " ... (output truncated)"` -- the cap
   lives in the caller, not in the REPL -- and appends f"{code_result}\\n```".

This module reproduces 1-8 without importing the project's own program
preparation (sandbox.runner.program) or anything of service/: `reference_program`
(3), `reference_munge_stderr` (6), `reference_feedback` (the text of 5-7,
BEFORE the cap), `reference_truncate` / `reference_output_block` (8), and
`ReferenceExecutor`, the async executor with the Executor interface
(sandbox/execution.py; its ExecutionResult.feedback is the
text before the cap; an empty munged traceback stays empty).

Where this reimplementation differs from the notebook, on purpose, without
changing the text it produces for any block we run: it runs `python`
(default: this interpreter, so that library versions match our runner's)
instead of whatever `python3` is on PATH; the child's working directory is
its temp directory (the notebook's child inherits the notebook's cwd); a
timeout kills the child's whole process group (the notebook kills the child
only); stdout beyond `max_output_bytes` is not kept (only its head can reach
the 200-character cap, except a block that prints more than that many bytes
of leading whitespace); undecodable bytes become U+FFFD instead of aborting,
and a block that cannot be written as UTF-8 is reported as a KILLED result
instead of aborting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time

from sandbox.execution import ExecutionResult, ExecutionStatus

REFERENCE_PREAMBLE = "import math\nimport numpy as np\nimport sympy as sp\n"
REFERENCE_TIMEOUT_S = 5  # PythonREPL(timeout=5); an int, as signal.alarm() needs
REFERENCE_TRUNCATION_LIMIT = 200  # process_code's truncation_limit
REFERENCE_TRUNCATION_SUFFIX = " ... (output truncated)"
REFERENCE_FILENAME = "tmp.py"


def reference_program(query: str) -> str:
    """PythonREPL.__call__'s program text for `query` (the preamble, the textual print-wrap of the last line)."""
    lines = (REFERENCE_PREAMBLE + query).strip().split("\n")
    if "print(" not in lines[-1]:
        if "#" in lines[-1]:
            lines[-1] = lines[-1].split("#")[0]
        lines[-1] = "print(" + lines[-1] + ")"
    return "\n".join(lines)


def reference_munge_stderr(stderr: str, temp_file_path: str) -> str:
    """PythonREPL.__call__'s text for a non-zero exit: its filter of `stderr`, line by line, as written."""
    msgs = stderr.strip().split("\n")
    new_msgs = []
    want_next = False
    for m in msgs:
        if "Traceback" in m:
            new_msgs.append(m)
        elif m == msgs[-1]:
            new_msgs.append(m)
        elif temp_file_path in m:
            st = m.index('"/') + 1 if '"/' in m else 0
            ed = m.index(temp_file_path) + 1  # never 0, so the notebook always cuts m[st:]
            clr = m[st:ed] if not ed else m[st:]
            new_msgs.append(m.replace(clr, ""))
            want_next = True
        elif want_next:
            new_msgs.append(m)
            want_next = False
    return "\n".join(new_msgs).strip()


def reference_timeout_message(seconds: int | float = REFERENCE_TIMEOUT_S) -> str:
    """str() of the notebook's TimeoutError (its f-string formats the int it was given)."""
    return f"Timed out after {seconds} seconds."


def reference_truncate(code_result: str) -> str:
    """process_code's cap: the first 200 characters plus " ... (output truncated)" when longer."""
    if len(code_result) > REFERENCE_TRUNCATION_LIMIT:
        return code_result[:REFERENCE_TRUNCATION_LIMIT] + REFERENCE_TRUNCATION_SUFFIX
    return code_result


def reference_output_block(code_result: str) -> str:
    """What process_code appends after "```output\\n": the capped text and the closing fence (no newline after it)."""
    return f"{reference_truncate(code_result)}\n```"


def _decode(data: bytes) -> str:
    """subprocess's text=True: decode (UTF-8, as on Kaggle) and translate universal newlines."""
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def _outcome(returncode: int, stdout: bytes, stderr: bytes, temp_file_path: str) -> tuple[bool, str]:
    """PythonREPL.__call__'s (success, output) for a finished process."""
    if returncode == 0:
        return True, _decode(stdout).strip()
    return False, reference_munge_stderr(_decode(stderr), temp_file_path)


def reference_feedback(code: str, python: str = sys.executable, timeout_s: int | float = REFERENCE_TIMEOUT_S) -> str:
    """The text the notebook puts in the output block for `code`, BEFORE process_code's 200-character cap.

    `code` is the block as the notebook extracts it (the text between "```python" and "```",
    leading newline included). Runs a fresh interpreter, synchronously.
    """
    with tempfile.TemporaryDirectory() as temp_dir:
        path = os.path.join(temp_dir, REFERENCE_FILENAME)
        with open(path, "w", encoding="utf-8") as file:
            file.write(reference_program(code))
        proc = subprocess.Popen(
            [python, path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=temp_dir,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return reference_timeout_message(timeout_s)
        return _outcome(proc.returncode, stdout, stderr, path)[1]


class ReferenceExecutor:
    """Runs each block as the notebook's PythonREPL does, in a fresh interpreter (last_block only).

    The Executor interface (sandbox/execution.py: start, ready, execute,
    close_session, release, close). A result's `feedback` is reference_feedback()'s text
    (before the cap): OK -> the stripped stdout; ERROR/KILLED -> the munged stderr (possibly
    empty); TIMEOUT -> "Timed out after 5 seconds.".
    """

    def __init__(
        self,
        python: str = sys.executable,
        timeout_s: int | float = REFERENCE_TIMEOUT_S,
        concurrency: int | None = None,
        max_output_bytes: int = 1024 * 1024,
    ) -> None:
        self.python = python
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self._semaphore = asyncio.Semaphore(concurrency or os.cpu_count() or 1)
        self._running: set[asyncio.subprocess.Process] = set()

    async def start(self) -> None:
        pass

    async def ready(self) -> bool:
        return True

    async def close_session(self, session_id: str) -> None:
        pass  # the notebook has no sessions: every block runs alone

    async def release(self, tenant: str) -> None:
        pass  # a fresh process and directory per block

    async def close(self) -> None:
        for proc in list(self._running):
            _kill_group(proc)

    async def execute(self, code: str, session_id: str | None = None, tenant: str | None = None) -> ExecutionResult:
        async with self._semaphore:
            return await self._run(code)

    async def _run(self, code: str) -> ExecutionResult:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as temp_dir:
            path = os.path.join(temp_dir, REFERENCE_FILENAME)
            try:
                with open(path, "w", encoding="utf-8") as file:
                    file.write(reference_program(code))
            except UnicodeEncodeError as error:  # the notebook's map would abort here
                return _result(ExecutionStatus.KILLED, "", f"reference aborted: {error!r}", started)
            proc = await asyncio.create_subprocess_exec(
                self.python,
                path,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=temp_dir,
                start_new_session=True,
            )
            self._running.add(proc)
            out = asyncio.create_task(_read_head(proc.stdout, self.max_output_bytes))
            err = asyncio.create_task(_read_tail(proc.stderr, 4 * self.max_output_bytes))
            timed_out = False
            try:
                try:
                    await asyncio.wait_for(asyncio.shield(proc.wait()), self.timeout_s)
                except TimeoutError:
                    timed_out = True
                _kill_group(proc)  # the timeout's kill, or what the block left running
                await proc.wait()
                done, _ = await asyncio.wait({out, err}, timeout=2.0)
            finally:
                if proc.returncode is None:
                    _kill_group(proc)
                out.cancel()
                err.cancel()
                self._running.discard(proc)
            stdout = out.result() if out in done else b""
            stderr = err.result() if err in done else b""
        if timed_out:
            return _result(ExecutionStatus.TIMEOUT, "", reference_timeout_message(self.timeout_s), started)
        ok, text = _outcome(proc.returncode, stdout, stderr, path)
        if ok:
            return _result(ExecutionStatus.OK, text, "", started)
        status = ExecutionStatus.KILLED if proc.returncode < 0 else ExecutionStatus.ERROR
        return _result(status, _decode(stdout).strip(), text, started)


def _result(status: ExecutionStatus, stdout: str, error: str, started: float) -> ExecutionResult:
    return ExecutionResult(status=status, stdout=stdout, error=error, duration_s=time.monotonic() - started)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _read_head(stream: asyncio.StreamReader, cap: int) -> bytes:
    """The first `cap` bytes of `stream`, reading on (discarding) to EOF so the writer never blocks."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < cap:
            kept += chunk[: cap - len(kept)]
    return bytes(kept)


async def _read_tail(stream: asyncio.StreamReader, cap: int) -> bytes:
    """The last `cap` bytes of `stream` (the munging keys on the last line)."""
    tail = bytearray()
    while chunk := await stream.read(65536):
        tail += chunk
        if len(tail) > cap:
            del tail[: len(tail) - cap]
    return bytes(tail)
