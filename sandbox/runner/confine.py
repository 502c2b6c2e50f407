"""Landlock confinement of one execution: what its files and signals can reach. Stdlib only.

Every execution runs as the sandbox's one unprivileged user, and a block of
one tenant runs beside the blocks of others (the candidates of its request,
other candidates' sessions). Without more, the kernel lets a process of a
user signal, read and write everything of that user. A Landlock domain (an
unprivileged Linux security module, under no_new_privs) narrows that for the
process that enters it and everything it starts, for good:

- files: read and execute the system (/usr, /etc, /opt, the interpreter's
  prefix); read and write only the execution's own working directory; open
  /dev/null and the random devices. /tmp, /dev/shm, the runner's work root
  and the other executions' directories cannot even be listed. (Landlock
  does not govern chmod, stat or path look-ups: the hub checks its work
  root after every block, and directory names are random.)
- TCP: no bind or connect (Landlock ABI 4; the container has no network
  anyway).
- scopes (ABI 6, Linux 6.12): signals and abstract UNIX sockets reach only
  processes of the same domain, i.e. the block and its own children, never
  another execution, the zygote or the hub.

`Confinement` is built once in the zygote (what the kernel supports, the
read-only paths) and applied in each spare (`enter`), before it takes a job.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import stat
import sys

CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

# Access rights to files, by the ABI version that introduced them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1, 2, 4, 8
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 16, 32, 64, 128
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 256, 512, 1024, 2048, 4096
REFER, TRUNCATE, IOCTL_DEV = 8192, 16384, 32768
FS_BY_ABI = {1: (1 << 13) - 1, 2: REFER, 3: TRUNCATE, 5: IOCTL_DEV}
FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # what a rule on a file (not a dir) may grant
NET_TCP = 1 | 2  # BIND_TCP, CONNECT_TCP (ABI 4)
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2  # ABI 6

READ_ONLY_ROOTS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt", "/sys/devices/system/cpu")
DEVICES = {"/dev/null": "rw", "/dev/zero": "r", "/dev/full": "rw", "/dev/random": "r", "/dev/urandom": "r"}


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # fmt: skip


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _syscall():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


class Confinement:
    """The Landlock rules of an execution, prepared once; `enter(workdir)` applies them to this process.

    Made in the zygote: the system paths are opened there once (O_PATH descriptors at FD_FLOOR
    and up, which every spare inherits and closes once confined), so that a spare only adds
    rules and restricts itself: ~25 system calls and few copy-on-write page faults, ahead of
    demand. `files=False` keeps only the scopes (signals, abstract sockets): the local executor,
    which runs on a host whose files are the user's business, not the sandbox's.
    """

    def __init__(self, files: bool) -> None:
        self.libc = _syscall()
        self.abi = max(0, self.libc.syscall(CREATE_RULESET, None, 0, CREATE_RULESET_VERSION))
        self.files = files and self.abi >= 1
        self.scoped = self.abi >= 6
        fs = sum(bits for version, bits in FS_BY_ABI.items() if version <= self.abi) if self.files else 0
        self.attr = RulesetAttr(fs, NET_TCP if self.files and self.abi >= 4 else 0,
                                SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if self.scoped else 0)  # fmt: skip
        self.attr_ref = ctypes.byref(self.attr)
        self.attr_size = 24 if self.scoped else 16 if self.attr.handled_access_net else 8
        self.read = fs & (EXECUTE | READ_FILE | READ_DIR)
        self.everything = fs
        self.rule = PathBeneathAttr()
        self.rule_ref = ctypes.byref(self.rule)
        self.fixed: list[tuple[int, int]] = []  # (O_PATH descriptor, access) of the system paths
        if self.files:
            roots = {*READ_ONLY_ROOTS, sys.prefix, sys.base_prefix, sys.exec_prefix}
            roots.update(p for p in sys.path if p.startswith(("/usr", "/opt", sys.prefix, sys.base_prefix)))
            paths = [(path, self.read) for path in sorted(roots)]
            paths += [(path, self._device_access(mode)) for path, mode in DEVICES.items()]
            for path, access in paths:
                fd = _open_path(path)
                if fd >= 0:
                    self.fixed.append((fd, access if stat.S_ISDIR(os.fstat(fd).st_mode) else access & FILE_ONLY))

    @property
    def active(self) -> bool:
        """Whether `enter` confines anything on this kernel."""
        return self.files or self.scoped

    def describe(self) -> dict:
        return {"landlock_abi": self.abi, "confined_files": self.files, "signal_scope": self.scoped}

    def enter(self, workdir: str) -> bool:
        """Confine this process (and its future children) for good; False if the kernel refused."""
        if not self.active:
            return True
        syscall = self.libc.syscall
        ruleset = syscall(CREATE_RULESET, self.attr_ref, self.attr_size, 0)
        if ruleset < 0:
            return False
        own = [_open_path("/proc/self"), _open_path(workdir)]  # its own /proc/PID; its own directory
        try:
            if self.files:
                if own[1] < 0:
                    return False
                for fd, access in (*self.fixed, (own[0], self.read), (own[1], self.everything)):
                    self.rule.allowed_access, self.rule.parent_fd = access, fd
                    if fd >= 0 and syscall(ADD_RULE, ruleset, RULE_PATH_BENEATH, self.rule_ref, 0) != 0:
                        return False
            if self.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                return False
            return syscall(RESTRICT_SELF, ruleset, 0) == 0
        finally:
            for fd in (ruleset, *own):
                if fd >= 0:
                    os.close(fd)

    def _device_access(self, mode: str) -> int:
        access = READ_FILE | (WRITE_FILE if "w" in mode else 0) | IOCTL_DEV
        return access & self.everything & FILE_ONLY


FD_FLOOR = 512  # the zygote's O_PATH descriptors: clear of the numbers a spare puts its pipes at


def _open_path(path: str) -> int:
    """An O_PATH descriptor of `path` at FD_FLOOR or above (-1 if it is missing)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD_FLOOR)
    finally:
        os.close(fd)
