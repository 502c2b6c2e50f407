"""LocalExecutor and the reference's code preparation, with real subprocesses (no mocks)."""

from __future__ import annotations

import ast
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sandbox.execution import ExecutionStatus, Executor, ExecutorError
from sandbox.executors import LocalExecutor
from sandbox.runner.program import PREAMBLE, block_program, trim_traceback, with_auto_print

CAP = 64 * 1024


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie nobody reaped counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


async def gone(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def pid_then(path: Path, rest: str) -> str:
    """A block that records its pid in `path`, then runs `rest`."""
    return f"import os\nopen({str(path)!r}, 'w').write(str(os.getpid()))\n{rest}"


@pytest.fixture
async def executor():
    ex = LocalExecutor(timeout_s=5)
    yield ex
    await ex.close()


@pytest.fixture
async def fast_timeout():
    ex = LocalExecutor(timeout_s=1)
    yield ex
    await ex.close()


# -- program.py: pure functions ------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("x = 6*7\nx", "x = 6*7\nprint(x)"),
        ("x = 2\nx  # the answer", "x = 2\nprint(x)  # the answer"),
        ("x = 2\nx\n\n  \n", "x = 2\nprint(x)\n\n  \n"),
        ("a = 1; a + 1", "a = 1; print(a + 1)"),
        ("f(1,\n  2)", "print(f(1,\n  2))"),
        ("s = 'é'\ns + '#'", "s = 'é'\nprint(s + '#')"),
        ("'é' + 'ü'  # ñ", "print('é' + 'ü')  # ñ"),
        ("a, b", "print(a, b)"),  # as the reference: prints "1 2", not "(1, 2)"
    ],
)
def test_auto_print_wraps_the_last_expression(code: str, expected: str) -> None:
    assert with_auto_print(code) == expected


@pytest.mark.parametrize(
    "code",
    [
        "x = 1",
        "x += 1",
        "import math",
        "for i in range(3):\n    i",
        "if True:\n    x",
        "def f():\n    return 1",
        "pass",
        "x = 1\n# done",
        "print(1)",
        "[print(i) for i in range(3)]",  # the reference's own rule: "print(" on the last line
        "x = = 1",  # no parse: left for Python to report
        "",
    ],
)
def test_auto_print_leaves_statements_alone(code: str) -> None:
    assert with_auto_print(code) == code


def test_block_program_prepends_the_preamble() -> None:
    assert block_program("1 + 1") == PREAMBLE + "print(1 + 1)"


def test_trim_traceback_keeps_the_reference_lines_without_the_path() -> None:
    path = "/tmp/sctir-abc123/tmp.py"
    stderr = (
        "Traceback (most recent call last):\n"
        f'  File "{path}", line 5, in <module>\n'
        "    print(f(0))\n"
        "          ^^^^\n"
        f'  File "{path}", line 4, in f\n'
        "    return sp.sqrt(1/x)\n"
        '  File "/usr/lib/python3/site-packages/sympy/core/cache.py", line 72, in wrapper\n'
        "    retval = cfunc(*args, **kwargs)\n"
        "ZeroDivisionError: division by zero\n"
    )
    assert trim_traceback(stderr, path, line_offset=3) == (
        "Traceback (most recent call last):\n"
        "  line 2, in <module>\n"
        "    print(f(0))\n"
        "  line 1, in f\n"
        "    return sp.sqrt(1/x)\n"
        "ZeroDivisionError: division by zero"
    )


# -- last_block ----------------------------------------------------------------


async def test_satisfies_the_protocol(executor: LocalExecutor) -> None:
    assert isinstance(executor, Executor)
    assert not await executor.ready()
    await executor.start()
    assert await executor.ready()


async def test_start_fails_for_a_missing_interpreter() -> None:
    ex = LocalExecutor(python="/nonexistent/python3")
    with pytest.raises(ExecutorError, match="cannot run '/nonexistent/python3'.*: point SCTIR_PYTHON at"):
        await ex.start()
    assert not await ex.ready()
    with pytest.raises(ExecutorError, match="/nonexistent/python3"):  # the executor's fault: never a block's output
        await ex.execute("1")


async def test_an_interpreter_without_numpy_is_not_ready(tmp_path: Path) -> None:
    python = tmp_path / "python-without-site"  # -S: no site-packages, so no numpy
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    ex = LocalExecutor(python=str(python))
    with pytest.raises(ExecutorError, match="No module named 'numpy'"):
        await ex.start()
    assert not await ex.ready()
    with pytest.raises(ExecutorError) as raised:  # a session needs the same runner
        await ex.execute("1", session_id="s")
    assert str(raised.value) == (
        "the runner is not ready: ModuleNotFoundError: No module named 'numpy': "
        "install numpy and sympy into that interpreter, or point SCTIR_PYTHON at one that has them"
    )
    await ex.close()


@pytest.mark.parametrize(
    ("code", "stdout"),
    [
        ("x = 6*7\nx", "42"),
        ("x = 6*7\nx  # the answer", "42"),
        ("x = 6*7", ""),  # the reference would run print(x = 6*7): a TypeError
        ("x = 3\nif x > 2:\n    x", ""),  # the reference: print(    x), an IndentationError
        ("sp.factorint(360)", "{2: 3, 3: 2, 5: 1}"),
        ("int(np.sum(np.arange(10))) + math.factorial(3)", "51"),
        ("print('hi')\n'done'", "hi\ndone"),
    ],
)
async def test_last_block_auto_print_and_preamble(executor: LocalExecutor, code: str, stdout: str) -> None:
    result = await executor.execute(code)
    assert result.status is ExecutionStatus.OK, result.error
    assert result.stdout.strip() == stdout
    assert result.feedback == stdout
    assert result.duration_s > 0


async def test_last_block_blocks_do_not_share_state(executor: LocalExecutor) -> None:
    assert (await executor.execute("leak = 1")).status is ExecutionStatus.OK
    result = await executor.execute("leak")
    assert result.status is ExecutionStatus.ERROR
    assert result.error.endswith("NameError: name 'leak' is not defined")


async def test_error_is_a_trimmed_traceback(executor: LocalExecutor) -> None:
    result = await executor.execute("x = 1\ny = x / 0")
    assert result.status is ExecutionStatus.ERROR
    lines = result.error.split("\n")
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "ZeroDivisionError: division by zero"
    assert "  line 2, in <module>" in lines  # numbered as in the block, not the program
    assert "    y = x / 0" in lines
    assert tempfile.gettempdir() not in result.error
    assert "sctir-" not in result.error and "File" not in result.error
    assert result.feedback == result.error


async def test_input_sees_eof(executor: LocalExecutor) -> None:
    result = await executor.execute("input()")
    assert result.status is ExecutionStatus.ERROR
    assert result.error.split("\n")[-1].startswith("EOFError")


async def test_timeout_kills_the_process_and_its_children(fast_timeout: LocalExecutor, tmp_path: Path) -> None:
    child_pid = tmp_path / "child"
    code = pid_then(
        tmp_path / "pid",
        "import subprocess\n"
        "p = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(p.pid))\n"
        "while True: pass",
    )
    result = await fast_timeout.execute(code)
    assert result.status is ExecutionStatus.TIMEOUT
    assert result.error == "Timed out after 1 seconds."
    assert result.feedback == "Timed out after 1 seconds."
    assert 1 <= result.duration_s < 4
    assert not alive(int((tmp_path / "pid").read_text()))
    assert await gone(int(child_pid.read_text()))  # the group was killed, not only the leader


async def test_timeout_text_for_a_fractional_timeout() -> None:
    ex = LocalExecutor(timeout_s=0.5)
    result = await ex.execute("while True: pass")
    assert result.status is ExecutionStatus.TIMEOUT
    assert result.error == "Timed out after 0.5 seconds."


async def test_background_children_do_not_outlive_a_finished_block(executor: LocalExecutor, tmp_path: Path) -> None:
    code = (
        "import subprocess\n"
        "p = subprocess.Popen(['sleep', '60'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "p.pid"
    )
    result = await executor.execute(code)
    assert result.status is ExecutionStatus.OK, result.error
    assert await gone(int(result.stdout))


async def test_a_child_holding_stdout_cannot_hang_the_block(fast_timeout: LocalExecutor) -> None:
    # The child inherits the block's stdout pipe, so EOF never comes by itself: the block's
    # own end (its exit report) ends it, not EOF, and its group is killed then.
    code = "import subprocess\np = subprocess.Popen(['sleep', '60'])\np.pid"
    await fast_timeout.start()
    started = time.monotonic()
    result = await fast_timeout.execute(code)
    assert time.monotonic() - started < 1
    assert result.status is ExecutionStatus.OK, result.error
    assert await gone(int(result.stdout))  # its stdout was flushed at exit; the child is dead


@pytest.mark.parametrize(
    ("code", "signal_name"),
    [
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "SIGKILL"),
        ("import ctypes\nctypes.string_at(0)", "SIGSEGV"),
    ],
)
async def test_death_by_signal_is_killed(executor: LocalExecutor, code: str, signal_name: str) -> None:
    result = await executor.execute(code)
    assert result.status is ExecutionStatus.KILLED
    assert signal_name in result.error


async def test_exit_code_without_traceback_is_an_error(executor: LocalExecutor) -> None:
    result = await executor.execute("import sys\nsys.exit(3)")
    assert result.status is ExecutionStatus.ERROR
    assert result.error == "Exited with code 3."


async def test_huge_output_is_capped(executor: LocalExecutor) -> None:
    result = await executor.execute("print('x' * 50_000_000)")
    assert result.status in (ExecutionStatus.OK, ExecutionStatus.KILLED)
    assert CAP // 2 <= len(result.stdout.encode()) <= CAP + 16
    assert result.duration_s < executor.timeout_s


async def test_endless_output_is_killed_long_before_the_timeout() -> None:
    ex = LocalExecutor(timeout_s=5, max_output_bytes=4096)
    result = await ex.execute("while True:\n    print('y' * 1000)")
    assert result.status is ExecutionStatus.KILLED
    assert "Output exceeded 4096 bytes" in result.error
    assert len(result.stdout) == 4096 and set(result.stdout) <= {"y", "\n"}
    assert result.duration_s < 3


async def test_output_a_little_over_the_cap_is_truncated_not_killed() -> None:
    ex = LocalExecutor(max_output_bytes=1000)
    result = await ex.execute("print('z' * 1500)")
    assert result.status is ExecutionStatus.OK
    assert result.stdout == "z" * 1000
    assert "truncated" in result.error


async def test_cancelling_execute_kills_the_process(executor: LocalExecutor, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(executor.execute(pid_then(pid_file, "import time\ntime.sleep(30)")))
    pid = int(await wait_for_file(pid_file))
    assert alive(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(pid)  # killed and reaped before the cancellation completed
    assert executor.stats()["busy"] == 0


async def test_concurrency_is_bounded(tmp_path: Path) -> None:
    def overlap(intervals: list[tuple[float, float]]) -> int:
        return max(sum(s <= start < e for s, e in intervals) for start, _ in intervals)

    async def run(concurrency: int, sleep: float) -> int:
        ex = LocalExecutor(timeout_s=10, concurrency=concurrency)
        files = [tmp_path / f"c{concurrency}-{i}" for i in range(4)]
        code = "import time\ns = time.time()\ntime.sleep({})\nopen({!r}, 'w').write(f'{{s}} {{time.time()}}')"
        results = await asyncio.gather(*(ex.execute(code.format(sleep, str(f))) for f in files))
        assert all(r.status is ExecutionStatus.OK for r in results), results
        return overlap([tuple(map(float, f.read_text().split())) for f in files])

    assert await run(concurrency=2, sleep=0.5) <= 2
    # The same measurement does see more than 2 blocks at once without the limit.
    assert await run(concurrency=4, sleep=1.5) >= 3


# -- sessions ------------------------------------------------------------------


async def test_session_state_persists_and_sessions_are_separate(executor: LocalExecutor) -> None:
    first = await executor.execute("a = 6\nb = 7", session_id="cand-1")
    assert first.status is ExecutionStatus.OK, first.error
    result = await executor.execute("a * b", session_id="cand-1")
    assert (result.status, result.stdout) == (ExecutionStatus.OK, "42\n")
    result = await executor.execute("sp.isprime(a * b + 1), np.int64(a)", session_id="cand-1")
    assert result.stdout.strip() == "True 6"  # print(x, y), as the reference's rewrite does

    other = await executor.execute("a", session_id="cand-2")
    assert other.status is ExecutionStatus.ERROR
    assert other.error.endswith("NameError: name 'a' is not defined")
    assert (await executor.execute("a", None)).status is ExecutionStatus.ERROR  # nor last_block


async def test_session_prints_like_last_block(executor: LocalExecutor) -> None:
    code = (
        "x = sp.symbols('x')\n"
        "sp.pprint(sp.sqrt(x) / 2)\n"  # Unicode only if sys.stdout.encoding says so
        "print(np.arange(4) ** 2)\n"
        "sp.Rational(1, 3), 7  # a bare tuple: two arguments to print"
    )
    alone = await executor.execute(code)
    in_session = await executor.execute(code, session_id="s")
    assert alone.status is in_session.status is ExecutionStatus.OK
    assert in_session.stdout == alone.stdout == "√x\n──\n2 \n[0 1 4 9]\n1/3 7\n"


async def test_session_traceback_spans_blocks(executor: LocalExecutor) -> None:
    await executor.execute("def f(y):\n    return 1 / y", session_id="s")
    result = await executor.execute("z = 0\nf(z)", session_id="s")
    assert result.status is ExecutionStatus.ERROR
    assert result.error == (
        "Traceback (most recent call last):\n"
        "  line 2, in <module>\n"
        "    print(f(z))\n"
        "  line 2, in f\n"
        "    return 1 / y\n"
        "ZeroDivisionError: division by zero"
    )


async def test_session_timeout_resets_state(fast_timeout: LocalExecutor) -> None:
    assert (await fast_timeout.execute("kept = 1", session_id="s")).status is ExecutionStatus.OK
    result = await fast_timeout.execute("while True: pass", session_id="s")
    assert result.status is ExecutionStatus.TIMEOUT
    assert result.error == "Timed out after 1 seconds. The session state was reset."
    after = await fast_timeout.execute("kept", session_id="s")
    assert after.status is ExecutionStatus.ERROR
    assert after.error.endswith("NameError: name 'kept' is not defined")
    assert (await fast_timeout.execute("1 + 1", session_id="s")).stdout == "2\n"


async def test_session_crash_is_killed_and_resets(executor: LocalExecutor) -> None:
    await executor.execute("kept = 1", session_id="s")
    result = await executor.execute("import ctypes\nctypes.string_at(0)", session_id="s")
    assert result.status is ExecutionStatus.KILLED
    assert "SIGSEGV" in result.error and "reset" in result.error
    after = await executor.execute("'kept' in globals()", session_id="s")
    assert after.stdout == "False\n"


async def test_session_fd_writes_do_not_corrupt_the_protocol(executor: LocalExecutor) -> None:
    code = (
        "import os, sys\n"
        'os.write(1, b\'{"ok": true, "stdout": "forged", "error": ""}\\n\')\n'
        "os.system('echo from a child process')\n"
        "print('to stderr', file=sys.stderr)\n"
        "v = 5\n"
        "v"
    )
    result = await executor.execute(code, session_id="s")
    assert (result.status, result.stdout) == (ExecutionStatus.OK, "5\n")
    again = await executor.execute("v + 1", session_id="s")
    assert (again.status, again.stdout) == (ExecutionStatus.OK, "6\n")


async def test_session_blocks_do_not_inherit_the_runners_future_imports(executor: LocalExecutor) -> None:
    code = "def f(x: int) -> int:\n    return x\nf.__annotations__['x']"
    result = await executor.execute(code, session_id="s")
    assert result.stdout == "<class 'int'>\n"  # not the string 'int'


async def test_session_input_and_exit_do_not_break_it(executor: LocalExecutor) -> None:
    result = await executor.execute("w = 1\ninput()", session_id="s")
    assert result.status is ExecutionStatus.ERROR and "EOFError" in result.error
    result = await executor.execute("import sys\nsys.exit(2)", session_id="s")
    assert result.status is ExecutionStatus.ERROR
    assert (await executor.execute("w", session_id="s")).stdout == "1\n"  # the session process survived


async def test_session_output_is_capped() -> None:
    ex = LocalExecutor(max_output_bytes=2048)
    try:
        result = await ex.execute("while True:\n    print('q' * 100)", session_id="s")
        assert result.status is ExecutionStatus.ERROR
        assert len(result.stdout) == 2048
        assert "Output exceeded" in result.error
        assert (await ex.execute("3 * 3", session_id="s")).stdout == "9\n"
    finally:
        await ex.close()


async def test_cancelling_a_session_block_kills_its_process(executor: LocalExecutor, tmp_path: Path) -> None:
    await executor.execute("kept = 1", session_id="s")
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(executor.execute(pid_then(pid_file, "import time\ntime.sleep(30)"), session_id="s"))
    pid = int(await wait_for_file(pid_file))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(pid)
    after = await executor.execute("'kept' in globals()", session_id="s")
    assert after.stdout == "False\n"


async def test_close_session_and_close_leave_no_process(executor: LocalExecutor) -> None:
    pids = {}
    for sid in ("a", "b", "c"):
        result = await executor.execute("import os\nos.getpid()", session_id=sid)
        pids[sid] = int(result.stdout)
    assert len(set(pids.values())) == 3 and all(alive(p) for p in pids.values())

    await executor.close_session("a")
    assert not alive(pids["a"])
    await executor.close_session("never-opened")  # a no-op
    fresh = await executor.execute("'os' in globals()", session_id="a")
    assert fresh.stdout == "False\n"  # a new process, not the old state

    await executor.close()
    assert not any(alive(p) for p in pids.values())


async def test_close_session_ends_a_running_block(executor: LocalExecutor, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(executor.execute(pid_then(pid_file, "import time\ntime.sleep(30)"), session_id="s"))
    pid = int(await wait_for_file(pid_file))
    await executor.close_session("s")
    result = await asyncio.wait_for(task, 5)
    assert result.status is ExecutionStatus.KILLED
    assert not alive(pid)


async def test_session_with_a_missing_interpreter_raises() -> None:
    ex = LocalExecutor(python="/nonexistent/python3")
    with pytest.raises(ExecutorError, match="cannot run '/nonexistent/python3'"):
        await ex.execute("1", session_id="s")
    await ex.close()


async def test_a_closed_executor_raises() -> None:
    ex = LocalExecutor()
    await ex.start()
    assert (await ex.execute("1")).stdout == "1\n"
    await ex.close()
    with pytest.raises(ExecutorError, match="closed"):
        await ex.execute("1")


RUNNER = Path(__file__).parents[1] / "sandbox" / "runner"


@pytest.mark.parametrize("module", sorted(path.stem for path in RUNNER.glob("*.py")))
def test_what_runs_in_the_sandbox_is_stdlib_only(module: str) -> None:
    tree = ast.parse((RUNNER / f"{module}.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0)  # not the runner's own
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


async def test_the_zygote_never_loads_the_hubs_modules(executor: LocalExecutor) -> None:
    """A block's interpreter is a fork of the zygote: what it has loaded, the zygote loaded."""
    result = await executor.execute("import sys\nsorted(m for m in sys.modules if m.split('.')[0] == 'runner')")
    loaded = set(ast.literal_eval(result.stdout))
    assert {"runner.zygote", "runner.spare", "runner.child", "runner.wire"} <= loaded, loaded
    assert not loaded & {"runner.hub", "runner.runs", "runner.supervisor", "runner.loop", "runner.health"}, loaded


# -- the runner underneath (sandbox/runner/) ----------------------------------------


async def test_blocks_take_milliseconds_once_warm(executor: LocalExecutor) -> None:
    await executor.start()
    durations = []
    for i in range(20):
        await asyncio.sleep(0.02)  # a candidate generates between its blocks
        result = await executor.execute(f"x = sp.Rational({i}, 7)\nx + 1")
        assert result.status is ExecutionStatus.OK
        durations.append(result.duration_s)
    assert sorted(durations)[10] < 0.02, durations  # typically 1-2 ms, against 0.3-0.7 s for a fresh python3


async def test_every_block_gets_fresh_randomness(executor: LocalExecutor) -> None:
    code = "import random\nrandom.random(), np.random.rand(), sp.randprime(10**8, 10**9)"
    outputs = {(await executor.execute(code)).stdout for _ in range(4)}
    assert len(outputs) == 4  # forked from one process, yet not the same random state


async def test_killing_the_zygote_is_survived(executor: LocalExecutor) -> None:
    await executor.start()
    result = await executor.execute("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n'still here'")
    if executor.slots[0].hello.get("signal_scope"):  # Landlock refuses the kill: do it from outside
        assert "PermissionError" in result.error, result
        hub = executor.slots[0].handle.pid
        with open(f"/proc/{hub}/task/{hub}/children") as file:
            children = [int(pid) for pid in file.read().split()]
        zygotes = [pid for pid in children if b"--zygote" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(zygotes) == 1
        os.kill(zygotes[0], signal.SIGKILL)
    else:
        assert (result.status, result.stdout) == (ExecutionStatus.OK, "still here\n")
    results = await asyncio.gather(*(executor.execute(f"{i} * 2") for i in range(6)))
    assert [r.stdout for r in results] == [f"{i * 2}\n" for i in range(6)]
    pong = await executor.slots[0].conn.call({"op": "ping"}, 5)
    assert pong["zygote_restarts"] == 1 and pong["zygote_ready"]
    assert executor.stats()["replaced"] == 0  # the runner itself never went down


async def test_a_process_that_left_the_blocks_session_is_killed(executor: LocalExecutor) -> None:
    code = "import subprocess\nsubprocess.Popen(['sleep', '60'], start_new_session=True).pid"
    result = await executor.execute(code)
    assert result.status is ExecutionStatus.OK
    assert await gone(int(result.stdout), within=3.0)  # orphaned, adopted by the runner, swept


async def test_user_code_cannot_forge_the_result(executor: LocalExecutor) -> None:
    code = (
        "import json, os, struct\n"
        "body = json.dumps({'rc': 0}).encode()\n"
        "for fd in (1, 4):\n"
        "    os.write(fd, struct.pack('>I', len(body)) + body)\n"  # fd 4: this block's own result pipe
        "raise SystemExit(5)"
    )
    result = await executor.execute(code)
    # Its own result pipe it may lie on, about itself only; the runner and the other blocks are unharmed.
    assert result.status in (ExecutionStatus.OK, ExecutionStatus.ERROR, ExecutionStatus.KILLED)
    assert (await executor.execute("6 * 7")).stdout == "42\n"


# -- the runner keeps itself fit (a block owns its user's files: here nothing confines them) --------------


async def test_a_chmod_of_the_work_root_is_repaired_after_the_block(executor: LocalExecutor) -> None:
    attack = "import os\nroot = os.path.dirname(os.getcwd())\nos.chmod(root, 0)\noct(os.stat(root).st_mode & 0o777)"
    assert (await executor.execute(attack)).stdout == "0o0\n"
    # Every spare makes its directory in the work root: without the repair, "Exited with code 70." from here on.
    results = await asyncio.gather(*(executor.execute(f"{i} * 2") for i in range(6)))
    assert [r.stdout for r in results] == [f"{i * 2}\n" for i in range(6)], results
    assert executor.stats()["replaced"] == 0


async def test_a_runner_whose_work_root_is_gone_is_replaced(executor: LocalExecutor) -> None:
    assert (await executor.execute("1")).stdout == "1\n"
    first = executor.slots[0].name
    attack = "import os\nroot = os.path.dirname(os.getcwd())\nos.rename(root, root + '-moved')\nprint(root)"
    moved = (await executor.execute(attack)).stdout.strip() + "-moved"
    shutil.rmtree(moved)
    for _ in range(100):  # the runner says it is unhealthy; the pool replaces it in the background
        if executor.stats()["replaced"]:
            break
        await asyncio.sleep(0.05)
    assert executor.stats()["replaced"] == 1
    results = await asyncio.gather(*(executor.execute(f"{i} + 1") for i in range(4)))
    assert [r.stdout for r in results] == [f"{i + 1}\n" for i in range(4)], results
    assert [slot.name for slot in executor._live()] != [first]
