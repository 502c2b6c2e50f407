"""The Docker sandbox: the real image in real containers, the security suite, the pool's recovery.

Needs a Docker engine and the sandbox image (scripts/start-dockerd.sh, then
scripts/build-sandbox-image.sh); without them every test here skips, naming
what is missing, unless SCTIR_REQUIRE_DOCKER=1 (CI), where they fail.

The security suite runs each attack in the same pool, then checks that the
attack failed, that the next execution on the pool succeeds and that the
host kept its secrets; at the end no container of the pool is left.
"""

from __future__ import annotations

import ast
import asyncio
import os
import socket
import time
import uuid

import pytest
import pytest_asyncio

from sandbox.backends import SandboxUnavailable
from sandbox.backends.owners import LABEL_POOL
from sandbox.execution import ExecutionResult, ExecutionStatus, Executor, ExecutorError
from sandbox.executors import DockerExecutor
from tests.support.docker import (
    GVISOR_LIMITS,
    IMAGE,
    containers_of,
    make_pool,
    require_docker,
    require_gvisor,
    start_gvisor_pool,
)

HOST_SECRET = f"sctir-host-secret-{uuid.uuid4().hex}"

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module", autouse=True)
def _docker_available() -> None:
    require_docker()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    os.environ["SCTIR_TEST_HOST_SECRET"] = HOST_SECRET  # in this process's env: must not reach the sandbox
    ex = make_pool()
    await ex.start()
    yield ex
    await ex.close()
    assert containers_of(ex.backend.pool_name) == [], "a container of the pool was left behind"
    os.environ.pop("SCTIR_TEST_HOST_SECRET", None)


async def healthy(ex: Executor, within_s: float = 20.0) -> None:
    """The next execution succeeds (waiting for a replacement if a slot died) and the pool is full again."""
    result = await ex.execute("6 * 7")
    assert (result.status, result.stdout) == (ExecutionStatus.OK, "42\n"), result
    deadline = time.monotonic() + within_s
    while ex.stats()["warm"] < ex.size:
        assert time.monotonic() < deadline, f"the pool did not recover: {ex.stats()}"
        await asyncio.sleep(0.1)
    again = await asyncio.gather(*(ex.execute(f"{i} + 1") for i in range(ex.size * ex.concurrency)))
    assert [r.stdout for r in again] == [f"{i + 1}\n" for i in range(ex.size * ex.concurrency)], again


def no_secret(result: ExecutionResult) -> None:
    assert HOST_SECRET not in result.stdout and HOST_SECRET not in result.error


# -- the container itself ------------------------------------------------------------


async def test_is_an_executor_and_ready(pool: DockerExecutor) -> None:
    assert isinstance(pool, Executor)
    assert await pool.ready()
    stats = pool.stats()
    assert stats["warm"] == 2 and stats["busy"] == 0 and stats["capacity"] == 6
    assert len(containers_of(pool.backend.pool_name)) == 2


async def test_containers_are_hardened(pool: DockerExecutor) -> None:
    for container in containers_of(pool.backend.pool_name):
        host = container.attrs["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Memory"] == 512 * 2**20 and host["MemorySwap"] == 512 * 2**20
        assert host["PidsLimit"] == 128 and host["NanoCpus"] == 10**9
        assert host["Privileged"] is False
        assert host["LogConfig"]["Type"] == "none"
        assert "noexec" in host["Tmpfs"]["/tmp"] and "size=32m" in host["Tmpfs"]["/tmp"]
        assert container.attrs["Config"]["User"] == "10001:10001"
        assert container.labels["sctir.sandbox"] == "1"
    code = (
        "import os\n"
        "lines = open('/proc/self/status').read().splitlines()\n"
        "status = dict(line.split(':\\t') for line in lines if ':\\t' in line)\n"
        "print(os.getuid(), os.getgid(), status['CapEff'], status['CapBnd'], status['NoNewPrivs'], status['Seccomp'])\n"
        "print(sorted(name for _, name in __import__('socket').if_nameindex()))\n"
        "print(os.getpid() > 1, os.getppid())"
    )
    result = await pool.execute(code)
    assert result.status is ExecutionStatus.OK, result
    ids, interfaces, pids = result.stdout.splitlines()
    assert ids == "10001 10001 0000000000000000 0000000000000000 1 2"  # no caps at all, seccomp filter on
    assert interfaces == "['lo']"
    assert pids.startswith("True")


async def test_outputs_like_the_seed(pool: DockerExecutor) -> None:
    result = await pool.execute("x = sp.symbols('x')\nsp.solve(x**2 - 5*x + 6, x), int(np.sum(np.arange(4)))")
    assert (result.status, result.stdout) == (ExecutionStatus.OK, "[2, 3] 6\n")
    result = await pool.execute("def f(y):\n    return 1 / y\nf(0)")
    assert result.status is ExecutionStatus.ERROR
    assert result.error == (
        "Traceback (most recent call last):\n"
        "  line 3, in <module>\n"
        "    print(f(0))\n"
        "  line 2, in f\n"
        "    return 1 / y\n"
        "ZeroDivisionError: division by zero"
    )
    assert (await pool.execute("leftover = 1")).status is ExecutionStatus.OK
    fresh = await pool.execute("leftover")
    assert fresh.status is ExecutionStatus.ERROR and "NameError" in fresh.error


async def test_sessions_stick_to_their_state(pool: DockerExecutor) -> None:
    assert (await pool.execute("a = 6", session_id="cand-1")).status is ExecutionStatus.OK
    assert (await pool.execute("b = 7", session_id="cand-2")).status is ExecutionStatus.OK
    result = await pool.execute("a * 7", session_id="cand-1")
    assert (result.status, result.stdout) == (ExecutionStatus.OK, "42\n")
    other = await pool.execute("a", session_id="cand-2")
    assert other.status is ExecutionStatus.ERROR and "NameError" in other.error
    await pool.close_session("cand-1")
    await pool.close_session("cand-2")
    after = await pool.execute("'a' in globals()", session_id="cand-1")
    assert after.stdout == "False\n"
    await pool.close_session("cand-1")
    assert pool.stats()["sessions"] == 0


async def test_per_container_concurrency_is_bounded() -> None:
    ex = make_pool(size=1, concurrency=2, timeout_s=10.0)
    try:
        code = "import time\nstart = time.time()\ntime.sleep(0.6)\nprint(start, time.time())"
        results = await asyncio.gather(*(ex.execute(code) for _ in range(6)))
        intervals = [tuple(map(float, r.stdout.split())) for r in results]
        overlap = max(sum(s <= start < e for s, e in intervals) for start, _ in intervals)
        assert overlap == 2, intervals
    finally:
        await ex.close()


async def test_cancelling_an_execution_kills_its_process(pool: DockerExecutor) -> None:
    task = asyncio.create_task(pool.execute("import time\ntime.sleep(30)"))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pongs = [await slot.conn.call({"op": "ping"}, 5) for slot in pool.slots]
    assert all(p["running"] == 0 for p in pongs), pongs
    assert pool.stats()["busy"] == 0


# -- the security suite ------------------------------------------------------------------


async def test_no_outbound_network(pool: DockerExecutor) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # a service on the host's loopback
    port = listener.getsockname()[1]
    try:
        code = (
            "import socket\n"
            "results = []\n"
            f"for target in [('127.0.0.1', {port})]:\n"
            "    try:\n"
            "        socket.create_connection(target, timeout=2)\n"
            "        results.append('connected')\n"
            "    except OSError as error:\n"
            "        results.append(type(error).__name__)\n"
            "print(results)\n"
            "print(open('/proc/net/route').read().strip().count('\\n'))"  # the header only: no route at all
        )
        result = await pool.execute(code)
        assert result.status is ExecutionStatus.OK, result
        # its own loopback, not the host's; or, where Landlock has TCP rules (ABI 4), no connect() at all
        expected = "PermissionError" if pool.slots[0].hello.get("landlock_abi", 0) >= 4 else "ConnectionRefusedError"
        assert result.stdout == f"['{expected}']\n0\n"
    finally:
        listener.close()
    await healthy(pool)


async def test_no_dns(pool: DockerExecutor) -> None:
    code = (
        "import socket\ntry:\n    print(socket.getaddrinfo('pypi.org', 443))\n"
        "except OSError as e:\n    print(type(e).__name__)"
    )
    result = await pool.execute(code)
    assert (result.status, result.stdout) == (ExecutionStatus.OK, "gaierror\n"), result
    await healthy(pool)


@pytest.mark.parametrize(
    "target",
    [
        "/etc/passwd",
        "/opt/sctir/runner/__main__.py",
        "/opt/sctir/runner/program.py",
        "/opt/sctir/runner/x.py",
        "/pwned",
        "/usr/lib/python3/pwned.py",
        "/root/x",
    ],
)
async def test_cannot_write_outside_tmp(pool: DockerExecutor, target: str) -> None:
    result = await pool.execute(f"open({target!r}, 'a').write('pwned')")
    assert result.status is ExecutionStatus.ERROR
    assert "Read-only file system" in result.error or "Permission denied" in result.error, result.error
    await healthy(pool)


async def test_filling_the_scratch_space_is_bounded_and_cleaned(pool: DockerExecutor) -> None:
    code = "with open('fill', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * 2**20)"
    result = await pool.execute(code)  # in its own directory: the one place a block can write
    assert result.status is ExecutionStatus.ERROR and "No space left on device" in result.error, result
    # The next blocks still have room (a block's directory goes with it; the runner purges at half full).
    write = "open('scratch', 'wb').write(b'y' * 8 * 2**20)"
    results = await asyncio.gather(*(pool.execute(write) for _ in range(2)))
    assert all(r.status is ExecutionStatus.OK for r in results), results
    await healthy(pool)


@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(8 * 1024**3)",  # far past the limit at once
        "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 2**20))",  # step by step: the OOM killer
    ],
)
async def test_memory_beyond_the_limit(pool: DockerExecutor, code: str) -> None:
    replaced = pool.stats()["replaced"]
    result = await pool.execute(code)
    assert result.status in (ExecutionStatus.ERROR, ExecutionStatus.KILLED), result
    assert "MemoryError" in result.error or "out of memory" in result.error, result.error
    await healthy(pool)
    assert pool.stats()["replaced"] == replaced  # the execution died, not the container


@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        # children that leave the block's session and group, so that a group kill misses them
        "import os\nwhile True:\n    try:\n        if os.fork() == 0:\n            os.setsid()\n"
        "    except OSError:\n        pass",
    ],
    ids=["fork-bomb", "fork-bomb-setsid"],
)
async def test_fork_bomb(pool: DockerExecutor, code: str) -> None:
    result = await pool.execute(code)
    assert result.status in (ExecutionStatus.TIMEOUT, ExecutionStatus.KILLED, ExecutionStatus.ERROR), result
    await healthy(pool)
    # Nothing of it is left: every container holds just its runner, zygote and spares (counted by the engine).
    await asyncio.sleep(1.0)
    pongs = [await slot.conn.call({"op": "ping"}, 5) for slot in pool._live()]
    for slot in pool._live():
        count = len(slot.handle["container"].top()["Processes"])
        assert count <= 2 + pool.concurrency + 4, (count, pongs)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("while True:\n    pass", ExecutionStatus.TIMEOUT),
        ("import time\ntime.sleep(10**6)", ExecutionStatus.TIMEOUT),
        ("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile 1:\n    pass", ExecutionStatus.TIMEOUT),
    ],
    ids=["infinite-loop", "sleep-forever", "ignore-sigterm"],
)
async def test_runaway_blocks_time_out(pool: DockerExecutor, code: str, status: ExecutionStatus) -> None:
    result = await pool.execute(code)
    assert result.status is status and result.error == "Timed out after 3 seconds.", result
    assert result.duration_s < 3 + 2
    await healthy(pool)


@pytest.mark.parametrize(
    "code", ["print('x' * 100_000_000)", "import os\nos.write(1, b'x' * 100_000_000)"], ids=["print", "fd-1"]
)
async def test_100_mb_of_output(pool: DockerExecutor, code: str) -> None:
    result = await pool.execute(code)
    assert result.status is ExecutionStatus.KILLED and "Output exceeded" in result.error, result.error
    assert len(result.stdout) == 64 * 1024 and set(result.stdout) == {"x"}
    assert result.duration_s < 2
    await healthy(pool)


async def test_host_environment_and_files_are_out_of_reach(pool: DockerExecutor) -> None:
    code = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "for path in ['/work', '/root', '/home', '/var/run/docker.sock', '/run/docker.sock', '/etc/shadow']:\n"
        "    try:\n"
        "        print(path, sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read()[:20])\n"
        "    except OSError as error:\n"
        "        print(path, type(error).__name__)\n"
    )
    result = await pool.execute(code)
    assert result.status is ExecutionStatus.OK, result
    no_secret(result)
    lines = result.stdout.splitlines()
    assert not any(name.startswith("SCTIR") for name in eval(lines[0]))
    assert lines[1:] == [
        "/work FileNotFoundError",
        "/root PermissionError",
        "/home PermissionError" if pool.slots[0].hello.get("confined_files") else "/home []",
        "/var/run/docker.sock FileNotFoundError",
        "/run/docker.sock FileNotFoundError",
        "/etc/shadow PermissionError",
    ]
    await healthy(pool)


async def test_proc_1_environ_and_other_processes_are_closed(pool: DockerExecutor) -> None:
    code = (
        "import os\n"
        "me = os.getpid()\n"
        "for pid in (p for p in range(1, 400) if p != me and os.path.exists(f'/proc/{p}')):\n"  # none listed: probed
        "    for name in ('environ', 'mem', 'fd'):\n"
        "        try:\n"
        "            path = f'/proc/{pid}/{name}'\n"
        "            (os.listdir(path) if name == 'fd' else open(path, 'rb').read(64))\n"
        "            print(pid, name, 'READ')\n"
        "        except OSError as error:\n"
        "            print(pid, name, type(error).__name__)\n"
    )
    result = await pool.execute(code)
    assert result.status is ExecutionStatus.OK, result
    no_secret(result)
    lines = result.stdout.splitlines()
    assert lines and lines[0].startswith("1 environ") and "READ" not in lines[0]
    readable = [line for line in lines if line.endswith("READ")]
    assert readable == [], readable  # not the runner's, not the zygote's, not another block's
    await healthy(pool)


async def test_a_shell_gains_nothing(pool: DockerExecutor) -> None:
    code = (
        "import subprocess\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
        "script = 'id -u; echo pwned > /etc/pwned; echo pwned > /opt/sctir/x; su -c id root </dev/null; exit 0'\n"
        "r = subprocess.run(['/bin/sh', '-c', script], capture_output=True, text=True, timeout=5)\n"
        "print(r.stdout)\n"
        "print(r.stderr)"
    )
    result = await pool.execute(code)
    assert result.status is ExecutionStatus.OK, result
    out = result.stdout
    assert out.startswith("0000000000000000\n10001\n"), out
    assert out.count("Read-only file system") == 2, out
    assert "uid=0" not in out
    # An interactive shell in place of the block: stdin is /dev/null, so it ends at once.
    result = await pool.execute("import os\nos.execv('/bin/sh', ['sh', '-i'])")
    assert result.status in (ExecutionStatus.OK, ExecutionStatus.ERROR) and result.duration_s < 2, result
    await healthy(pool)


async def test_segfault_and_exit(pool: DockerExecutor) -> None:
    result = await pool.execute("import ctypes\nctypes.string_at(0)")
    assert (result.status, result.error) == (ExecutionStatus.KILLED, "Killed by SIGSEGV."), result
    result = await pool.execute("import os\nprint('lost in the buffer')\nos._exit(0)")
    assert (result.status, result.stdout) == (ExecutionStatus.OK, ""), result  # the reference's too: not flushed
    result = await pool.execute("import os\nos._exit(7)")
    assert (result.status, result.error) == (ExecutionStatus.ERROR, "Exited with code 7."), result
    await healthy(pool)


@pytest.mark.parametrize(
    "code",
    [
        "import os, signal\nos.kill(1, signal.SIGKILL)\nos.kill(1, signal.SIGTERM)\nos.kill(1, signal.SIGINT)",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "import os, signal\nfor p in os.listdir('/proc'):\n    if p.isdigit() and int(p) != os.getpid():\n"
        "        try:\n            os.kill(int(p), signal.SIGKILL)\n        except OSError:\n            pass",
        "import os, signal\nos.kill(-1, signal.SIGKILL)",
    ],
    ids=["pid-1", "parent", "every-pid", "kill-minus-1"],
)
async def test_killing_the_runner_from_inside(pool: DockerExecutor, code: str) -> None:
    replaced = pool.stats()["replaced"]
    hubs = {slot.name: slot.hello["pid"] for slot in pool.slots}
    result = await pool.execute(code)
    # It runs, or (with Landlock's signal scope) its kill is refused: either way nothing else dies.
    assert result.status is ExecutionStatus.OK or "PermissionError" in result.error, result
    await healthy(pool)
    assert pool.stats()["replaced"] == replaced  # PID 1 survived: no container was replaced
    assert {slot.name: slot.hello["pid"] for slot in pool.slots} == hubs


async def test_one_candidate_cannot_signal_another(pool: DockerExecutor) -> None:
    ex = make_pool(size=1, concurrency=3)  # one container: the victim and the attacker side by side
    try:
        victim = await ex.execute("import os\nos.getpid()", session_id="victim")
        if not ex.slots[0].hello.get("signal_scope"):
            pytest.skip("no Landlock signal scope in this kernel (Linux 6.12+): same-uid blocks can signal")
        pid = int(victim.stdout)
        for target in (str(pid), "os.getppid()"):
            attack = await ex.execute(f"import os, signal\nos.kill({target}, signal.SIGKILL)")
            assert attack.status is ExecutionStatus.ERROR and "PermissionError" in attack.error, (target, attack)
        await ex.execute("import os, signal\nos.kill(-1, signal.SIGKILL)")  # reaches no one outside its domain
        own = "import subprocess\nchild = subprocess.Popen(['sleep', '30'])\nchild.kill()\nchild.wait()"
        assert (await ex.execute(own)).stdout == "-9\n"  # its own children it can still signal
        assert (await ex.execute("import os\nos.getpid()", session_id="victim")).stdout == f"{pid}\n"
        assert ex.stats()["replaced"] == 0
    finally:
        await ex.close()


async def test_one_candidate_cannot_read_another(pool: DockerExecutor) -> None:
    secret = f"candidate-secret-{uuid.uuid4().hex}"
    ex = make_pool(size=1, concurrency=3)  # one container: the victim and the attacker side by side
    try:
        victim = await ex.execute(f"secret = {secret!r}\nprint(secret)", session_id="victim")
        assert victim.stdout == f"{secret}\n"
        assert (await ex.execute(f"last = {secret!r}[::-1][::-1]\nlast")).stdout == f"{secret}\n"
        attack = (
            "import ctypes, os\n"
            # The secret in two halves that are never joined: our own memory must not hold it whole.
            f"head = bytes.fromhex({secret[:20].encode().hex()!r})\n"
            f"tail = bytes.fromhex({secret[20:].encode().hex()!r})\n"
            "def holds(data):\n"
            "    at = data.find(head)\n"
            "    while at >= 0:\n"
            "        if data[at + len(head) : at + len(head) + len(tail)] == tail:\n"
            "            return True\n"
            "        at = data.find(head, at + 1)\n"
            "    return False\n"
            "found = []\n"
            "if 'secret' in globals():\n"
            "    found.append('globals')\n"
            "for line in open('/proc/self/maps'):\n"  # our own heap: what the zygote's memory held
            "    fields = line.split()\n"
            "    start, end = (int(x, 16) for x in fields[0].split('-'))\n"
            "    if fields[1].startswith('rw') and (len(fields) == 5 or fields[5] in ('[heap]', '[stack]')):\n"
            "        if holds(ctypes.string_at(start, end - start)):\n"
            "            found.append('own-memory')\n"
            "me = os.getpid()\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "for p in (p for p in range(1, 400) if p != me and os.path.exists(f'/proc/{p}')):\n"
            "    for path in (f'/proc/{p}/mem', f'/proc/{p}/environ'):\n"
            "        try:\n"
            "            open(path, 'rb').read(1)\n"
            "            found.append(path)\n"
            "        except OSError:\n"
            "            pass\n"
            "    if libc.ptrace(16, p, 0, 0) == 0:\n"  # PTRACE_ATTACH
            "        found.append(f'ptrace {p}')\n"
            "for root, dirs, files in os.walk('/tmp'):\n"
            "    for name in files:\n"
            "        try:\n"
            "            if holds(open(os.path.join(root, name), 'rb').read()):\n"
            "                found.append(os.path.join(root, name))\n"
            "        except OSError:\n"
            "            pass\n"
            "print(found)"
        )
        for session in (None, "attacker"):
            result = await ex.execute(attack, session_id=session)
            assert result.status is ExecutionStatus.OK, result
            assert result.stdout == "[]\n", result.stdout
        # The same probe does find the secret where it is: in the victim's own process.
        control = await ex.execute(attack, session_id="victim")
        # (in one or more of its memory regions: the zygote's 2 MiB-page advice splits its heap's regions)
        assert set(ast.literal_eval(control.stdout)) == {"globals", "own-memory"}, control
        still = await ex.execute("secret", session_id="victim")
        assert still.stdout == f"{secret}\n"  # and the victim is untouched
        await healthy(ex)
    finally:
        await ex.close()
    assert containers_of(ex.backend.pool_name) == []


# -- the pool's own recovery -----------------------------------------------------------------


async def test_a_dead_container_is_an_error_result_and_is_replaced() -> None:
    ex = make_pool(size=1, concurrency=2)
    try:
        await ex.start()
        before = containers_of(ex.backend.pool_name)
        task = asyncio.create_task(ex.execute("import time\ntime.sleep(2)"))
        session = await ex.execute("kept = 1", session_id="s")
        assert session.status is ExecutionStatus.OK
        await asyncio.sleep(0.3)
        before[0].kill()  # from outside: the engine kills the container
        result = await task
        assert result.status is ExecutionStatus.KILLED and "The sandbox died" in result.error, result
        lost = "the container died while the block ran (the container exited (exit code 137)); replaced"
        assert result.sandbox_lost == lost  # what the solver puts in the candidate's error
        await healthy(ex)
        assert ex.stats()["replaced"] == 1
        after = containers_of(ex.backend.pool_name)
        assert before[0].id not in {c.id for c in after}  # the dead one is removed
        lost = await ex.execute("'kept' in globals()", session_id="s")
        assert lost.stdout == "False\n"  # a session's state dies with its container
    finally:
        await ex.close()
    assert containers_of(ex.backend.pool_name) == []


async def test_a_hung_container_is_replaced() -> None:
    ex = make_pool(size=1, concurrency=2, timeout_s=1.0, answer_grace_s=1.0)
    try:
        await ex.start()
        container = containers_of(ex.backend.pool_name)[0]
        task = asyncio.create_task(ex.execute("import time\ntime.sleep(0.5)\n1 + 1"))
        await asyncio.sleep(0.2)
        container.pause()  # frozen under the block: it neither finishes it nor answers
        result = await task
        assert result.status is ExecutionStatus.KILLED and "stopped answering" in result.error, result
        lost = "the container stopped answering while the block ran (no result within 2 s); replaced"
        assert result.sandbox_lost == lost
        await healthy(ex)
        assert ex.stats()["replaced"] == 1
    finally:
        await ex.close()
    assert containers_of(ex.backend.pool_name) == []


async def test_leftovers_of_a_crashed_service_are_reaped_at_start() -> None:
    """A stopped container of the pool that no live process owns (here: of a version without owner labels).

    tests/test_sandbox_owners.py has the owners' cases: live, killed, on another host.
    """
    import docker

    name = f"sctir-test-{uuid.uuid4().hex[:8]}"
    client = docker.from_env(version="auto")
    labels = {LABEL_POOL: name, "sctir.sandbox": "1"}
    leftover = client.containers.run(IMAGE, ["--self-test"], labels=labels, network_mode="none", detach=True)
    assert leftover.wait(timeout=60)["StatusCode"] == 0  # stopped, as a runner does when its owner's stream ends
    ex = make_pool(size=1, pool_name=name)
    try:
        await ex.start()
        ids = [c.id for c in containers_of(name)]
        assert leftover.id not in ids and len(ids) == 1
    finally:
        await ex.close()
    assert containers_of(name) == []


async def test_a_missing_image_says_so_and_how_to_build_it() -> None:
    ex = make_pool(size=1, image="sctir-sandbox:no-such-tag")
    fix = (
        "the sandbox image sctir-sandbox:no-such-tag is not built: "
        "run `make sandbox-image` (scripts/build-sandbox-image.sh), or set SCTIR_SANDBOX_IMAGE"
    )
    with pytest.raises(SandboxUnavailable) as raised:
        await ex.start()
    assert str(raised.value) == fix
    assert not await ex.ready()
    with pytest.raises(ExecutorError) as raised:  # the executor's fault, never a block's output
        await ex.execute("1")
    assert str(raised.value) == fix
    await ex.close()


async def test_gvisor_runtime() -> None:
    require_gvisor()
    ex = make_pool(size=1, concurrency=2, limits=GVISOR_LIMITS)
    await start_gvisor_pool(ex)
    try:
        result = await ex.execute("import os\nos.uname().release, 6 * 7")
        assert result.status is ExecutionStatus.OK, result
        release, answer = result.stdout.split()
        assert answer == "42" and release != os.uname().release  # gVisor's kernel, not the host's
        assert (await ex.execute("import time\ntime.sleep(10)")).status is ExecutionStatus.TIMEOUT
        assert (await ex.execute("import ctypes\nctypes.string_at(0)")).status is ExecutionStatus.KILLED
        await healthy(ex)
    finally:
        await ex.close()
