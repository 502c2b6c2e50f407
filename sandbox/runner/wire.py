"""The runner's framed protocol: the host's requests and the runner's responses, and a spare's jobs.

Imported by the host too (`from sandbox.runner.wire import ...`): stdlib only, and nothing of the
runner's other modules.

Each message is a 4-byte big-endian length and that many bytes of UTF-8 JSON (surrogates passed
through). Requests (host -> runner):

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

Inside the runner, the hub hands a spare its job in the same frames, but binary (JOB, no JSON, for
the spare's sake), and the spare answers on its result pipe in JSON frames: ACK when it takes the
job, then its result, which carries the job's token.
"""

from __future__ import annotations

import json
import os
import struct

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
MAX_REQUEST_BYTES = 64 << 20
READ_CHUNK = 1 << 16  # larger reads cost an mmap/mremap/munmap each
RESET_NOTE = "The session state was reset."


def frame(data: bytes) -> bytes:
    return HEADER.pack(len(data)) + data


def encode(message: dict) -> bytes:
    return frame(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def decode(data: bytes) -> dict:
    return json.loads(data.decode("utf-8", "surrogatepass"))


ACK = encode({"ack": 1})


class FrameTooLarge(ValueError):
    """A frame's header announces more bytes than its stream may carry."""


def take_frame(buffer: bytearray, limit: int) -> bytes | None:
    """The body of the first whole frame in `buffer`, taken out of it; None while none is whole.

    Raises FrameTooLarge for a header over `limit` (whose body is never waited for).
    """
    if len(buffer) < HEADER.size:
        return None
    (size,) = HEADER.unpack_from(buffer)
    if size > limit:
        raise FrameTooLarge(f"a frame of {size} bytes")
    if len(buffer) < HEADER.size + size:
        return None
    body = bytes(buffer[HEADER.size : HEADER.size + size])
    del buffer[: HEADER.size + size]
    return body


JOB = struct.Struct(">?dqQ")  # session, timeout, cap, token; then the code (UTF-8, surrogates passed through)


def job_frame(session: bool, timeout: float, cap: int, token: int, code: str) -> bytes:
    """A job for a spare or a session (the hub's side of read_job): no JSON, for the spare's sake.

    `token` is fresh for every job and its result must carry it: a result that a block forges on
    the result pipe names no job that is not its own, and one that comes after its job's result
    (or for a job not yet sent) ends the session (see runs.Runs._on_message).
    """
    return frame(JOB.pack(session, timeout, cap, token) + code.encode("utf-8", "surrogatepass"))


def read_job(fd: int) -> dict | None:
    """The next job on the job pipe, or None at EOF (~30 page faults fewer than json in a spare)."""
    header = read_exact(fd, HEADER.size)
    if header is None:
        return None
    body = read_exact(fd, HEADER.unpack(header)[0])
    if body is None or len(body) < JOB.size:
        return None
    session, timeout, cap, token = JOB.unpack_from(body)
    code = body[JOB.size :].decode("utf-8", "surrogatepass")
    return {"mode": "session" if session else "block", "code": code, "cap": cap, "timeout": timeout, "token": token}


def read_exact(fd: int, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
