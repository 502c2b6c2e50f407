"""What the runner's processes do to themselves through the kernel: prctl, no dumps, huge pages.

(What an execution may reach is confine.py's: Landlock.)
"""

from __future__ import annotations

import resource

_LIBC: list = []  # [prctl, syscall]: made once (the zygote's, inherited), not in every spare

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36


def libc() -> list:
    """ctypes' prctl and syscall of libc, or [] without ctypes.

    Made once: a CDLL builds a class and each function pointer an object, which in a spare
    costs ~100 copy-on-write page faults (~0.2 ms of CPU) per execution.
    """
    if not _LIBC:
        try:
            import ctypes

            lib = ctypes.CDLL(None, use_errno=True)
            prctl, syscall = lib.prctl, lib.syscall
            prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
            syscall.restype = ctypes.c_long
            _LIBC.extend((prctl, syscall))
        except Exception:
            pass
    return _LIBC


def prctl(option: int, value: int) -> bool:
    try:
        call, _ = libc()
        return call(option, value, 0, 0, 0) == 0
    except Exception:
        return False


def harden_self() -> None:
    """Not dumpable (no ptrace, /proc/PID/{mem,environ,fd} closed to same-uid processes), no core files."""
    prctl(PR_SET_DUMPABLE, 0)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass


MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25
HUGE_PAGE = 2 << 20


def huge_pages() -> int:
    """Back the zygote's private memory with 2 MiB pages, where the kernel can; returns how many.

    fork() copies one page-table entry per 4 KiB page, so a fork of the ~60 MB zygote costs
    ~15,000 entries (measured: 1.3 ms, the largest single cost of an execution); a 2 MiB page
    is one entry (a child's first write to it splits only the child's copy). Done once, after
    the imports. MADV_COLLAPSE needs Linux 6.1; elsewhere (or with THP disabled) it does nothing.
    """
    try:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
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
            lib.madvise(start, end - start, MADV_HUGEPAGE)
            if lib.madvise(start, end - start, MADV_COLLAPSE) == 0:
                made += (end - start) // HUGE_PAGE
    return made
