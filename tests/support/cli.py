"""`sctir` as a subprocess in tests: the command and an environment with the default log settings."""

from __future__ import annotations

import os
import sys

SCTIR = [sys.executable, "-m", "service.cli"]


def default_env() -> dict[str, str]:
    """This environment without log settings: the tests see the defaults."""
    log_variables = ("SCTIR_LOG_", "VLLM_LOGGING_", "VLLM_CONFIGURE_LOGGING", "TORCH_LOGS", "TORCH_CPP_LOG_LEVEL")
    return {k: v for k, v in os.environ.items() if not k.startswith(log_variables)}
