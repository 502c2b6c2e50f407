"""Safe by default: `sctir serve` refuses to listen beyond loopback without API keys unless told to.

The compose stack's solver listens on 0.0.0.0 inside its container and is told to
(SCTIR_ALLOW_UNAUTHENTICATED_PUBLIC, its port published on 127.0.0.1 only: tests/test_compose_profiles.py);
anyone else gets a one-line refusal before anything starts, naming both ways out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from service.cli.errors import CliError
from service.cli.serve import check_exposure, is_loopback
from service.exitcodes import ExitCode
from service.settings import Settings
from tests.support.servers import free_port


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_keys(host: str) -> None:
    assert is_loopback(host)
    check_exposure(Settings(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "solver.example.org", ""])
def test_beyond_loopback_without_keys_is_refused_unless_allowed(host: str, caplog: pytest.LogCaptureFixture) -> None:
    assert not is_loopback(host)
    with pytest.raises(CliError) as refused:
        check_exposure(Settings(host=host))
    assert refused.value.code == ExitCode.USAGE
    assert "SCTIR_API_KEYS" in str(refused.value) and "SCTIR_ALLOW_UNAUTHENTICATED_PUBLIC=true" in str(refused.value)
    check_exposure(Settings(host=host, api_keys=["k1"]))
    assert not caplog.records
    check_exposure(Settings(host=host, allow_unauthenticated_public=True))
    (warning,) = caplog.records
    assert warning.levelname == "WARNING" and "without API keys" in warning.getMessage()


def serve(*flags: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`sctir serve` on a free port with an engine that needs nothing (a remote one not running yet)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCTIR_")}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--engine", "remote", "--remote-url", "http://127.0.0.1:9/v1"]
        + ["--executor", "local", *flags],
        env=clean | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sctir_serve_refuses_all_interfaces_without_keys_in_one_line() -> None:
    process = serve("--host", "0.0.0.0", "--port", str(free_port()))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == ExitCode.USAGE
    (line,) = stderr.strip().splitlines()
    assert line.startswith("sctir: error: refusing to serve on 0.0.0.0 without API keys")
    assert "SCTIR_API_KEYS" in line and "SCTIR_ALLOW_UNAUTHENTICATED_PUBLIC=true" in line


def test_sctir_serve_listens_on_all_interfaces_when_told_to_and_says_so() -> None:
    port = free_port()
    process = serve("--host", "0.0.0.0", "--port", str(port), env={"SCTIR_ALLOW_UNAUTHENTICATED_PUBLIC": "true"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert process.poll() is None, process.communicate()[1]
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert f"serving on 0.0.0.0:{port} without API keys" in stderr
