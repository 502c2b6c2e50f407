"""The engine's processes die with the service, even a service killed by SIGKILL.

vLLM's in-process engine runs its EngineCore as a child process, and on CPU a Worker under it
(multiprocessing: spawned on CPU, forked by default on CUDA). Nothing tied them to the service:
after a SIGKILL of the service they went on holding the model (1.6 GB for the demo model, still
alive 48 s later), and a restarted service did not look for them. Linux's parent-death signal
does: every child of sctir asks, as it starts, for SIGKILL when its parent dies, so the
EngineCore dies with the service and the Worker with the EngineCore, however the parent ended.

A spawned child asks when it re-imports sctir's main module (service.cli.main
calls `die_with_parent_if_spawned()` at import), a forked one in an at-fork hook. Both compare their
parent with the pid the parent published (SCTIR_PARENT_PID), so a parent that died before the
request was made is noticed too. The signal follows the *thread* that started the child: the
engine must be started from a thread that lives as long as the service (VllmEngine.start() runs
on the event loop's).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_ENV = "SCTIR_PARENT_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_forker_pid = 0  # the pid of the process that forks, as its forked child sees it
_adopted = False


def adopt_children() -> None:
    """From now on, each child this process starts with multiprocessing dies when this process dies.

    Publishes this pid for spawned children (see die_with_parent_if_spawned) and hooks forks.
    """
    global _adopted
    os.environ[PARENT_ENV] = str(os.getpid())
    if not _adopted and sys.platform == "linux":
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _adopted = True


def die_with_parent_if_spawned() -> None:
    """In a child spawned by an adopting sctir process (vLLM's EngineCore, its Worker): die with the parent,
    and adopt this process's own children in turn. A no-op anywhere else."""
    parent = os.environ.get(PARENT_ENV)
    spawned = getattr(sys.modules.get("__mp_main__"), "__name__", None) == "__mp_main__"
    if spawned and parent is not None and parent.isdigit():
        die_with_parent(int(parent))
        adopt_children()


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux for SIGKILL once the parent dies; if `parent_pid` is no longer the parent, it died: die now."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # reparented before the request: the parent is gone already
        os.kill(os.getpid(), signal.SIGKILL)


def _before_fork() -> None:
    global _forker_pid
    _forker_pid = os.getpid()


def _after_fork_in_child() -> None:
    die_with_parent(_forker_pid)
    os.environ[PARENT_ENV] = str(os.getpid())
