"""The zygote: imports the math packages once, warms them up, then only ever forks spares.

Spawned by the hub (supervisor.py) as the runner's program with --zygote: a clean interpreter,
whose memory never holds a request, a code block or an output. It imports none of the hub's
modules (hub, runs, supervisor, loop): only what its spares run.
"""

from __future__ import annotations

import _signal
import fcntl
import gc
import json
import os
import signal
import socket
import sys
import time

from . import confine, program
from .hardening import PR_SET_PDEATHSIG, harden_self, huge_pages, prctl
from .spare import max_fd, prepare, reseed, spare_main

SIGCHLD, SIGIO = int(signal.SIGCHLD), int(signal.SIGIO)
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


def zygote_main(opts) -> None:
    """The zygote's life: harden, import and warm up, report ready, then only fork. Never returns.

    The order is the point: everything the spares share is made before gc.freeze() and
    huge_pages(), so that it sits, frozen, on the pages the spares inherit.
    """
    ctrl = socket.socket(fileno=3)  # SOCK_SEQPACKET to the hub
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != opts.hub_pid:  # the hub died before the line above
        os._exit(0)
    harden_self()
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")  # no BLAS thread pools: they would not survive a fork
    started = time.monotonic()
    try:
        preloaded = _preload(opts)
    except BaseException as error:  # reported to the hub, which reports it to the host
        ctrl.send(json.dumps({"ready": False, "error": f"{type(error).__name__}: {error}"}).encode())
        os._exit(1)
    opts.confinement = confine.Confinement(files=opts.confine)  # built once; every spare enters it
    versions = {
        name: getattr(sys.modules[name], "__version__", "")
        for name in ("numpy", "sympy", "scipy")
        if name in sys.modules
    }
    opts.max_fd = max_fd()
    prepare()
    gc.collect()
    gc.freeze()  # children's collections then never touch (and copy) the zygote's pages
    made = huge_pages()
    _serve_forever(ctrl, opts, _ready_report(opts, started, preloaded, made, versions))


def _preload(opts) -> list[str]:
    """Import and warm up, once, what every spare would otherwise pay for; the optional preloads imported.

    numpy and sympy are required (an ImportError propagates: the zygote is then not ready);
    the names in opts.preload are optional, and only those that imported are returned.
    """
    import importlib

    for name in ("numpy", "sympy"):
        importlib.import_module(name)
    preloaded: list[str] = []
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
    reseed()  # the first numpy seeding costs milliseconds (lazy set-up): pay it here, once
    return preloaded


def _ready_report(opts, started: float, preloaded: list[str], made: int, versions: dict[str, str]) -> dict:
    """What the hub passes on to the host: the start-up cost and what a block runs with and in."""
    return {
        "ready": True,
        "import_s": round(time.monotonic() - started, 3),
        "preloaded": preloaded,
        "huge_pages": made,
        "versions": versions,
        **opts.confinement.describe(),
        # A module search path entry that a block could write to would let it plant code for later blocks.
        "writable_path": [path for path in sys.path if os.path.isdir(path) and os.access(path, os.W_OK)],
    }


def _serve_forever(ctrl: socket.socket, opts, ready: dict) -> None:
    """Arm the wake-up signals, report ready, then fork spares on request and report their exits. Never returns.

    From here on the zygote only forks, and every page it writes after a fork is a copy-on-write
    fault that also splits the 2 MiB page around it for good (making every later fork dearer):
    so its loop is as small as it can be. A spare makes its own pipes and announces itself to
    the hub. The loop waits in sigwaitinfo() for SIGCHLD (a spare exited) or SIGIO (a request
    on the hub socket), both blocked (pending until taken, none lost): no Python signal
    handler, no select() lists, no wakeup pipe. Spares restore the signal mask.
    """
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


def _spawn(ctrl: socket.socket, opts) -> None:
    """Fork one spare (which announces itself to the hub)."""
    try:
        pid = os.fork()
    except OSError as error:
        ctrl.send(json.dumps({"error": f"fork: {error}"}).encode())
        return
    if pid == 0:
        spare_main(ctrl, opts)  # never returns
    # The hub learns every pid the zygote forks, before the child can do anything: any other child
    # of the zygote (e.g. one a block made with clone(CLONE_PARENT)) is then a stray to be killed.
    ctrl.send(b'{"forked":%d}' % pid)
