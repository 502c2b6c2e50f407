"""The sandbox runner: executes model-written Python blocks in milliseconds. Stdlib only.

One program, `python3 -I <path>/runner` (this directory; __main__.py), runs inside the sandbox
container as its entry process (PID 1), or on the host as a plain subprocess for the `local`
executor, and serves execution requests over its stdin/stdout with a framed protocol (wire.py).
This file imports nothing: the host reads the protocol with `from sandbox.runner.wire import ...`
without loading the runner.

Processes (all the same unprivileged user):

    hub (the program: PID 1 in a container; hub.py, runs.py, supervisor.py, loop.py)
     |-- zygote (the program with --zygote, spawned by exec: a clean interpreter; zygote.py)
     |     imports numpy/sympy/... once, warms them up, gc.freeze()s, then
     |     only ever forks: it never sees a request, a code block or an output
           |-- spare, spare, ... (forked ahead of demand, each waiting on its
                 job pipe; the zygote reports their exit status to the hub; spare.py,
                 then child.py runs its block or session)

The modules, one concept each (the zygote and its spares import none of the hub's four):

    wire.py        the framed protocol: frames, requests and responses, jobs for a spare
    hardening.py   what each process does to itself: prctl, no dumps, huge pages
    confine.py     Landlock: what an execution's files and signals can reach
    program.py     how a block becomes a program, its traceback, the `session` namespace
    zygote.py      the zygote: preloads, warms up, forks spares
    spare.py       a spare: everything set up ahead of its job, then waits for one
    child.py       the process that runs a block (as `python3 tmp.py`) or a session
    loop.py        the hub's event loop: selector, timers, the host's stream
    supervisor.py  the zygote's lifecycle, spawning, reaping, strays, the container's health
    runs.py        executions: their outputs, results and endings
    hub.py         requests from the host
    __main__.py    the bootstrap and the command line

An execution hands the block to a waiting spare, which runs it at once: the
fork, the imports and the per-process set-up are all off the critical path.
`last_block` spares run one block as the reference's `python3 tmp.py` would (the
preamble, auto-print, stdout/stderr on pipes, the reference's trimmed traceback,
the exit status) and exit; a `session` spare keeps its namespace and serves
the candidate's later blocks. Since spares come from the zygote, whose memory
never held request data, no candidate can find another's code or output in
its own memory; spares are not dumpable, so they cannot read each other's
memory (/proc/PID/mem, ptrace) or the hub's environment either; and where the
kernel has Landlock, each spare is in a domain of its own (confine.py):
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
"""
