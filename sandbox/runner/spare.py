"""A spare: a child of the zygote, set up ahead of demand, that waits for one job and runs it (child.py).

What every spare would make for itself and the zygote can make once (the numpy MT19937 state's
address, a block's __main__ module and stdio objects) is made by `prepare`, in the zygote.
"""

from __future__ import annotations

import _signal  # the C functions, without the signal module's enum conversions (page faults in a spare)
import fcntl
import os
import shutil
import socket
import struct
import sys
import tempfile
import types

from . import program
from .child import block_main, fresh_main, session_main, stdio
from .wire import ACK, read_job, write_all

F_DUPFD = fcntl.F_DUPFD
FOUR_FDS = struct.Struct("4i")


def spare_main(ctrl: socket.socket, opts) -> None:
    """A spare: set up everything ahead of demand, then wait for one job. Never returns.

    It makes its working directory (a random name, so that no block can find, pre-create or
    plant in the directory of another), then sends the hub its pid, that name and the hub's ends
    of its four pipes (job, result, stdout, stderr), over the zygote's socket; one that dies
    before that is a failed spawn to the hub. It confines itself (confine.py) before it
    takes a job: a block can write nothing but its own directory.
    """
    # Modules are imported at the top, not in these functions: an import statement in a spare, even
    # of a module the zygote has, costs ~50 copy-on-write page faults (the first time; measured for atexit).
    try:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, opts.sigmask)  # the zygote blocks SIGCHLD and SIGIO
        workdir, job_r, res_w, out_w, err_w = _announce(ctrl, opts)
        _isolate(opts, workdir, job_r, res_w, out_w, err_w)
        _scratch(workdir)
        filename, main = _block_setting(workdir)
        job = read_job(3)
        if job is None:  # the hub closed our job pipe: retired
            shutil.rmtree(workdir, ignore_errors=True)
            os._exit(0)
        write_all(4, ACK)  # the job is ours now: had we died before this, the hub would hand it on
        if job.get("mode") == "session":
            session_main(job, workdir)
        else:
            block_main(job, workdir, filename, main)
    finally:
        os._exit(70)


def _announce(ctrl: socket.socket, opts) -> tuple[str, int, int, int, int]:
    """Make the working directory and the four pipes, and hand the hub its ends; the spare's own ends returned.

    Returns the directory and the spare's ends: job (read), result, stdout, stderr (write).
    """
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
    return workdir, job_r, res_w, out_w, err_w


def _isolate(opts, workdir: str, job_r: int, res_w: int, out_w: int, err_w: int) -> None:
    """Own session, the spare's fds in place and no other, confined: nothing a block can reach beyond its own.

    fds 0-2: /dev/null and the stdout and stderr pipes; 3: jobs, 4: results (both close-on-exec).
    """
    os.setsid()  # own session and process group: killed as a whole
    devnull = os.open(os.devnull, os.O_RDWR)
    # Out of the way first (fds >= 64), then into place.
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


def _scratch(workdir: str) -> None:
    """The working directory as the only place to write (cwd, HOME, temporary files), and fresh randomness."""
    os.chdir(workdir)
    for variable in ("HOME", "TMPDIR", "MPLCONFIGDIR"):  # scratch space: the only place it can write
        os.environ[variable] = workdir
    tempfile.tempdir = workdir
    reseed()


def _block_setting(workdir: str) -> tuple[str, types.ModuleType]:
    """Everything that does not depend on the code, done before it arrives; the block's filename and __main__.

    A fresh __main__, the interpreter's stdio on our pipes, and one pass through the parse/compile
    machinery (its pages are then this process's own, not copy-on-write faults on the critical path).
    """
    filename = workdir + "/tmp.py"
    if _MAIN:  # made by the zygote, never used there
        main = _MAIN[0]
        main.__dict__["__file__"] = filename
        sys.modules["__main__"] = main
    else:
        main = fresh_main(filename)
    sys.argv = [filename]  # sys.path stays the zygote's: no directory a block can write is on it
    if _STDIO:  # made by the zygote, never used there: unwritten, as if new
        sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = _STDIO[:3]
    else:
        sys.stdin = sys.__stdin__ = stdio(0, "r", "strict")
        sys.stdout = sys.__stdout__ = stdio(1, "w", "strict")
        sys.stderr = sys.__stderr__ = stdio(2, "w", "backslashreplace", line_buffering=True)
    compile(program.block_program("x = [1, 2.5, 'a']\nx"), "<warm>", "exec", dont_inherit=True)
    return filename, main


def max_fd() -> int:
    try:
        return max(os.sysconf("SC_OPEN_MAX"), 1024)
    except (ValueError, OSError):
        return 65536


_MT_STATE: list = []  # numpy's global MT19937 state (key[624], pos) as bytes in place (see _mt_state)
MT_KEY0, MT_POS = (0x80000000).to_bytes(4, sys.byteorder), (623).to_bytes(4, sys.byteorder)


def reseed() -> None:
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


def prepare() -> None:
    """In the zygote, once, after the imports: what each spare would otherwise make on its own."""
    _mt_state()
    modules_main = sys.modules["__main__"]
    _MAIN.append(fresh_main("tmp.py"))
    sys.modules["__main__"] = modules_main
    try:
        _block_stdio()
    except OSError:
        _STDIO.clear()


def _mt_state() -> None:
    """In the zygote: find numpy's global MT19937 state, for reseed to write fresh entropy there.

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

    They are what spare_main would make: fd 0 (/dev/null in both), fds 1 and 2 made pipes for
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
                stdio(0, "r", "strict"),
                stdio(1, "w", "strict"),
                stdio(2, "w", "backslashreplace", line_buffering=True),
                # the zygote's own, which the spare's assignments would otherwise free (more faults)
                (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__),
            )
        )
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (r, w, *saved):
            os.close(fd)
