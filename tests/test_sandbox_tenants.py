"""Tenant isolation: the blocks of one /solve request cannot reach, poison or break another's.

The pool runs the blocks of many requests ("tenants": `execute(..., tenant=request_id)`)
on few warm containers. Every test here is an attack by one tenant, written as a hostile
model would write it, against another tenant that runs ordinary code:

1. files: plant files in /tmp, $HOME, /dev/shm and a POSIX shared-memory segment, listen
   on a path-named UNIX socket in /tmp; the victim looks for them, saves its secret where
   programs keep scratch files, and the attacker then collects what it can;
2. other requests' code: a watcher polls every directory it can list for the program
   files (tmp.py) of blocks running beside it, while a victim block holds a secret;
3. code injection: plant `scipy.py`/`networkx.py` and a `tmp.py` symlink in every
   directory it can write (the work directories of pre-forked spares are on their
   sys.path); later victim blocks must import the real packages and leak nothing;
4. processes that outlive their block: a child made with clone(CLONE_PARENT) (the
   zygote's child, out of the block's session), and a session's spinning children;
5. breaking the container: chmod 0 / replace the runner's work root, 20,000 empty files,
   /tmp and /dev/shm filled through unlinked files a session keeps open;
6. a forged result: a session block writes a well-formed frame to every descriptor it
   has (the runner's result pipe among them) and then its real result.

Each test asserts that the other tenant's results are exactly what they should be (no
secret leaked, no planted module ran), and then that an unrelated tenant's `6 * 7` is
served at its normal latency (within max(10x the baseline measured when the module's
pool starts, 0.5 s): "not broken, not stalled", not a speed test).

Tenants are separated by containers (a tenant leases its own; `release` destroys it), so
the cross-tenant tests never skip. Inside a container, candidates of one request are
separated by Landlock (each execution writes only its own working directory); the
same-tenant variants test that layer and skip where the runner's hello says it has no
file confinement (`confined_files`: old kernels, gVisor). The module's pool runs on runc
and on runsc (gVisor), the latter skipped when the engine has no runsc runtime.

Every attack is bounded (seconds, 20,000 inodes, the container's limits). The "proof"
of each attack (what it achieves against a runner without tenants) is in its comments.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import statistics
import uuid
from dataclasses import dataclass

import pytest
import pytest_asyncio

from sandbox.execution import ExecutionResult, ExecutionStatus
from sandbox.executors import DockerExecutor
from tests.support.docker import (
    GVISOR_LIMITS,
    IMAGE,
    LIMITS,
    containers_of,
    make_pool,
    require_docker,
    require_gvisor,
    start_gvisor_pool,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

POOL_SIZE = 3  # an attacker, a victim and a bystander, each on a container of its own
CONCURRENCY = 3
TIMEOUT_S = 3.0
CAP = 64 * 1024
NEEDLE_PARTS = ("tenant-", "secret-")  # attack code joins them, so that it never holds the needle whole
SCOPES = ["cross-tenant", "same-tenant"]


def new_secret() -> str:
    return "".join(NEEDLE_PARTS) + uuid.uuid4().hex


# -- the attacks (shared with the scratch scripts that ran them against the pre-tenant runner) -----------


def plant_files(token: str) -> str:
    """Session block: plant `token` where another request may look, and listen on a socket in /tmp."""
    return f"""
import _posixshmem, os, socket
token = {token!r}
planted = []
for path in ('/tmp/sctir-shared.txt', os.path.expanduser('~/sctir-shared.txt'), '/dev/shm/sctir-shared.txt'):
    try:
        with open(path, 'w') as file:
            file.write(token)
        planted.append(path)
    except OSError:
        pass
try:
    fd = _posixshmem.shm_open('/sctir-shared', os.O_CREAT | os.O_RDWR, 0o666)
    os.write(fd, token.encode())
    os.close(fd)
    planted.append('shm_open')
except OSError:
    pass
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    listener.bind('/tmp/sctir-channel.sock')
    listener.listen(8)
    planted.append('/tmp/sctir-channel.sock')
except OSError:
    pass
print(planted)
"""


def victim_files(secret: str) -> str:
    """Victim block: what it finds of the attacker's files; then it keeps its own secret in $HOME/$TMPDIR."""
    return f"""
import _posixshmem, os, socket, tempfile
secret = {secret!r}
seen = []
for path in ('/tmp/sctir-shared.txt', '/dev/shm/sctir-shared.txt', os.path.expanduser('~/sctir-shared.txt')):
    try:
        with open(path) as file:
            seen.append(file.read())
    except OSError:
        pass
try:
    fd = _posixshmem.shm_open('/sctir-shared', os.O_RDONLY, 0)
    seen.append(os.read(fd, 200).decode())
    os.close(fd)
except OSError:
    pass
try:
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.settimeout(1)
    channel.connect('/tmp/sctir-channel.sock')
    channel.sendall(secret.encode())
    seen.append('connected')
except OSError:
    pass
for folder in (os.path.expanduser('~'), tempfile.gettempdir()):
    with open(os.path.join(folder, 'notes.txt'), 'w') as file:
        file.write(secret)
print(seen)
"""


SCAN = """
def scan(roots):
    import os
    needle = 'tenant-' + 'secret-'
    found = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in filenames:
                try:
                    with open(os.path.join(dirpath, name), 'rb') as file:
                        data = file.read(1 << 16).decode('utf-8', 'replace')
                except OSError:
                    continue
                at = data.find(needle)
                while at >= 0:
                    found.add(data[at : at + 46])
                    at = data.find(needle, at + 1)
    return found
"""


def collect_files() -> str:
    """Session block (the planting session): what came through the socket, and every secret it can find."""
    return (
        SCAN
        + """
import os, tempfile
loot = []
try:
    listener.settimeout(0.5)
    connection, _ = listener.accept()
    connection.settimeout(1)
    loot.append(connection.recv(200).decode())
except (OSError, NameError):
    pass
roots = {'/tmp', '/dev/shm', os.path.expanduser('~'), tempfile.gettempdir(), os.path.dirname(os.getcwd())}
loot += sorted(scan(roots))
print(loot)
"""
    )


def watcher(seconds: float) -> str:
    """Block: for `seconds`, poll every directory it can list for files that hold a secret (tmp.py of others)."""
    return (
        SCAN
        + f"""
import os, time
roots = {{'/tmp', '/dev/shm', os.path.dirname(os.getcwd()), os.path.expanduser('~')}}
loot = set()
deadline = time.monotonic() + {seconds!r}
while time.monotonic() < deadline:
    loot |= scan(roots)
    time.sleep(0.002)
print(sorted(loot))
"""
    )


def victim_holding(secret: str) -> str:
    return f"secret = {secret!r}\nimport time\ntime.sleep(1)\nlen(secret)"


INJECTED = "sctir-" + "injected"  # what a planted module prints (the attack's code never holds it whole)
PAYLOAD = """import sys
print('sctir-' + 'injected', __name__)
try:
    with open('/tmp/sctir-loot.txt', 'a') as file:
        file.write(repr(getattr(sys.modules.get('__main__'), 'secret', None)) + '\\n')
except OSError:
    pass
"""


def plant_modules(seconds: float) -> str:
    """Session block: scipy.py/networkx.py and a tmp.py symlink (-> /tmp/sctir-stolen-*) in every directory it
    can write, now and, from a child the session keeps, in every new one (a spare's) for `seconds`."""
    return f"""
import os, sys, time
payload = {PAYLOAD!r}
own = os.getcwd()
done = set()
def targets():
    dirs = set()
    for root in {{'/tmp', '/dev/shm', os.path.expanduser('~'), os.path.dirname(own)}}:
        for dirpath, dirnames, filenames in os.walk(root):
            dirs.add(dirpath)
    dirs |= {{entry for entry in sys.path if entry and os.path.isdir(entry) and os.access(entry, os.W_OK)}}
    return dirs - {{own}}
def plant():
    for folder in targets() - done:
        done.add(folder)
        for name in ('scipy.py', 'networkx.py'):
            try:
                with open(os.path.join(folder, name), 'w') as file:
                    file.write(payload)
            except OSError:
                pass
        try:
            os.symlink('/tmp/sctir-stolen-' + os.path.basename(folder), os.path.join(folder, 'tmp.py'))
        except OSError:
            pass
plant()
print(sorted(done))
if os.fork() == 0:
    deadline = time.monotonic() + {seconds!r}
    while time.monotonic() < deadline:
        plant()
        time.sleep(0.005)
    os._exit(0)
"""


def victim_imports(secret: str) -> str:
    return (
        f"secret = {secret!r}\n"
        "import scipy, networkx\n"
        "print(scipy.__name__, networkx.__name__, 'packages' in scipy.__file__ and 'packages' in networkx.__file__)"
    )


def collect_stolen() -> str:
    """Block: what the planted symlinks and modules brought in."""
    return (
        SCAN
        + """
import os
print(sorted(scan({'/tmp', '/dev/shm', os.path.expanduser('~'), os.path.dirname(os.getcwd())})))
"""
    )


def clone_parent_child(lifetime: float) -> str:
    """Block: a child of the zygote (clone with CLONE_PARENT), out of the block's session, named sctir-stray."""
    return f"""
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
pid = libc.syscall(56, 0x8000 | 17, 0, 0, 0, 0)  # clone(CLONE_PARENT | SIGCHLD): our parent's child
if pid == 0:
    try:
        os.setsid()  # out of the block's process group and session
    except OSError:
        pass
    libc.prctl(15, b'sctir-stray', 0, 0, 0)  # PR_SET_NAME
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    deadline = time.monotonic() + {lifetime!r}
    while time.monotonic() < deadline:
        try:
            with open('/tmp/sctir-stray.txt', 'w') as file:
                file.write(str(time.time()))
        except OSError:
            pass
        time.sleep(0.2)
    os._exit(0)
print('child started' if pid > 0 else f'clone failed: {{ctypes.get_errno()}}')
"""


def spinning_children(lifetime: float) -> str:
    """Session block: two children that burn CPU (named sctir-spin) and the block returns at once."""
    return f"""
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
for _ in range(2):
    if os.fork() == 0:
        libc.prctl(15, b'sctir-spin', 0, 0, 0)
        deadline = time.monotonic() + {lifetime!r}
        while time.monotonic() < deadline:
            pass
        os._exit(0)
print('spinning')
"""


BREAKERS = {
    # the runner's work root (the parent of our working directory): unusable for every later spare
    "chmod-workroot": """
import os
root = os.path.dirname(os.getcwd())
done = []
for path in [root] + [os.path.join(root, name) for name in os.listdir(root)]:
    if path != os.getcwd():
        try:
            os.chmod(path, 0)
            done.append(path)
        except OSError:
            pass
print(len(done) > 0)
""",
    "replace-workroot": """
import os, shutil
root = os.path.dirname(os.getcwd())
shutil.rmtree(root, ignore_errors=True)
try:
    os.rename(root, root + '-gone')
except OSError:
    pass
try:
    with open(root, 'w') as file:  # a file where the runner wants its directory
        file.write('x')
except OSError:
    pass
print(os.path.isfile(root))
""",
    # empty files cost no blocks (a purge by bytes never sees them), each a kernel inode
    "inodes": """
import os, time
made = 0
deadline = time.monotonic() + 2.0
for root in ('/tmp', '/dev/shm', os.path.expanduser('~'), '.'):
    folder = os.path.join(root, 'sctir-inodes')
    try:
        os.makedirs(folder, exist_ok=True)
        while made < 20000 and time.monotonic() < deadline:
            os.close(os.open(os.path.join(folder, str(made)), os.O_CREAT | os.O_WRONLY, 0o600))
            made += 1
        break
    except OSError:
        continue
print(made)
""",
    # filled through files unlinked at once and held open by a session: no purge can find them
    "fill-tmp-and-shm": """
import os
held = []
for root in ('/tmp', '/dev/shm', os.path.expanduser('~'), '.'):
    try:
        fd = os.open(os.path.join(root, 'sctir-fill'), os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError:
        continue
    os.unlink(os.path.join(root, 'sctir-fill'))
    held.append(fd)
    chunk = b'x' * (1 << 20)
    try:
        for _ in range(256):
            os.write(fd, chunk)
    except OSError:
        pass
print(len(held))
""",
}
SESSION_BREAKERS = {"fill-tmp-and-shm"}

VICTIM_WRITES = """
import os
data = os.urandom(1 << 20) * 4
with open('victim.bin', 'wb') as file:
    file.write(data)
for i in range(100):
    with open(f'v{i}', 'w') as file:
        file.write(str(i))
with open('victim.bin', 'rb') as file:
    same = file.read() == data
print(same, len([name for name in os.listdir('.') if name.startswith('v') and name[1:].isdigit()]))
"""


def forge_frame(size: int) -> str:
    """Session block: a well-formed result frame (`size` characters) on every descriptor it holds; then its own."""
    return f"""
import json, os, struct, time
body = json.dumps({{'ok': True, 'stdout': 'F' * {size}, 'error': '', 'truncated': False}}).encode()
frame = struct.pack('>I', len(body)) + body
for name in os.listdir('/proc/self/fd'):
    if int(name) > 2:
        try:
            os.write(int(name), frame)
        except OSError:
            pass
time.sleep(0.5)
print('real-1')
"""


# -- the pool and its baseline --------------------------------------------------------------------------


@dataclass
class Tenants:
    ex: DockerExecutor
    runtime: str
    baseline_s: float

    def limit_s(self) -> float:
        return max(10 * self.baseline_s, 0.5)


@pytest.fixture(scope="module", autouse=True)
def _docker_available() -> None:
    require_docker(IMAGE)


async def release(ex: DockerExecutor, *tenants: str) -> None:
    for tenant in dict.fromkeys(tenants):
        await ex.release(tenant)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["runc", "runsc"])
async def tenants(request):
    runtime = request.param
    if runtime == "runsc":
        require_gvisor()
    limits = GVISOR_LIMITS if runtime == "runsc" else LIMITS
    ex = make_pool(size=POOL_SIZE, concurrency=CONCURRENCY, timeout_s=TIMEOUT_S, limits=limits)
    await (start_gvisor_pool(ex) if runtime == "runsc" else ex.start())
    try:
        await ex.warmed()
        tenant = f"req-baseline-{uuid.uuid4().hex[:8]}"
        durations = []
        for _ in range(6):
            result = await ex.execute("6 * 7", tenant=tenant)
            assert (result.status, result.stdout) == (ExecutionStatus.OK, "42\n"), result
            durations.append(result.duration_s)
        await release(ex, tenant)
        await ex.warmed()
        yield Tenants(ex, runtime, statistics.median(durations[1:]))
        await ex.warmed()  # no container is half-started when the pool closes
    finally:
        await ex.close()
    assert containers_of(ex.backend.pool_name) == [], "a container of the pool was left behind"


@contextlib.asynccontextmanager
async def leased(t: Tenants, scope: str = "cross-tenant"):
    """(attacker, victim) tenant ids for one test: the same request in the same-tenant scope; released at the end."""
    await t.ex.warmed()  # released containers are replaced in the background
    if scope == "same-tenant":
        hellos = [slot.hello for slot in getattr(t.ex, "slots", []) if slot.alive]
        if not any(hello.get("confined_files") for hello in hellos):
            pytest.skip(f"no Landlock file confinement in the runner ({t.runtime}): candidates share files")
    attacker = f"req-attacker-{uuid.uuid4().hex[:8]}"
    victim = attacker if scope == "same-tenant" else f"req-victim-{uuid.uuid4().hex[:8]}"
    try:
        yield attacker, victim
    finally:
        await release(t.ex, attacker, victim)


async def bystander_is_served(t: Tenants) -> None:
    """An unrelated request's block succeeds, at its normal latency, after (and beside) the attack."""
    tenant = f"req-bystander-{uuid.uuid4().hex[:8]}"
    try:
        result = await t.ex.execute("6 * 7", tenant=tenant)
    finally:
        await release(t.ex, tenant)
    assert (result.status, result.stdout) == (ExecutionStatus.OK, "42\n"), result
    assert result.duration_s < t.limit_s(), (result.duration_s, t.baseline_s)


def ok(result: ExecutionResult, stdout: str) -> None:
    assert (result.status, result.stdout, result.error) == (ExecutionStatus.OK, stdout, ""), result


PROCESS_PROBE = """
import os
names = []
try:
    pids = [pid for pid in os.listdir('/proc') if pid.isdigit()]
except OSError:  # Landlock: /proc is out of reach
    pids = []
for pid in pids:
    try:
        with open(f'/proc/{pid}/comm') as file:
            names.append(file.read().strip())
    except OSError:
        pass
print(sorted(name for name in names if name.startswith('sctir-')))
"""


async def stray_processes(ex: DockerExecutor, prefix: str, tenant: str | None = None) -> list[str]:
    """Processes named by an attack: from the host (`docker top`: runc; under runsc it shows the sandbox's
    own processes, not the container's) and, with `tenant`, from inside its container (/proc, where no
    Landlock closes it: runsc)."""
    names = []
    for container in containers_of(ex.backend.pool_name):
        with contextlib.suppress(Exception):  # a container being removed
            top = await asyncio.to_thread(container.top, ps_args="-eo pid,comm")
            column = top["Titles"].index("COMMAND")
            names += [row[column] for row in top["Processes"] if row[column].startswith(prefix)]
    if tenant is not None:
        probe = await ex.execute(PROCESS_PROBE, tenant=tenant)
        if probe.status is ExecutionStatus.OK:
            names += [name for name in ast.literal_eval(probe.stdout) if name.startswith(prefix)]
    return sorted(names)


# -- 1. files: /tmp, $HOME, /dev/shm, POSIX shared memory, a UNIX socket in /tmp --------------------------


@pytest.mark.parametrize("scope", SCOPES)
async def test_files_are_not_shared(tenants: Tenants, scope: str) -> None:
    ex, token, secret = tenants.ex, new_secret(), new_secret()
    async with leased(tenants, scope) as (attacker, victim):
        await ex.execute(plant_files(token), session_id=f"{attacker}/attacker", tenant=attacker)
        # Before: the victim read the planted token from each path and connected to the attacker's socket.
        ok(await ex.execute(victim_files(secret), tenant=victim), "[]\n")
        ok(await ex.execute(victim_files(secret), session_id=f"{victim}/victim", tenant=victim), "[]\n")
        # Before: the attacker got the secret through its socket and from /tmp/notes.txt ($HOME = /tmp).
        loot = await ex.execute(collect_files(), session_id=f"{attacker}/attacker", tenant=attacker)
        assert secret not in loot.stdout + loot.error, loot
        assert token not in (await ex.execute("print('clean')", tenant=victim)).stdout
        await bystander_is_served(tenants)


# -- 2. other requests' code and data: a watcher of the work directories ---------------------------------


@pytest.mark.parametrize("scope", SCOPES)
async def test_program_files_of_others_are_out_of_sight(tenants: Tenants, scope: str) -> None:
    ex, secret = tenants.ex, new_secret()
    async with leased(tenants, scope) as (attacker, victim):
        watching = asyncio.create_task(ex.execute(watcher(2.0), tenant=attacker))
        await asyncio.sleep(0.3)
        # Before: the watcher printed the victim's tmp.py line `secret = '...'` while the victim slept.
        held = await ex.execute(victim_holding(secret), tenant=victim)
        watched = await watching
        ok(held, f"{len(secret)}\n")
        assert watched.status is ExecutionStatus.OK, watched
        assert secret not in watched.stdout, watched.stdout
        await bystander_is_served(tenants)


# -- 3. code injection through the spares' work directories ----------------------------------------------


@pytest.mark.parametrize("scope", SCOPES)
async def test_planted_modules_and_symlinks_never_run(tenants: Tenants, scope: str) -> None:
    ex, secret = tenants.ex, new_secret()
    async with leased(tenants, scope) as (attacker, victim):
        await ex.execute(plant_modules(15.0), session_id=f"{attacker}/planter", tenant=attacker)
        # Before: each spare that was waiting when the attack ran imported the planted scipy.py
        # (stdout began with "sctir-injected scipy"), wrote its secret to /tmp/sctir-loot.txt and its
        # program through the tmp.py symlink to /tmp/sctir-stolen-w<pid>.
        expected = "scipy networkx True\n"
        for _ in range(CONCURRENCY + 1):
            ok(await ex.execute(victim_imports(secret), tenant=victim), expected)
        for session in ("victim-1", "victim-2"):
            ok(await ex.execute(victim_imports(secret), session_id=f"{victim}/{session}", tenant=victim), expected)
        loot = await ex.execute(collect_stolen(), tenant=attacker)
        assert secret not in loot.stdout + loot.error, loot
        assert INJECTED not in loot.stdout
        await bystander_is_served(tenants)


# -- 4. processes that outlive their block ----------------------------------------------------------------


async def test_a_clone_parent_child_does_not_outlive_its_block(tenants: Tenants) -> None:
    ex, secret = tenants.ex, new_secret()
    async with leased(tenants) as (attacker, victim):
        await ex.execute(clone_parent_child(20.0), tenant=attacker)
        ok(await ex.execute(victim_holding(secret), tenant=victim), f"{len(secret)}\n")
        await asyncio.sleep(2.0)
        # Before: the child (a child of the zygote, so "not a stray") was alive and writing 10 s later.
        assert await stray_processes(ex, "sctir-stray", attacker) == []
        ok(await ex.execute(victim_holding(secret), tenant=victim), f"{len(secret)}\n")
        await bystander_is_served(tenants)


async def test_spinning_session_children_do_not_starve_other_requests(tenants: Tenants) -> None:
    ex = tenants.ex
    async with leased(tenants) as (attacker, victim):
        await ex.execute(spinning_children(20.0), session_id=f"{attacker}/spinner", tenant=attacker)
        await asyncio.sleep(0.5)
        # Before: both spinners were alive 10 s later (no CPU limit in a session), in every request's container.
        for _ in range(3):
            result = await ex.execute("6 * 7", tenant=victim)
            ok(result, "42\n")
            assert result.duration_s < tenants.limit_s(), (result.duration_s, tenants.baseline_s)
        ok(await ex.execute("sum(range(10))", session_id=f"{victim}/victim", tenant=victim), "45\n")
        await bystander_is_served(tenants)
    await asyncio.sleep(1.0)
    assert await stray_processes(ex, "sctir-spin") == []  # released: nothing of it is left


# -- 5. breaking the container for everyone -------------------------------------------------------------


@pytest.mark.parametrize("attack", sorted(BREAKERS))
async def test_one_request_cannot_break_the_container_for_others(tenants: Tenants, attack: str) -> None:
    ex = tenants.ex
    async with leased(tenants) as (attacker, victim):
        session = f"{attacker}/breaker" if attack in SESSION_BREAKERS else None
        await ex.execute(BREAKERS[attack], session_id=session, tenant=attacker)
        # Before: "Exited with code 70." for every block on a new spare (chmod, replace), or
        # "No space left on device" (fill) for the victim's 4 MB.
        for _ in range(CONCURRENCY + 2):
            ok(await ex.execute(VICTIM_WRITES, tenant=victim), "True 100\n")
        ok(await ex.execute(VICTIM_WRITES, session_id=f"{victim}/victim", tenant=victim), "True 100\n")
        await bystander_is_served(tenants)


async def test_a_broken_workroot_does_not_break_the_same_request(tenants: Tenants) -> None:
    """Candidates of one request share a container: the runner must notice and repair its work root."""
    ex = tenants.ex
    async with leased(tenants, "same-tenant") as (attacker, _):
        for attack in ("chmod-workroot", "replace-workroot"):
            await ex.execute(BREAKERS[attack], tenant=attacker)
            for _ in range(CONCURRENCY + 2):
                ok(await ex.execute(VICTIM_WRITES, tenant=attacker), "True 100\n")
        await bystander_is_served(tenants)


# -- 6. a forged result frame ------------------------------------------------------------------------------


async def test_a_forged_result_frame_is_not_accepted(tenants: Tenants) -> None:
    ex = tenants.ex
    async with leased(tenants) as (attacker, victim):
        ok(await ex.execute("kept = 1", session_id=f"{victim}/victim", tenant=victim), "")
        forged, beside = await asyncio.gather(
            ex.execute(forge_frame(210_000), session_id=f"{attacker}/forger", tenant=attacker),
            ex.execute("import time\ntime.sleep(0.3)\nkept + 41", session_id=f"{victim}/victim", tenant=victim),
        )
        ok(beside, "42\n")
        # Before: OK with 210,000 "F"s (past the 64 KiB cap); the real "real-1" came as the NEXT result.
        accepted = "F" * 1000 in forged.stdout or len(forged.stdout) > CAP
        assert not accepted, (forged.status, len(forged.stdout), forged.stdout[:80])
        if forged.status is ExecutionStatus.OK:
            assert forged.stdout == "real-1\n", forged
        following = await ex.execute("print('real-2')", session_id=f"{attacker}/forger", tenant=attacker)
        ok(following, "real-2\n")  # its own result, not the one before
        ok(await ex.execute("kept + 1", session_id=f"{victim}/victim", tenant=victim), "2\n")
        await bystander_is_served(tenants)
