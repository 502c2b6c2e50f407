"""Which sandbox containers are whose: the labels every container carries, and which ones are leftovers.

Every container carries labels naming its pool and its owner process (`Owner`).
A pool's start removes the pool's leftovers (containers whose owner is gone,
see `is_leftover`) and never a live process's, so two processes sharing a pool
name (a running service, an in-process `sctir solve`) never remove each other's.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

LABEL = "sctir.sandbox"
LABEL_POOL = "sctir.sandbox.pool"
LABEL_OWNER = "sctir.sandbox.owner"  # hostname:pid, for people
LABEL_OWNER_PID = "sctir.sandbox.owner.pid"
LABEL_OWNER_STARTED = "sctir.sandbox.owner.started"  # clock ticks after boot (/proc/<pid>/stat): no pid reuse
LABEL_OWNER_PIDSPACE = "sctir.sandbox.owner.pidspace"  # boot id and pid namespace: where that pid names the owner
CREATED_GRACE_S = 60.0  # a never-started container of an owner out of our sight: maybe its launch in progress


def _process_stat(pid: int | str) -> tuple[str, str] | None:
    """A process's state letter and start time (clock ticks after boot) from /proc, or None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or hidden (hidepid), or no /proc
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after the command name, which may hold anything
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _pid_space() -> str:
    """Where a pid names one process: this boot of the kernel and this pid namespace; "" if unknown.

    Two services in containers of one host share the boot id but not the pid namespace, so
    neither may judge the other's pids. A namespace's inode is reused only after it is gone,
    so a live owner's pid space is never mistaken for another's.
    """
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot_id}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


@dataclass(frozen=True)
class Owner:
    """The process that made a container, and holds its attach stream, told apart from any later one.

    Its labels say where it ran (`pid_space`) and when it started, so a later start, in
    this process or another, can tell a crashed owner's leftovers from a live one's containers.
    """

    host: str
    pid: int
    started: str  # its start time in clock ticks after boot; "" where /proc is unreadable
    pid_space: str

    @classmethod
    def current(cls) -> Owner:
        stat = _process_stat("self")
        return cls(socket.gethostname(), os.getpid(), stat[1] if stat else "", _pid_space())

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> Owner | None:
        """The owner a container's labels name; None for labels of no owner (or of an older version)."""
        try:
            pid = int(labels[LABEL_OWNER_PID])
            return cls(labels.get(LABEL_OWNER, "?"), pid, labels[LABEL_OWNER_STARTED], labels[LABEL_OWNER_PIDSPACE])
        except (KeyError, ValueError):
            return None

    def labels(self) -> dict[str, str]:
        return {
            LABEL_OWNER: f"{self.host}:{self.pid}",
            LABEL_OWNER_PID: str(self.pid),
            LABEL_OWNER_STARTED: self.started,
            LABEL_OWNER_PIDSPACE: self.pid_space,
        }

    def alive(self) -> bool | None:
        """True or False where that is provable from this process; None for an owner out of sight."""
        if not self.pid_space or not self.started or self.pid_space != _pid_space():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists (another user's)
        stat = _process_stat(self.pid)
        if stat is None:  # it exists, but /proc hides it (hidepid): not provably gone
            return None
        state, started = stat
        return started == self.started and state not in ("Z", "X")  # a zombie's streams are closed


def is_leftover(attrs: dict, now: float | None = None) -> tuple[bool, str]:
    """Whether a container (the attrs of Docker's container list) is a leftover to remove, and why.

    A runner stops when its owner's attach stream closes (the owner ends, however it ends), so
    a running container of a live owner is in use, and an owner's stopped container may be
    inspected by it for the reason its runner died. Hence: a container of an owner provably
    gone is a leftover; of a live owner, never; of an owner out of sight (another host, another
    pid namespace, an older label), only once it has stopped (or, never started, is older than
    CREATED_GRACE_S: the owner may be between creating and starting it).
    """
    labels = attrs.get("Labels") or {}
    state = attrs.get("State", "")
    owner = Owner.from_labels(labels)
    who = labels.get(LABEL_OWNER, "no owner label")
    alive = owner.alive() if owner is not None else None
    if alive is not None:
        return (not alive, f"its owner {who} is {'alive' if alive else 'gone'}")
    if state in ("exited", "dead"):
        return True, f"it has stopped and its owner ({who}) is out of sight"
    age = (time.time() if now is None else now) - float(attrs.get("Created", 0))
    if state == "created" and age > CREATED_GRACE_S:
        return True, f"it was never started ({age:.0f} s) and its owner ({who}) is out of sight"
    return False, f"it is {state} and its owner ({who}) is out of sight"


def container_labels(pool_name: str) -> dict[str, str]:
    """The labels of a container this process makes for pool `pool_name`."""
    return {LABEL: "1", LABEL_POOL: pool_name, **Owner.current().labels()}
