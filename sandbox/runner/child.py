"""The process that runs an execution: one block as `python3 tmp.py` would, or a session's blocks.

A spare (spare.py) becomes one of these once it has its job. Modules are imported at the top, not
in the functions: an import statement in a spare, even of a module the zygote has, costs ~50
copy-on-write page faults (the first time).
"""

from __future__ import annotations

import atexit
import builtins
import linecache
import os
import resource
import shutil
import sys
import types

from . import program
from .wire import encode, frame, read_job, write_all

SESSION_BLOCKS = 32  # a session's CPU budget, in blocks' worth (a candidate has at most 16 steps)


def stdio(fd: int, mode: str, errors: str, line_buffering: bool = False):
    import io

    raw = io.FileIO(fd, mode, closefd=False)
    buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered, encoding="utf-8", errors=errors, line_buffering=line_buffering)


def fresh_main(filename: str | None):
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    if filename is not None:
        main.__dict__["__file__"] = filename
        main.__dict__["__cached__"] = None
    sys.modules["__main__"] = main
    return main


def remove_workdir(workdir: str) -> None:
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


def block_main(job: dict, workdir: str, filename: str, main) -> None:
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
            write_all(fd, data)
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
        if tb is not None and tb.tb_frame.f_code is block_main.__code__:
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
        write_all(4, frame(b'{"rc":%d,"t":%d}' % (rc, job["token"])))
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
    remove_workdir(workdir)
    os._exit(rc)


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


def session_main(job: dict, workdir: str) -> None:
    """A session: one namespace for all of a candidate's blocks; output captured in-process."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stdin = sys.__stdin__ = stdio(0, "r", "strict")
    sys.stdout = sys.__stdout__ = stdio(1, "w", "strict")
    sys.stderr = sys.__stderr__ = stdio(2, "w", "backslashreplace", line_buffering=True)
    sys.argv = [""]
    main = fresh_main(None)
    cap = int(job.get("cap", 65536))
    try:
        session = program.Session(cap, namespace=main.__dict__)
    except BaseException as error:
        failed = {"ok": False, "stdout": "", "error": f"{type(error).__name__}: {error}", "truncated": False}
        write_all(4, encode({**failed, "t": job["token"]}))
        os._exit(1)
    while job is not None:
        _limit_cpu(job, sessions=True)
        result = session.run(program.with_auto_print(job["code"]))
        write_all(4, encode({**result, "t": job["token"]}))
        job = read_job(3)
    os._exit(0)
