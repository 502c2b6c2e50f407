"""The container's health: the work root and the scratch file systems, checked after every result."""

from __future__ import annotations

import os
import shutil
import stat


def oom_kills() -> int:
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


class Health:
    """Is this runner still fit for the next block? Repairs what it can; says what it cannot.

    A block cannot write outside its own directory where Landlock confines it, but it can
    chmod the work root (Landlock does not govern chmod) and, unconfined, fill or break
    anything its user owns. The work root must be the directory it was, with its mode; the
    scratch file systems must have room (blocks and inodes): at half full, in a container,
    whatever no live execution owns is removed; a runner that is still broken tells the host
    ("unhealthy"), which replaces its container. Three system calls when all is well.
    """

    def __init__(self, workroot: str) -> None:
        self.workroot = workroot
        self.expected = os.lstat(workroot)  # what it must stay

    def check(self, live: set[str], purge: bool) -> str | None:
        """The problem left after repairs, or None. `live`: the working directories still in use;
        `purge`: clear the scratch file systems at half full (in a container)."""
        try:
            now = os.lstat(self.workroot)
        except OSError:
            return "the work root is gone"
        expected = self.expected
        if (now.st_dev, now.st_ino) != (expected.st_dev, expected.st_ino) or not stat.S_ISDIR(now.st_mode):
            return "the work root was replaced"
        if now.st_mode != expected.st_mode:
            try:
                os.chmod(self.workroot, stat.S_IMODE(expected.st_mode))
            except OSError:
                return "the work root's mode was changed"
        return self._check_space(live) if purge else None

    def _check_space(self, live: set[str]) -> str | None:
        """Purge the scratch file systems at half full; the one still over 90% full, if any."""
        for root in (self.workroot, "/tmp", "/dev/shm"):
            if _fullness(root) < 0.5:
                continue
            # A block whose result is out only lingers to exit: its directory goes now.
            for entry in os.listdir(root):
                path = os.path.join(root, entry)
                if path not in live:
                    _remove(path)
            if _fullness(root) > 0.9:
                return f"{root} is full"
        return None


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass
