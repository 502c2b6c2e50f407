#!/usr/bin/env python3
"""The sandbox runner: executes model-written Python blocks in milliseconds. Stdlib only.

It runs inside the sandbox container as its entry process (PID 1), or on the
host as a plain subprocess for the `local` executor, and serves execution
requests over its stdin/stdout with a framed protocol (below).

Processes (all the same unprivileged user):

    hub (this process: PID 1 in a container)
     |-- zygote (`runner.py --zygote`, spawned by exec: a clean interpreter)
     |     imports numpy/sympy/... once, warms them up, gc.freeze()s, then
     |     only ever forks: it never sees a request, a code block or an output
           |-- spare, spare, ... (forked ahead of demand, each waiting on its
                 job pipe; the zygote reports their exit status to the hub)

An execution hands the block to a waiting spare, which runs it at once: the
fork, the imports and the per-process set-up are all off the critical path.
`last_block` spares run one block as the reference's `python3 tmp.py` would (the
preamble, auto-print, stdout/stderr on pipes, the reference's trimmed traceback,
the exit status) and exit; a `session` spare keeps its namespace and serves
the candidate's later blocks. Since spares come from the zygote, whose memory
never held request data, no candidate can find another's code or output in
its own memory; spares are not dumpable, so they cannot read each other's
memory (/proc/PID/mem, ptrace) or the hub's environment either; and where the
kernel has Landlock, each spare is in a domain of its own (sandbox/confine.py):
with --confine it writes only its own randomly named directory (no directory
it can write is on sys.path; its program file is created anew, never through
a link) and, with Landlock's scopes (Linux 6.12+), it can signal (and reach
abstract UNIX sockets of) only itself and its own children: not another
candidate's block, the zygote or the hub.

Hardening of the processes themselves:
- In a container the hub is PID 1, which the kernel protects from every
  signal it has no handler for (SIGKILL included, from inside); it handles
  only SIGCHLD. Without Landlock's signal scope the zygote is killable
  (`os.kill(os.getppid(), 9)` from a block): the hub adopts its spares and respawns it, by exec, never by
  forking the hub, whose memory holds request data. A job handed to a spare
  that died before taking it (it acknowledges every job) goes to another.
  (Spares were once adopted by the hub through a double fork, which made the
  naive kill hit PID 1; measured, the extra fork and exit cost ~4 ms of CPU
  per execution, so the zygote is their parent and is restarted instead.)
- Every execution runs in its own session and process group; when it ends the
  group is killed, and orphans the hub adopts (it is PID 1, or a child
  subreaper on a host) are swept; in a container, any process that is not the
  hub, the zygote, a spare the zygote reported forking, or in the session of a
  live execution is killed (a fork bomb whose children call setsid, a child
  made with clone(CLONE_PARENT) included), so nothing a block starts outlives
  it; a session's other processes are killed after each of its blocks.
- Fork and exit are dear (~1-3 ms of CPU each for a copy of a 70 MB zygote)
  and, done next to a running block or a result in flight, delay it by
  milliseconds; so the hub makes spares between blocks and lets a finished
  block's process exit `--linger` seconds after its result is sent.
- Protocol fds are private: the hub moves its stdin/stdout away from fds 0/1,
  and a spare's fds 0/1/2 are /dev/null and its own output pipes, so user
  code writing to fd 1 cannot forge a response. A block can write to its own
  result pipe, but a result must carry its job's random token and come once:
  a forged one is a protocol violation that kills the process (and resets the
  session), so no result is ever taken for another job.
- After every result the hub checks its work root and scratch space, repairs
  what it can and otherwise tells the host it is "unhealthy" (replace me).
- Spares ask the kernel's OOM killer to pick them first (oom_score_adj 1000),
  so an allocation past the container's memory limit kills that execution,
  not the hub; a CPU-time rlimit backs up the wall-clock timeout (a session's
  per block, within a hard limit for its life).

Protocol: each message is a 4-byte big-endian length and that many bytes of
UTF-8 JSON (surrogates passed through). Requests (host -> runner):

    {"op": "exec", "id": 1, "code": "...", "session": null | "key",
     "timeout": 5.0, "cap": 65536}
    {"op": "cancel", "id": 1}                       # kill exec 1; its result says so
    {"op": "close_session", "id": 2, "session": "key"}
    {"op": "ping", "id": 3}
    {"op": "shutdown", "id": 4}

Responses (runner -> host):

    {"type": "hello", "ready": true, "pid": ..., "python": ..., "preloaded": [...], ...}
    {"type": "result", "id": 1, "status": "ok|error|timeout|killed",
     "stdout": "...", "error": "...", "duration": 0.0012}
    {"type": "unhealthy", "reason": "..."}          # the host should replace this runner
    {"type": "closed", "id": 2}
    {"type": "pong", "id": 3, ...counters...}
    {"type": "bye", "id": 4}

EOF on stdin has the effect of "shutdown".
"""

from __future__ import annotations

import _signal  # the C functions, without the signal module's enum conversions (page faults in a spare)
import argparse
import atexit
import builtins
import fcntl
import gc
import heapq
import itertools
import json
import linecache
import os
import resource
import selectors
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import confine  # noqa: E402  (sandbox/confine.py; next to this file in the image too)
import program  # noqa: E402  (sandbox/program.py)

PROTOCOL_VERSION = 1
SIGCHLD, SIGIO = int(signal.SIGCHLD), int(signal.SIGIO)
F_DUPFD = fcntl.F_DUPFD
FOUR_FDS = struct.Struct("4i")
HEADER = struct.Struct(">I")
MAX_REQUEST_BYTES = 64 << 20
READ_CHUNK = 1 << 16
RESET_NOTE = "The session state was reset."
MAX_REQUEUES = 3
# Modules the zygote imports when they are installed; numpy and sympy are required (the preamble).
# Every preloaded module makes each fork and exit dearer (page tables: ~1 ms per 35 MB), so the default is
# what the preamble imports plus the small stdlib modules competition code uses; scipy or networkx load
# on use (--preload adds them).
DEFAULT_PRELOAD = "numpy,sympy,mpmath,fractions,itertools,functools,collections,decimal,statistics,cmath,random,re"
WARMUP = """
x, y = sp.symbols('x y')
sp.solve(x**2 - 5*x + 6, x)
sp.simplify(sp.sin(x)**2 + sp.cos(x)**2)
sp.factorint(360); sp.isprime(97); sp.nsimplify(0.5); sp.Rational(1, 3) + 1
sp.expand((x + y)**3); sp.factor(x**2 - 1); sp.integrate(x**2, (x, 0, 1)); sp.diff(sp.exp(x), x)
sp.N(sp.pi, 20); sp.sqrt(8); sp.binomial(10, 3); sp.Matrix([[1, 2], [3, 4]]).det()
sp.summation(x, (x, 1, 10)); sp.latex(x**2); str(sp.Eq(x, 1)); sp.simplify(sp.Rational(2, 4))
np.arange(10).sum(); np.linalg.det(np.eye(3)); np.array([1.5]).round(); math.gcd(12, 18)
"""


def _seconds(value: float) -> str:
    """5.0 -> "5", 1.5 -> "1.5" (the reference prints its int timeout)."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _frame(data: bytes) -> bytes:
    return HEADER.pack(len(data)) + data


def encode(message: dict) -> bytes:
    return _frame(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def decode(data: bytes) -> dict:
    return json.loads(data.decode("utf-8", "surrogatepass"))


ACK = encode({"ack": 1})


_LIBC: list = []  # [prctl, syscall]: made once (the zygote's, inherited), not in every spare


def _libc() -> list:
    """ctypes' prctl and syscall of libc, or [] without ctypes.

    Made once: a CDLL builds a class and each function pointer an object, which in a spare
    costs ~100 copy-on-write page faults (~0.2 ms of CPU) per execution.
    """
    if not _LIBC:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            prctl, syscall = libc.prctl, libc.syscall
            prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
            syscall.restype = ctypes.c_long
            _LIBC.extend((prctl, syscall))
        except Exception:
            pass
    return _LIBC


def _prctl(option: int, value: int) -> bool:
    try:
        prctl, _ = _libc()
        return prctl(option, value, 0, 0, 0) == 0
    except Exception:
        return False


PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36


def _harden_self() -> None:
    """Not dumpable (no ptrace, /proc/PID/{mem,environ,fd} closed to same-uid processes), no core files."""
    _prctl(PR_SET_DUMPABLE, 0)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass


MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25
HUGE_PAGE = 2 << 20


def _huge_pages() -> int:
    """Back the zygote's private memory with 2 MiB pages, where the kernel can; returns how many.

    fork() copies one page-table entry per 4 KiB page, so a fork of the ~60 MB zygote costs
    ~15,000 entries (measured: 1.3 ms, the largest single cost of an execution); a 2 MiB page
    is one entry (a child's first write to it splits only the child's copy). Done once, after
    the imports. MADV_COLLAPSE needs Linux 6.1; elsewhere (or with THP disabled) it does nothing.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as file:
            lines = file.read().splitlines()
    except (OSError, AttributeError):
        return 0
    made = 0
    for line in lines:
        fields = line.split()
        if not fields[1].startswith("rw-p") or (len(fields) > 5 and fields[5] != "[heap]"):
            continue  # private anonymous memory and the brk heap only
        low, high = (int(x, 16) for x in fields[0].split("-"))
        start, end = (low + HUGE_PAGE - 1) & -HUGE_PAGE, high & -HUGE_PAGE
        if end > start:
            libc.madvise(start, end - start, MADV_HUGEPAGE)
            if libc.madvise(start, end - start, MADV_COLLAPSE) == 0:
                made += (end - start) // HUGE_PAGE
    return made


def _remove_workdir(workdir: str) -> None:
    """Remove an execution's working directory: usually just tmp.py, so try that first (no shutil walk)."""
    try:
        os.unlink(os.path.join(workdir, "tmp.py"))
    except OSError:
        pass
    try:
        os.rmdir(workdir)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)


def _log(message: str) -> None:
    try:
        os.write(2, f"sctir-runner[{os.getpid()}]: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _read_exact(fd: int, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


JOB = struct.Struct(">?dqQ")  # session, timeout, cap, token; then the code (UTF-8, surrogates passed through)


def _job_frame(session: bool, timeout: float, cap: int, token: int, code: str) -> bytes:
    """A job for a spare or a session (the hub's side of _read_job): no JSON, for the spare's sake.

    `token` is fresh for every job and its result must carry it: a result that a block forges on
    the result pipe names no job that is not its own, and one that comes after its job's result
    (or for a job not yet sent) ends the session (see Hub._on_message).
    """
    return _frame(JOB.pack(session, timeout, cap, token) + code.encode("utf-8", "surrogatepass"))


def _read_job(fd: int) -> dict | None:
    """The next job on the job pipe, or None at EOF (~30 page faults fewer than json in a spare)."""
    header = _read_exact(fd, HEADER.size)
    if header is None:
        return None
    body = _read_exact(fd, HEADER.unpack(header)[0])
    if body is None or len(body) < JOB.size:
        return None
    session, timeout, cap, token = JOB.unpack_from(body)
    code = body[JOB.size :].decode("utf-8", "surrogatepass")
    return {"mode": "session" if session else "block", "code": code, "cap": cap, "timeout": timeout, "token": token}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _oom_kills() -> int:
    """The OOM-kill count of this process's memory cgroup (v2, then v1), or -1."""
    for path, key in (
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ):
        try:
            with open(path) as file:
                for line in file:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except (OSError, ValueError):
            continue
    return -1


def _fullness(root: str) -> float:
    """How full a file system is, in blocks or in inodes, whichever is fuller (0 if unknown)."""
    try:
        fs = os.statvfs(root)
    except OSError:
        return 0.0
    blocks = 1 - fs.f_bavail / fs.f_blocks if fs.f_blocks else 0.0
    inodes = 1 - fs.f_favail / fs.f_files if fs.f_files else 0.0
    return max(blocks, inodes)


def _processes():
    """(pid, ppid, sid, state) of every process in sight, from /proc/PID/stat."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:  # os.open, not open(): 3 system calls instead of 7
            fd = os.open(f"/proc/{entry}/stat", os.O_RDONLY | os.O_CLOEXEC)
            try:
                fields = os.read(fd, 4096).rsplit(b")", 1)[1].split()
            finally:
                os.close(fd)
        except (OSError, IndexError):
            continue
        yield int(entry), int(fields[1]), int(fields[3]), fields[0]


# ---------------------------------------------------------------------------
# Zygote and spares (the code that runs model code)


def zygote_main(opts: argparse.Namespace) -> None:
    ctrl = socket.socket(fileno=3)  # SOCK_SEQPACKET to the hub
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != opts.hub_pid:  # the hub died before the line above
        os._exit(0)
    _harden_self()
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")  # no BLAS thread pools: they would not survive a fork
    started = time.monotonic()
    preloaded: list[str] = []
    try:
        import importlib

        for name in ("numpy", "sympy"):
            importlib.import_module(name)
        for name in filter(None, opts.preload.split(",")):
            try:
                importlib.import_module(name)
                preloaded.append(name)
            except ImportError:
                pass
        namespace: dict = {}
        exec(compile(program.PREAMBLE, "<preamble>", "exec", dont_inherit=True), namespace)
        if opts.warmup:
            exec(compile(WARMUP, "<warmup>", "exec", dont_inherit=True), namespace)
        del namespace
        _reseed()  # the first numpy seeding costs milliseconds (lazy set-up): pay it here, once
    except BaseException as error:  # reported to the hub, which reports it to the host
        ctrl.send(json.dumps({"ready": False, "error": f"{type(error).__name__}: {error}"}).encode())
        os._exit(1)
    opts.confinement = confine.Confinement(files=opts.confine)  # built once; every spare enters it
    versions = {
        name: getattr(sys.modules[name], "__version__", "")
        for name in ("numpy", "sympy", "scipy")
        if name in sys.modules
    }
    opts.max_fd = _max_fd()
    _mt_state()
    modules_main = sys.modules["__main__"]
    _MAIN.append(_fresh_main("tmp.py"))
    sys.modules["__main__"] = modules_main
    try:
        _block_stdio()
    except OSError:
        _STDIO.clear()
    gc.collect()
    gc.freeze()  # children's collections then never touch (and copy) the zygote's pages
    huge_pages = _huge_pages()
    ready = {
        "ready": True,
        "import_s": round(time.monotonic() - started, 3),
        "preloaded": preloaded,
        "huge_pages": huge_pages,
        "versions": versions,
        **opts.confinement.describe(),
        # A module search path entry that a block could write to would let it plant code for later blocks.
        "writable_path": [path for path in sys.path if os.path.isdir(path) and os.access(path, os.W_OK)],
    }
    # From here on the zygote only forks, and every page it writes after a fork is a copy-on-write
    # fault that also splits the 2 MiB page around it for good (making every later fork dearer):
    # so its loop is as small as it can be. A spare makes its own pipes and announces itself to
    # the hub. The loop waits in sigwaitinfo() for SIGCHLD (a spare exited) or SIGIO (a request
    # on the hub socket), both blocked (pending until taken, none lost): no Python signal
    # handler, no select() lists, no wakeup pipe. Spares restore the signal mask.
    events = {SIGCHLD, SIGIO}
    opts.sigmask = _signal.pthread_sigmask(_signal.SIG_BLOCK, events)
    fd = ctrl.fileno()
    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    ctrl.send(json.dumps(ready).encode())
    while True:
        _report_exits(ctrl)
        while True:
            try:
                message = ctrl.recv(64, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                os._exit(0)
            if not message:
                os._exit(0)  # the hub is gone
            if message == b"spawn":
                _spawn(ctrl, opts)
        _signal.sigwaitinfo(events)


def _report_exits(ctrl: socket.socket) -> None:
    """Reap the spares (the zygote's children) and tell the hub their wait status."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == 0:
            return
        try:
            ctrl.send(b'{"exit":%d,"status":%d}' % (pid, status))  # no json: the zygote's loop touches little
        except OSError:
            os._exit(0)


def _spawn(ctrl: socket.socket, opts: argparse.Namespace) -> None:
    """Fork one spare (which announces itself to the hub)."""
    try:
        pid = os.fork()
    except OSError as error:
        ctrl.send(json.dumps({"error": f"fork: {error}"}).encode())
        return
    if pid == 0:
        _spare_main(ctrl, opts)  # never returns
    # The hub learns every pid the zygote forks, before the child can do anything: any other child
    # of the zygote (e.g. one a block made with clone(CLONE_PARENT)) is then a stray to be killed.
    ctrl.send(b'{"forked":%d}' % pid)


def _spare_main(ctrl: socket.socket, opts: argparse.Namespace) -> None:
    """A spare: set up everything ahead of demand, then wait for one job. Never returns.

    It makes its working directory (a random name, so that no block can find, pre-create or
    plant in the directory of another), then sends the hub its pid, that name and the hub's ends
    of its four pipes (job, result, stdout, stderr), over the zygote's socket; one that dies
    before that is a failed spawn to the hub. It confines itself (sandbox/confine.py) before it
    takes a job: a block can write nothing but its own directory.
    """
    # Modules are imported at the top, not here: an import statement in a spare, even of a module
    # the zygote has, costs ~50 copy-on-write page faults (the first time; measured for atexit).
    try:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, opts.sigmask)  # the zygote blocks SIGCHLD and SIGIO
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        name = os.urandom(12).hex()
        workdir = os.path.join(opts.workroot, name)
        os.mkdir(workdir, 0o700)  # fails if it exists: nobody can have prepared it
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, FOUR_FDS.pack(job_w, res_r, out_r, err_r))]
        ctrl.sendmsg([b'{"pid":%d,"dir":"%s"}' % (os.getpid(), name.encode())], rights)  # socket.send_fds
        ctrl.detach()  # the socket object must not close a reused fd number later
        os.setsid()  # own session and process group: killed as a whole
        devnull = os.open(os.devnull, os.O_RDWR)
        # Out of the way first (fds >= 64), then into place; 3 (jobs) and 4 (results): close-on-exec.
        high = fcntl.fcntl(devnull, F_DUPFD, 64), fcntl.fcntl(out_w, F_DUPFD, 64), fcntl.fcntl(err_w, F_DUPFD, 64)
        job_r, res_w = fcntl.fcntl(job_r, F_DUPFD, 64), fcntl.fcntl(res_w, F_DUPFD, 64)
        os.dup2(high[0], 0)
        os.dup2(high[1], 1)
        os.dup2(high[2], 2)
        os.dup2(job_r, 3, inheritable=False)
        os.dup2(res_w, 4, inheritable=False)
        if not opts.confinement.enter(workdir):  # before the close: it uses the zygote's O_PATH descriptors
            os._exit(71)  # the zygote found Landlock available: never run a block without it
        os.closerange(5, opts.max_fd)  # every other fd: the hub socket, the hub's ends of the pipes, those
        try:  # out of memory: kill an execution, never the hub or the zygote
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            try:
                os.write(fd, b"1000")
            finally:
                os.close(fd)
        except OSError:
            pass
        os.chdir(workdir)
        for variable in ("HOME", "TMPDIR", "MPLCONFIGDIR"):  # scratch space: the only place it can write
            os.environ[variable] = workdir
        tempfile.tempdir = workdir
        _reseed()
        # Everything that does not depend on the code, done before it arrives: a fresh __main__,
        # the interpreter's stdio on our pipes, and one pass through the parse/compile machinery
        # (its pages are then this process's own, not copy-on-write faults on the critical path).
        filename = workdir + "/tmp.py"
        if _MAIN:  # made by the zygote, never used there
            main = _MAIN[0]
            main.__dict__["__file__"] = filename
            sys.modules["__main__"] = main
        else:
            main = _fresh_main(filename)
        sys.argv = [filename]  # sys.path stays the zygote's: no directory a block can write is on it
        if _STDIO:  # made by the zygote, never used there: unwritten, as if new
            sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = _STDIO[:3]
        else:
            sys.stdin = sys.__stdin__ = _stdio(0, "r", "strict")
            sys.stdout = sys.__stdout__ = _stdio(1, "w", "strict")
            sys.stderr = sys.__stderr__ = _stdio(2, "w", "backslashreplace", line_buffering=True)
        compile(program.block_program("x = [1, 2.5, 'a']\nx"), "<warm>", "exec", dont_inherit=True)
        job = _read_job(3)
        if job is None:  # the hub closed our job pipe: retired
            shutil.rmtree(workdir, ignore_errors=True)
            os._exit(0)
        _write_all(4, ACK)  # the job is ours now: had we died before this, the hub would hand it on
        if job.get("mode") == "session":
            _session_main(job, workdir)
        else:
            _block_main(job, workdir, filename, main)
    finally:
        os._exit(70)


def _max_fd() -> int:
    try:
        return max(os.sysconf("SC_OPEN_MAX"), 1024)
    except (ValueError, OSError):
        return 65536


_MT_STATE: list = []  # numpy's global MT19937 state (key[624], pos) as bytes in place (see _mt_state)
MT_KEY0, MT_POS = (0x80000000).to_bytes(4, sys.byteorder), (623).to_bytes(4, sys.byteorder)


def _reseed() -> None:
    """Fresh randomness per execution, as in a fresh interpreter (`random` reseeds itself at fork)."""
    numpy = sys.modules.get("numpy")
    if _MT_STATE:  # what numpy.random.seed() makes of 624 words of entropy, without its ~80 page faults
        _MT_STATE[0][:] = MT_KEY0 + os.urandom(2492) + MT_POS
    elif numpy is not None:
        try:
            numpy.random.seed()
        except Exception:
            pass
    sympy_random = sys.modules.get("sympy.core.random")
    for name in ("rng", "_assumptions_rng"):
        rng = getattr(sympy_random, name, None)
        if rng is not None:
            try:
                rng.seed()
            except Exception:
                pass


def _mt_state() -> None:
    """In the zygote: find numpy's global MT19937 state, for _reseed to write fresh entropy there.

    numpy.random.seed() (legacy seeding with no seed) draws entropy through a SeedSequence and
    sets key[0] = 0x80000000, key[1:624] = that entropy, pos = 623, and no cached gaussian: in a
    spare that costs ~80 copy-on-write page faults (Python objects, numpy's caches). The same
    state with key[1:624] from os.urandom is one write into the C struct {uint32 key[624]; int
    pos}. Used only if numpy's own get_state() agrees on where the struct is and what it holds.
    """
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return
    try:
        import ctypes

        address = numpy.random.mtrand._rand._bit_generator.ctypes.state_address
        view = memoryview((ctypes.c_uint32 * 625).from_address(address)).cast("B")
        if len(view) != 2500:
            return
        pattern = MT_KEY0 + os.urandom(2492) + MT_POS
        view[:] = pattern
        _name, key, pos, has_gauss, _gauss = numpy.random.get_state()
        ok = key.astype("<u4").tobytes() == pattern[:2496] and pos == 623 and has_gauss == 0
        numpy.random.seed()
        if ok:
            _MT_STATE.append(view)
    except Exception:
        pass


_MAIN: list = []  # a block's __main__ module but for __file__, made by the zygote (as _STDIO)
_STDIO: list = []  # a block's sys.stdin/stdout/stderr, made by the zygote (see _block_stdio)


def _block_stdio() -> None:
    """In the zygote: make a block's stdio objects (~60 page faults in a spare) ahead of forking.

    They are what _spare_main would make: fd 0 (/dev/null in both), fds 1 and 2 made pipes for
    the moment, so that each object's view of its file (not seekable) is that of a spare's.
    The zygote never uses them; each spare gets its own copy, with empty buffers.
    """
    r, w = os.pipe()
    saved = (os.dup(1), os.dup(2))
    try:
        os.dup2(w, 1)
        os.dup2(w, 2)
        _STDIO.extend(
            (
                _stdio(0, "r", "strict"),
                _stdio(1, "w", "strict"),
                _stdio(2, "w", "backslashreplace", line_buffering=True),
                # the zygote's own, which the spare's assignments would otherwise free (more faults)
                (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__),
            )
        )
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (r, w, *saved):
            os.close(fd)


def _stdio(fd: int, mode: str, errors: str, line_buffering: bool = False):
    import io

    raw = io.FileIO(fd, mode, closefd=False)
    buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered, encoding="utf-8", errors=errors, line_buffering=line_buffering)


def _fresh_main(filename: str | None):
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    if filename is not None:
        main.__dict__["__file__"] = filename
        main.__dict__["__cached__"] = None
    sys.modules["__main__"] = main
    return main


def _block_main(job: dict, workdir: str, filename: str, main) -> None:
    """Run one block as `python3 tmp.py` would: preamble, auto-print, real fds, exit status."""
    _limit_cpu(job, sessions=False)
    source = program.block_program(job["code"])
    # Compiled from the bytes the reference would write to tmp.py, so that encodings, NUL bytes and
    # coding cookies fail or pass exactly as the reference's `python3 tmp.py` does.
    data = source.encode("utf-8", "surrogatepass")
    try:  # on disk, as the reference's: the interpreter's traceback printer reads source lines from the file
        # A new file in a new directory; never through a link someone placed there.
        fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    except OSError:  # e.g. a full /tmp: Python's traceback code falls back on linecache
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    rc = 0
    try:
        exec(compile(data, filename, "exec", dont_inherit=True), main.__dict__)
    except SystemExit as exit_:
        rc = _exit_status(exit_)
    except BaseException as error:
        rc = 1
        tb = error.__traceback__
        if tb is not None and tb.tb_frame.f_code is _block_main.__code__:
            tb = tb.tb_next  # as the interpreter reports it: from the script's own frames
        try:
            sys.excepthook(type(error), error.with_traceback(tb), tb)
        except BaseException:
            pass
    rc = _finalize(rc)
    for fd in (1, 2):
        try:
            os.close(fd)  # EOF on the output pipes (unless a background child holds them)
        except OSError:
            pass
    try:
        _write_all(4, _frame(b'{"rc":%d,"t":%d}' % (rc, job["token"])))
        # Exit only when the hub says so (EOF on the job pipe, right after the result is on its
        # way): tearing down this copy of the zygote takes milliseconds of CPU that would
        # otherwise delay the result's delivery (measured: +3 ms in a container on 2 cores).
        os.read(3, 1)
    except OSError:
        pass
    try:
        os.nice(19)
    except OSError:
        pass
    os.chdir("/")
    _remove_workdir(workdir)
    os._exit(rc)


SESSION_BLOCKS = 32  # a session's CPU budget, in blocks' worth (a candidate has at most 16 steps)


def _limit_cpu(job: dict, sessions: bool) -> None:
    """A CPU-time backstop (the wall-clock timeout comes first): SIGXCPU at the soft limit, SIGKILL at the hard.

    A block gets 2 * timeout + 5 s. A session's process gets the same for each block on top of
    what it has used (threads a block left spinning count too), within a hard limit it cannot
    raise: SESSION_BLOCKS blocks' worth.
    """
    limit = int(2 * float(job.get("timeout", 5))) + 5
    try:
        if not sessions:
            resource.setrlimit(resource.RLIMIT_CPU, (limit, limit))
            return
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        if hard == resource.RLIM_INFINITY:
            hard = limit * SESSION_BLOCKS
        used = resource.getrusage(resource.RUSAGE_SELF)
        resource.setrlimit(resource.RLIMIT_CPU, (min(hard, int(used.ru_utime + used.ru_stime) + limit), hard))
    except (ValueError, OSError):
        pass


def _exit_status(exit_: SystemExit) -> int:
    """What the interpreter makes of an uncaught SystemExit."""
    code = exit_.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:
        pass
    return 1


def _finalize(rc: int) -> int:
    """The interpreter's exit: join threads, run atexit, flush stdio (a failed flush is exit 120)."""
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()
        except BaseException:
            pass
    try:
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            if rc == 0:
                rc = 120
    return rc


def _session_main(job: dict, workdir: str) -> None:
    """A session: one namespace for all of a candidate's blocks; output captured in-process."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stdin = sys.__stdin__ = _stdio(0, "r", "strict")
    sys.stdout = sys.__stdout__ = _stdio(1, "w", "strict")
    sys.stderr = sys.__stderr__ = _stdio(2, "w", "backslashreplace", line_buffering=True)
    sys.argv = [""]
    main = _fresh_main(None)
    cap = int(job.get("cap", 65536))
    try:
        session = program.Session(cap, namespace=main.__dict__)
    except BaseException as error:
        failed = {"ok": False, "stdout": "", "error": f"{type(error).__name__}: {error}", "truncated": False}
        _write_all(4, encode({**failed, "t": job["token"]}))
        os._exit(1)
    while job is not None:
        _limit_cpu(job, sessions=True)
        result = session.run(program.with_auto_print(job["code"]))
        _write_all(4, encode({**result, "t": job["token"]}))
        job = _read_job(3)
    os._exit(0)


# ---------------------------------------------------------------------------
# Hub (talks to the host; owns every process)


class Proc:
    """A spare the hub adopted; later a running block, or a session."""

    __slots__ = (
        "pid",
        "job_w",
        "res_r",
        "out_r",
        "err_r",
        "workdir",
        "role",
        "run",
        "session",
        "res_buf",
        "status",
        "acks",
    )

    def __init__(self, pid: int, fds: list[int], workdir: str) -> None:
        self.pid = pid
        self.job_w, self.res_r, self.out_r, self.err_r = fds
        self.workdir = workdir
        self.role = "spare"  # spare | block | session
        self.run: Run | None = None
        self.session: str | None = None
        self.res_buf = bytearray()
        self.status: int | None = None  # wait status once reaped
        self.acks: list[int] = []  # close_session requests answered once it is reaped


class Run:
    __slots__ = (
        "id",
        "proc",
        "mode",
        "cap",
        "timeout",
        "started",
        "timer",
        "out",
        "seen",
        "err",
        "rc",
        "flooded",
        "final",
        "fallback",
        "request",
        "acked",
        "token",
    )

    def __init__(self, request: dict, proc: Proc) -> None:
        self.request = request
        self.token = int.from_bytes(os.urandom(8), "big")  # what its result must carry (see _job_frame)
        self.acked = proc.role != "spare"  # a session's later blocks go to a process already running
        self.id = request["id"]
        self.proc = proc
        self.mode = "session" if request.get("session") is not None else "block"
        self.cap = int(request.get("cap", 65536))
        self.timeout = float(request.get("timeout", 5.0))
        self.started = time.monotonic()
        self.timer: list | None = None
        self.out = bytearray()
        self.seen = 0
        self.err = bytearray()
        self.rc: int | None = None  # from the block's own "done" message
        self.flooded = False
        self.final: dict | None = None  # the result to send once the process is reaped (after a kill)
        self.fallback: list | None = None


class Hub:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.pid = os.getpid()
        self.is_init = self.pid == 1
        # Private protocol fds; 0 and 1 become /dev/null, so nothing printed by accident corrupts the stream.
        self.proto_in = os.dup(0)
        self.proto_out = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        os.set_blocking(self.proto_in, False)
        os.set_blocking(self.proto_out, False)
        self.sel = selectors.DefaultSelector()
        self.timers: list[list] = []
        self.timer_seq = itertools.count()
        self.in_buf = bytearray()
        self.out_buf = bytearray()
        self.out_registered = False
        self.pending_writes: dict[int, bytearray] = {}
        self.procs: dict[int, Proc] = {}
        self.spares: list[Proc] = []
        self.sessions: dict[str, Proc] = {}
        self.runs: dict[int, Run] = {}
        self.queue: list[dict] = []
        self.zygote_pid: int | None = None
        self.zygote_sock: socket.socket | None = None
        self.zygote_ready = False
        self.zygote_restarts = -1
        self.zygote_info: dict = {}
        self.spawning = 0  # spawns asked of the zygote that it has not reported as forked (or failed)
        self.forked: set[int] = set()  # spares forked by the zygote that have not announced themselves
        self.spawn_backoff = 0.0
        self.spawn_timer: list | None = None
        self.quiet_until = 0.0
        self.hello_sent = False
        self.dead_groups: dict[int, int] = {}  # pgid -> sweeps left
        self.sweep_timer: list | None = None
        self.stopping = False
        self.executions = 0
        self.oom_seen = _oom_kills()
        self.workroot = opts.workroot or tempfile.mkdtemp(prefix="sctir-runner-")
        os.makedirs(self.workroot, mode=0o700, exist_ok=True)
        self.opts.workroot = self.workroot
        self.workroot_stat = os.lstat(self.workroot)  # what _check_health expects it to stay
        self.unhealthy: str | None = None
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake_r = wake_r
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        # PID 1 ignores signals it has no handler for (SIGKILL included, from inside): keep it that way.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._on_wake)
        self.sel.register(self.proto_in, selectors.EVENT_READ, self._on_request_data)

    # -- plumbing ------------------------------------------------------------

    def add_timer(self, delay: float, callback) -> list:
        entry = [time.monotonic() + delay, next(self.timer_seq), callback]
        heapq.heappush(self.timers, entry)
        return entry

    @staticmethod
    def cancel_timer(entry: list | None) -> None:
        if entry is not None:
            entry[2] = None

    def send(self, message: dict) -> None:
        self.out_buf += encode(message)
        self._flush_out()

    def _flush_out(self, *_: object) -> None:
        while self.out_buf:
            try:
                written = os.write(self.proto_out, self.out_buf)
            except BlockingIOError:
                break
            except OSError:  # the host is gone
                self.out_buf.clear()
                self.stopping = True
                break
            del self.out_buf[:written]
        want = bool(self.out_buf)
        if want and not self.out_registered:
            self.sel.register(self.proto_out, selectors.EVENT_WRITE, self._flush_out)
            self.out_registered = True
        elif not want and self.out_registered:
            self.sel.unregister(self.proto_out)
            self.out_registered = False

    def write_fd(self, fd: int, data: bytes) -> None:
        """Write to a child's job pipe without blocking the hub (queues the rest)."""
        pending = self.pending_writes.get(fd)
        if pending is not None:
            pending += data
            return
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # the child is gone; its reaping reports it
        if written < len(data):
            self.pending_writes[fd] = bytearray(data[written:])
            self.sel.register(fd, selectors.EVENT_WRITE, lambda: self._drain_pending(fd))

    def _drain_pending(self, fd: int) -> None:
        pending = self.pending_writes[fd]
        try:
            del pending[: os.write(fd, pending)]
        except BlockingIOError:
            return
        except OSError:
            pending.clear()
        if not pending:
            del self.pending_writes[fd]
            self.sel.unregister(fd)

    def _close_fd(self, fd: int) -> None:
        if fd < 0:
            return
        if fd in self.pending_writes:
            del self.pending_writes[fd]
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        try:
            os.close(fd)
        except OSError:
            pass

    # -- main loop -----------------------------------------------------------

    def serve(self) -> int:
        if not self.is_init:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of executions come to us, to be killed
        _harden_self()
        self._start_zygote()
        while not (self.stopping and not self.out_buf):
            timeout = None
            while self.timers and self.timers[0][2] is None:
                heapq.heappop(self.timers)
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            for key, _ in self.sel.select(timeout):
                key.data()
            now = time.monotonic()
            while self.timers and (self.timers[0][2] is None or self.timers[0][0] <= now):
                entry = heapq.heappop(self.timers)
                if entry[2] is not None:
                    callback, entry[2] = entry[2], None
                    callback()
            self._reap()
            self._pump()
            self._replenish()
        self._shutdown()
        return 0

    def _on_wake(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        self._reap()

    # -- requests from the host ----------------------------------------------

    def _on_request_data(self) -> None:
        try:
            data = os.read(self.proto_in, READ_CHUNK)  # larger reads cost an mmap/mremap/munmap each
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the host closed our stdin: stop
            self.sel.unregister(self.proto_in)
            self.stopping = True
            return
        self.in_buf += data
        while len(self.in_buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.in_buf)
            if size > MAX_REQUEST_BYTES:
                _log(f"request of {size} bytes refused; stopping")
                self.stopping = True
                return
            if len(self.in_buf) < HEADER.size + size:
                break
            body = bytes(self.in_buf[HEADER.size : HEADER.size + size])
            del self.in_buf[: HEADER.size + size]
            try:
                request = decode(body)
            except ValueError:
                _log("undecodable request ignored")
                continue
            self._handle(request)

    def _handle(self, request: dict) -> None:
        op = request.get("op")
        if op == "exec":
            self.executions += 1
            self._exec(request)
        elif op == "cancel":
            self._cancel(request["id"])
        elif op == "close_session":
            self._close_session(request)
        elif op == "ping":
            self.send({"type": "pong", "id": request.get("id"), **self.stats()})
        elif op == "shutdown":
            self.send({"type": "bye", "id": request.get("id")})
            self.stopping = True
        else:
            _log(f"unknown op {op!r}")

    def stats(self) -> dict:
        return {
            "spares": len(self.spares),
            "running": sum(1 for run in self.runs.values() if run.final is None),
            "queued": len(self.queue),
            "sessions": len(self.sessions),
            "processes": len(self.procs),
            "executions": self.executions,
            "zygote_ready": self.zygote_ready,
            "zygote_restarts": max(self.zygote_restarts, 0),
        }

    def _exec(self, request: dict) -> None:
        key = request.get("session")
        if key is not None and key in self.sessions:
            proc = self.sessions[key]
            if proc.run is not None:
                self.send(self._result(request["id"], "killed", "", "The session is busy with another block.", 0.0))
                return
            self._dispatch(proc, request)
            return
        if self.spares:
            self._dispatch(self.spares.pop(0), request)
        else:
            self.queue.append(request)

    def _pump(self) -> None:
        """Hand queued requests to waiting spares."""
        while self.queue and self.spares and not self.stopping:
            self._exec(self.queue.pop(0))

    def _dispatch(self, proc: Proc, request: dict) -> None:
        run = Run(request, proc)
        self.runs[run.id] = run
        proc.run = run
        key = request.get("session")
        if proc.role == "spare":
            proc.role = "session" if key is not None else "block"
            session = key is not None
            if key is not None:
                proc.session = key
                self.sessions[key] = proc
                # A session writes its output through the result pipe; its fds 1 and 2 are /dev/null.
                self._close_fd(proc.out_r)
                self._close_fd(proc.err_r)
                proc.out_r = proc.err_r = -1
            else:
                self.sel.register(proc.out_r, selectors.EVENT_READ, lambda: self._on_output(proc, proc.out_r))
                self.sel.register(proc.err_r, selectors.EVENT_READ, lambda: self._on_output(proc, proc.err_r))
            self.sel.register(proc.res_r, selectors.EVENT_READ, lambda: self._on_result_data(proc))
        else:
            session = True
        run.timer = self.add_timer(run.timeout, lambda: self._on_timeout(run))
        code = request["code"] if isinstance(request["code"], str) else str(request["code"])
        self.write_fd(proc.job_w, _job_frame(session, run.timeout, run.cap, run.token, code))

    def _cancel(self, run_id: int) -> None:
        for i, request in enumerate(self.queue):
            if request["id"] == run_id:
                del self.queue[i]
                self.send(self._result(run_id, "killed", "", "Cancelled.", 0.0))
                return
        run = self.runs.get(run_id)
        if run is None or run.final is not None:
            return
        note = f" {RESET_NOTE}" if run.mode == "session" else ""
        self._kill_run(run, "killed", f"Cancelled.{note}")

    def _close_session(self, request: dict) -> None:
        proc = self.sessions.pop(request["session"], None)
        if proc is None or proc.status is not None:
            self.send({"type": "closed", "id": request.get("id")})
            return
        proc.acks.append(request.get("id"))
        proc.session = None
        run = proc.run
        if run is not None and run.final is None:
            self._finish(run, "killed", "", "The session was closed.")
        self._kill_proc(proc)

    # -- outputs of running blocks -------------------------------------------

    def _on_output(self, proc: Proc, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_fd(fd)
            if fd == proc.out_r:
                proc.out_r = -1
            else:
                proc.err_r = -1
            return
        self._take_output(proc, fd, data)

    def _take_output(self, proc: Proc, fd: int, data: bytes) -> None:
        run = proc.run
        if run is None or run.final is not None:
            return  # after the result: discard
        if fd == proc.out_r:
            run.seen += len(data)
            room = run.cap - len(run.out)
            if room > 0:
                run.out += data[:room]
            if run.seen > 2 * run.cap and not run.flooded:
                run.flooded = True
                stdout = run.out.decode("utf-8", errors="replace")
                self._kill_run(run, "killed", f"Output exceeded {run.cap} bytes; the process was killed.", stdout)
        else:
            run.err += data
            if len(run.err) > run.cap:
                del run.err[: len(run.err) - run.cap]

    def _drain_outputs(self, proc: Proc) -> None:
        """Read what the block's pipes hold right now (their writers may still be alive: do not wait)."""
        for attr in ("out_r", "err_r"):
            while True:
                fd = getattr(proc, attr)
                if fd < 0:
                    break
                try:
                    data = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    self._close_fd(fd)
                    setattr(proc, attr, -1)
                    break
                self._take_output(proc, fd, data)
                if proc.run is None or proc.run.final is not None:
                    break

    def _on_result_data(self, proc: Proc) -> None:
        if proc.res_r < 0:
            return
        try:
            data = os.read(proc.res_r, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_fd(proc.res_r)
            proc.res_r = -1
            return
        proc.res_buf += data
        # A result holds at most cap characters of stdout and of error (JSON: <= 6 bytes a character).
        limit = 12 * (proc.run.cap if proc.run else 65536) + 4096
        while len(proc.res_buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(proc.res_buf)
            if size > limit:
                self._protocol_violation(proc)
                return
            if len(proc.res_buf) < HEADER.size + size:
                break
            body = bytes(proc.res_buf[HEADER.size : HEADER.size + size])
            del proc.res_buf[: HEADER.size + size]
            try:
                message = decode(body)
            except ValueError:
                self._protocol_violation(proc)
                return
            self._on_message(proc, message)

    def _protocol_violation(self, proc: Proc) -> None:
        run = proc.run
        if run is not None and run.final is None:
            note = f" {RESET_NOTE}" if run.mode == "session" else ""
            self._kill_run(run, "killed", f"The block corrupted its result channel.{note}")
        else:
            if proc.session is not None and self.sessions.get(proc.session) is proc:
                del self.sessions[proc.session]  # its next block starts in a fresh process
                proc.session = None
            self._kill_proc(proc)

    def _on_message(self, proc: Proc, message: dict) -> None:
        """One frame on a process's result pipe: only the answer to the job it holds is accepted.

        A frame without the job's token, or any frame of a session between its jobs (a block
        that wrote its own "result" and then the real one arrived), is a forgery: the process
        is killed and the session reset, so no result can be taken for another job.
        """
        run = proc.run
        if run is None or run.final is not None:
            if proc.role == "session" and run is None and proc.status is None:
                self._protocol_violation(proc)
            return
        if "ack" in message:
            run.acked = True
            return
        if message.get("t") != run.token:
            self._protocol_violation(proc)
            return
        if run.mode == "block":
            if "rc" not in message or not isinstance(message["rc"], int):
                self._protocol_violation(proc)
                return
            run.rc = message["rc"]
            self._drain_outputs(proc)
            if run.final is None:
                self._finish_block(run, rc=run.rc)
            # Let it exit once the result is delivered; kill it if it lingers (a forged message).
            self.cancel_timer(run.fallback)
            run.fallback = self.add_timer(self.opts.linger, lambda: self._retire(proc))
        else:
            stdout, error = str(message.get("stdout", "")), str(message.get("error", ""))
            if len(stdout) > run.cap or len(error) > run.cap:  # the session caps both: not its own frame
                self._protocol_violation(proc)
                return
            if message.get("ok"):
                if message.get("truncated"):
                    error = f"stdout truncated to its first {run.cap} characters."
                self._finish(run, "ok", stdout, error)
            else:
                self._finish(run, "error", stdout, error or "The block failed.")
            proc.run = None
            self._kill_leftovers(proc)

    # -- ending runs ------------------------------------------------------------

    def _result(self, run_id: int, status: str, stdout: str, error: str, duration: float) -> dict:
        return {
            "type": "result",
            "id": run_id,
            "status": status,
            "stdout": stdout,
            "error": error,
            "duration": duration,
        }

    def _finish(self, run: Run, status: str, stdout: str, error: str) -> None:
        """Send the result of `run` now."""
        if run.final is not None and run.final.get("sent"):
            return
        self.cancel_timer(run.timer)
        self.cancel_timer(run.fallback)
        run.final = {"sent": True}
        self.runs.pop(run.id, None)
        self.send(self._result(run.id, status, stdout, error, round(time.monotonic() - run.started, 6)))
        self.quiet_until = time.monotonic() + self.opts.linger
        self._check_health()

    def _kill_run(self, run: Run, status: str, error: str, stdout: str = "") -> None:
        """Kill the run's process; its result goes out once the process is reaped (or after 2 s)."""
        if run.final is not None:
            return
        self.cancel_timer(run.timer)
        run.final = {"status": status, "stdout": stdout, "error": error}
        proc = run.proc
        if proc.session is not None:
            self.sessions.pop(proc.session, None)
            proc.session = None
        self._kill_proc(proc)
        run.fallback = self.add_timer(2.0, lambda: self._send_final(run))

    def _send_final(self, run: Run) -> None:
        final = run.final
        if final is None or final.get("sent"):
            return
        self.cancel_timer(run.fallback)
        final["sent"] = True
        self.runs.pop(run.id, None)
        duration = round(time.monotonic() - run.started, 6)
        self.send(self._result(run.id, final["status"], final["stdout"], final["error"], duration))

    def _on_timeout(self, run: Run) -> None:
        run.timer = None
        if run.final is not None:
            return
        if run.mode == "session":
            self._kill_run(run, "timeout", f"Timed out after {_seconds(run.timeout)} seconds. {RESET_NOTE}")
        else:
            self._drain_outputs(run.proc)
            if run.final is None:
                stdout = run.out.decode("utf-8", errors="replace")
                self._kill_run(run, "timeout", f"Timed out after {_seconds(run.timeout)} seconds.", stdout)

    def _finish_block(self, run: Run, rc: int | None = None, status: int | None = None) -> None:
        """The reference's outcome of a process-per-block run (exit code or wait status, stdout, stderr)."""
        stdout = run.out.decode("utf-8", errors="replace")
        cap = run.cap
        if rc is None and status is not None:
            rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        note = f"stdout truncated to its first {cap} bytes of {run.seen}." if run.seen > cap else ""
        if rc == 0:
            self._finish(run, "ok", stdout, note)
            return
        filename = os.path.join(run.proc.workdir, "tmp.py")
        stderr = program.trim_traceback(
            run.err.decode("utf-8", errors="replace"), filename, line_offset=program.PREAMBLE_LINES
        )
        if rc is not None and rc < 0:
            name = _signal_name(-rc)
            if -rc == signal.SIGKILL and self._oom_happened():
                name += " (out of memory)"
            self._finish(run, "killed", stdout, f"Killed by {name}." + (f"\n{stderr}" if stderr else ""))
            return
        self._finish(run, "error", stdout, stderr or f"Exited with code {rc}.")

    def _oom_happened(self) -> bool:
        count = _oom_kills()
        happened = count > self.oom_seen >= 0
        self.oom_seen = count
        return happened

    # -- processes --------------------------------------------------------------

    def _retire(self, proc: Proc) -> None:
        """Tell a finished block's process to exit (EOF on its job pipe); kill it if it does not."""
        if proc.status is not None:
            return
        self._close_fd(proc.job_w)
        proc.job_w = -1
        if proc.run is not None:
            proc.run.fallback = self.add_timer(1.0, lambda: self._kill_proc(proc))

    def _kill_proc(self, proc: Proc) -> None:
        if proc.status is not None:
            return
        for kill in (os.killpg, os.kill):
            try:
                kill(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._close_fd(proc.job_w)
        proc.job_w = -1

    def _reap(self, sweep: bool = True) -> None:
        reaped = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            reaped = True
            if pid == self.zygote_pid:
                self._on_zygote_exit(status)
                continue
            proc = self.procs.pop(pid, None)
            if proc is not None:
                self._on_proc_exit(proc, status)
        if reaped and sweep:
            self._sweep()

    def _on_proc_exit(self, proc: Proc, status: int) -> None:
        proc.status = status
        self.dead_groups[proc.pid] = 40  # kill what the block left behind in its group
        if proc in self.spares:
            self.spares.remove(proc)
        if proc.session is not None and self.sessions.get(proc.session) is proc:
            del self.sessions[proc.session]
        run = proc.run
        if run is not None and run.final is None:
            self._on_result_data(proc)  # an ack, a "done" or a session's result may be waiting
        if run is not None and run.final is None and not run.acked and run.request.get("requeues", 0) < MAX_REQUEUES:
            # It died before it took the job (e.g. another block's kill(-1)): hand the job on.
            self.cancel_timer(run.timer)
            run.final = {"sent": True}
            self.runs.pop(run.id, None)
            if proc.session is not None and self.sessions.get(proc.session) is proc:
                del self.sessions[proc.session]
            proc.session = None
            run.request["requeues"] = run.request.get("requeues", 0) + 1
            self.queue.insert(0, run.request)
        elif run is not None:
            if run.final is not None:
                self._send_final(run)
            elif run.mode == "block":
                self._on_result_data(proc)  # a "done" message may be waiting
                if run.final is None:
                    self._drain_outputs(proc)
                if run.final is None:
                    self._finish_block(run, status=status)
            else:
                self._on_result_data(proc)
                if run.final is None:
                    if os.WIFSIGNALED(status):
                        signame = _signal_name(os.WTERMSIG(status))
                        if os.WTERMSIG(status) == signal.SIGKILL and self._oom_happened():
                            signame += " (out of memory)"
                        self._finish(run, "killed", "", f"Killed by {signame}. {RESET_NOTE}")
                    else:
                        self._finish(run, "error", "", f"Exited with code {os.WEXITSTATUS(status)}. {RESET_NOTE}")
        for fd in (proc.job_w, proc.res_r, proc.out_r, proc.err_r):
            self._close_fd(fd)
        proc.job_w = proc.res_r = proc.out_r = proc.err_r = -1
        _remove_workdir(proc.workdir)
        for ack in proc.acks:
            self.send({"type": "closed", "id": ack})
        proc.acks.clear()

    def _strays(self) -> set[int]:
        """Processes that belong to no live execution, to be killed.

        Known are: the hub, the zygote, the spares it reported forking, and the processes of
        the sessions (sid) of live executions. On a host (a subreaper) the unknown children of
        the hub and of the zygote are strays; in a container (PID 1, everything in sight is
        ours) every unknown process is: a fork bomb's children that left their group with
        setsid, and a child a block made with clone(CLONE_PARENT), which the zygote's parent
        pid does not make a spare. While a fork's report is on its way (`spawning`), unknown
        children of the zygote are left for the next sweep.
        """
        known = {self.pid, self.zygote_pid, *self.procs, *self.forked}
        zygote_children_pending = self.spawning > 0
        if not self.is_init:
            children: set[int] = set()
            for parent in (self.pid, self.zygote_pid):
                if parent is None:
                    continue
                try:
                    with open(f"/proc/{parent}/task/{parent}/children") as file:
                        found = {int(pid) for pid in file.read().split()}
                except (OSError, ValueError):
                    continue
                if parent != self.zygote_pid or not zygote_children_pending:
                    children |= found
            return children - known
        strays = set()
        for pid, ppid, sid, state in _processes():
            if pid in known or state == b"Z" or sid in self.procs:
                continue  # ours, a zombie (reaped by its parent), or a live execution's
            if ppid == self.zygote_pid and zygote_children_pending:
                continue
            strays.add(pid)
        return strays

    def _kill_leftovers(self, proc: Proc) -> None:
        """After a session's block: kill every process of its session but the session itself."""
        for pid, _, sid, _ in _processes():
            if sid == proc.pid and pid != proc.pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _sweep(self) -> None:
        """Kill the groups of ended executions and every stray process until none is left."""
        self.cancel_timer(self.sweep_timer)
        self.sweep_timer = None
        for pgid in list(self.dead_groups):
            try:
                os.killpg(pgid, signal.SIGKILL)
                self.dead_groups[pgid] -= 1
                if self.dead_groups[pgid] <= 0:
                    del self.dead_groups[pgid]
            except (ProcessLookupError, PermissionError):
                del self.dead_groups[pgid]
        found = self.spawning > 0  # a fork not yet reported: look again soon
        for _ in range(20):  # kill all that is there in one go, again while something keeps forking
            strays = self._strays()
            if not strays:
                break
            found = True
            for pid in strays:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            self._reap(sweep=False)
        if self.dead_groups or found:
            self.sweep_timer = self.add_timer(0.05, self._sweep_and_reap)

    def _sweep_and_reap(self) -> None:
        self.sweep_timer = None
        self._reap()
        self._sweep()

    # -- the zygote and spares --------------------------------------------------

    def _start_zygote(self) -> None:
        self.zygote_restarts += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        import subprocess

        flags = subprocess._args_from_interpreter_flags()
        argv = [sys.executable, *flags, os.path.abspath(__file__), "--zygote", "--hub-pid", str(self.pid)]
        argv += ["--workroot", self.workroot, "--preload", self.opts.preload]
        argv += ["--warmup"] if self.opts.warmup else ["--no-warmup"]
        argv += ["--confine"] if self.opts.confine else []
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
        ]
        try:
            self.zygote_pid = os.posix_spawn(sys.executable, argv, os.environ, file_actions=actions)
        except OSError as error:
            theirs.close()
            ours.close()
            _log(f"cannot start the zygote: {error}")
            self.add_timer(1.0, self._start_zygote)
            return
        theirs.close()
        ours.setblocking(False)
        self.zygote_sock = ours
        self.zygote_ready = False
        self.spawning = 0
        self.sel.register(ours, selectors.EVENT_READ, self._on_zygote_message)

    def _on_zygote_message(self) -> bool:
        """Handle one message of the zygote; False when none was waiting."""
        sock = self.zygote_sock
        if sock is None:
            return False
        try:
            data, fds, _, _ = socket.recv_fds(sock, 4096, 4)  # a non-blocking socket
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data, fds = b"", []
        if not data:
            self._drop_zygote()
            return False
        message = json.loads(data)
        if "ready" in message:
            self._on_zygote_ready(message)
            return True
        if "forked" in message:
            self.spawning = max(0, self.spawning - 1)
            if message["forked"] not in self.procs:  # the spare's own announcement may come first
                self.forked.add(message["forked"])
            return True
        if "exit" in message:
            proc = self.procs.pop(message["exit"], None)
            if proc is not None:
                self._on_proc_exit(proc, message["status"])
                self._sweep()
            elif message["exit"] in self.forked:  # a spare that died before announcing itself
                self.forked.discard(message["exit"])
                self._spawn_failed(f"a new spare exited ({message['status']})", counted=True)
            return True
        name = str(message.get("dir", ""))
        if "pid" in message and len(fds) == 4 and len(name) == 24 and name.isalnum():
            self.forked.discard(message["pid"])
            for fd in fds:
                os.set_blocking(fd, False)
            proc = Proc(message["pid"], fds, os.path.join(self.workroot, name))
            self.procs[proc.pid] = proc
            self.spawn_backoff = 0.0
            if self.queue:
                self._dispatch(proc, self.queue.pop(0))
            else:
                self.spares.append(proc)
        else:
            for fd in fds:
                os.close(fd)
            self._spawn_failed(message.get("error"))
        return True

    def _spawn_failed(self, error: object, counted: bool = False) -> None:
        """A spawn failed: back off. `counted`: it was forked (and so already taken off `spawning`)."""
        if not counted:
            self.spawning = max(0, self.spawning - 1)
        self.spawn_backoff = min(1.0, max(0.02, self.spawn_backoff * 2))
        _log(f"spawn failed: {error}; retrying in {self.spawn_backoff:.2f} s")
        if self.spawn_timer is None:
            self.spawn_timer = self.add_timer(self.spawn_backoff, self._spawn_retry)

    def _spawn_retry(self) -> None:
        self.spawn_timer = None
        self._replenish()

    def _on_zygote_ready(self, message: dict) -> None:
        if not message.get("ready"):
            error = message.get("error", "the zygote failed")
            _log(f"not ready: {error}")
            if not self.hello_sent:
                self.send({"type": "hello", "ready": False, "error": error, "protocol": PROTOCOL_VERSION})
                self.hello_sent = True
            self.stopping = True
            return
        self.zygote_ready = True
        self.zygote_info = message
        self._replenish()
        if not self.hello_sent:
            self.hello_sent = True
            self.send(
                {
                    "type": "hello",
                    "ready": True,
                    "protocol": PROTOCOL_VERSION,
                    "pid": self.pid,
                    "python": sys.version.split()[0],
                    "spares": self.opts.spares,
                    **{k: v for k, v in message.items() if k != "ready"},
                }
            )

    def _drop_zygote(self) -> None:
        if self.zygote_sock is not None:
            try:
                self.sel.unregister(self.zygote_sock)
            except (KeyError, ValueError):
                pass
            self.zygote_sock.close()
            self.zygote_sock = None
        self.zygote_ready = False
        self.spawning = 0
        self.forked.clear()  # its unannounced spares cannot announce any more: they exit, strays to us

    def _on_zygote_exit(self, status: int) -> None:
        self.zygote_pid = None
        while self._on_zygote_message():
            pass  # the exits it reported before dying
        self._drop_zygote()
        # Its children are ours now (we are PID 1 or their subreaper) and we reap them; one it
        # reaped without telling us is gone: account for it as killed.
        for proc in list(self.procs.values()):
            try:
                os.kill(proc.pid, 0)
            except ProcessLookupError:
                del self.procs[proc.pid]
                self._on_proc_exit(proc, signal.SIGKILL)
            except PermissionError:
                pass
        if self.stopping:
            return
        if not self.hello_sent:  # it never became ready
            self.send(
                {
                    "type": "hello",
                    "ready": False,
                    "protocol": PROTOCOL_VERSION,
                    "error": f"the zygote exited ({status})",
                }
            )
            self.hello_sent = True
            self.stopping = True
            return
        _log("the zygote died; starting a new one")
        self.add_timer(0.05 if self.zygote_restarts < 3 else 0.5, self._start_zygote)

    def _replenish(self) -> None:
        """Ask the zygote for spares: at once when demand needs them, otherwise when it disturbs least.

        A fork of the zygote slows down the blocks running beside it by milliseconds (measured:
        1.3 ms -> 6 ms for a trivial block on 2 cores) and, in a container, the delivery of a
        result just sent (+2-5 ms). So: with no spare left (or requests waiting), fork all that is
        missing now; at or below half the target, fork one at a time; above it, fork only when no
        block runs and `linger` seconds after the last result.
        """
        if self.stopping or not self.zygote_ready or self.zygote_sock is None or self.spawn_timer is not None:
            return
        want = self.opts.spares + len(self.queue) - len(self.spares) - self.spawning - len(self.forked)
        if want <= 0:
            return
        if self.spares and not self.queue:
            if len(self.spares) <= self.opts.spares // 2:
                want = 1 if self.spawning == 0 and not self.forked else 0  # trickle
            elif any(run.final is None for run in self.runs.values()):
                return  # made when the running blocks are done
            else:
                wait = self.quiet_until - time.monotonic()
                if wait > 0:  # a result was just sent: let it be delivered first
                    self.spawn_timer = self.add_timer(wait, self._spawn_retry)
                    return
        for _ in range(want):
            try:
                self.zygote_sock.send(b"spawn")
            except OSError:
                return
            self.spawning += 1

    # -- the container's health --------------------------------------------------

    def _check_health(self) -> None:
        """After each result: is this runner still fit for the next block? Repair it, or say it is not.

        A block cannot write outside its own directory where Landlock confines it, but it can
        chmod the work root (Landlock does not govern chmod) and, unconfined, fill or break
        anything its user owns. The work root must be the directory it was, with its mode; the
        scratch file systems must have room (blocks and inodes): at half full, in a container,
        whatever no live execution owns is removed; a runner that is still broken tells the host
        ("unhealthy"), which replaces its container. Three system calls when all is well.
        """
        problem = None
        try:
            now = os.lstat(self.workroot)
        except OSError:
            problem = "the work root is gone"
        else:
            expected = self.workroot_stat
            if (now.st_dev, now.st_ino) != (expected.st_dev, expected.st_ino) or not stat.S_ISDIR(now.st_mode):
                problem = "the work root was replaced"
            elif now.st_mode != expected.st_mode:
                try:
                    os.chmod(self.workroot, stat.S_IMODE(expected.st_mode))
                except OSError:
                    problem = "the work root's mode was changed"
        if problem is None and self.opts.purge_tmp:
            problem = self._check_space()
        if problem is not None and problem != self.unhealthy:
            _log(f"unhealthy: {problem}")
            self.send({"type": "unhealthy", "reason": problem})
        self.unhealthy = problem

    def _check_space(self) -> str | None:
        """Purge the scratch file systems at half full; the one still over 90% full, if any."""
        for root in (self.workroot, "/tmp", "/dev/shm"):
            if _fullness(root) < 0.5:
                continue
            # A block whose result is out only lingers to exit: its directory goes now.
            live = {p.workdir for p in self.procs.values() if p.run is None or p.run.final is None}
            for entry in os.listdir(root):
                path = os.path.join(root, entry)
                if path not in live:
                    self._remove(path)
            if _fullness(root) > 0.9:
                return f"{root} is full"
        return None

    @staticmethod
    def _remove(path: str) -> None:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            pass

    # -- stopping ------------------------------------------------------------------

    def _shutdown(self) -> None:
        if self.zygote_pid is not None:
            try:
                os.kill(self.zygote_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in list(self.procs.values()):
            self._kill_proc(proc)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            self._reap()
            if not self.procs:
                break
            time.sleep(0.01)
        os.set_blocking(self.proto_out, True)
        try:
            _write_all(self.proto_out, bytes(self.out_buf))
        except OSError:
            pass
        shutil.rmtree(self.workroot, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--spares", type=int, default=2, help="executions prepared ahead of demand")
    parser.add_argument("--workroot", default=None, help="where per-execution working directories go")
    parser.add_argument("--preload", default=DEFAULT_PRELOAD, help="modules imported once, when installed")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True, help="exercise sympy once")
    parser.add_argument(
        "--purge-tmp", action="store_true", help="container: purge the scratch file systems when half full"
    )
    parser.add_argument(
        "--confine", action="store_true", help="Landlock file rules: a block writes only its own directory"
    )
    parser.add_argument(
        "--linger", type=float, default=0.005, help="seconds between a result and the housekeeping it causes"
    )
    parser.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hub-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--self-test", action="store_true", help="import what the zygote imports, then exit")
    opts = parser.parse_args(argv)
    opts.spares = max(1, opts.spares)
    if opts.zygote:
        zygote_main(opts)
        return 0
    if opts.self_test:
        import importlib

        for name in ("numpy", "sympy", *filter(None, opts.preload.split(","))):
            importlib.import_module(name)
        exec(compile(program.PREAMBLE + WARMUP, "<self-test>", "exec", dont_inherit=True), {})
        print("ok")
        return 0
    try:
        return Hub(opts).serve()
    except Exception as error:  # a bug: say so on stderr; the host sees EOF
        import traceback

        traceback.print_exc()
        _log(f"hub failed: {error!r}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
