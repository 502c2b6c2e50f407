"""A real Prometheus server (Debian's package) scraping services under test, and its HTTP API."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.servers import free_port, wait_until_up

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "sctir.json"


def prometheus_binary() -> str:
    """The server binary; fails under SCTIR_REQUIRE_PROMETHEUS=1, else skips naming the package."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("SCTIR_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("SCTIR_REQUIRE_PROMETHEUS=1 but no prometheus binary on PATH")
        pytest.skip("no prometheus server binary (Debian package 'prometheus')")
    return binary


@contextmanager
def prometheus_scraping(job: str, service_url: str, workdir: Path) -> Iterator[str]:
    """Yields the URL of a Prometheus that scrapes `service_url`/metrics every second as `job`."""
    binary = prometheus_binary()
    config = workdir / "prometheus.yml"
    target = service_url.removeprefix("http://")
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: {job}, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "prometheus.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/-/ready", timeout_s=60)
        if not wait_for(lambda: query(url, f'up{{job="{job}"}} == 1')):
            raise RuntimeError(f"Prometheus never scraped {service_url}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus_url: str, expr: str) -> list[dict]:
    """An instant query; Grafana's $__rate_interval becomes 1m (scrapes here are 1 s apart)."""
    expr = expr.replace("$__rate_interval", "1m")
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert response["status"] == "success", (expr, response)
    return response["data"]["result"]


def scalar(prometheus_url: str, expr: str) -> float:
    """The value of a query that returns one series."""
    (series,) = query(prometheus_url, expr)
    return float(series["value"][1])


def wait_for(predicate: Callable[[], object], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return bool(predicate())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel in the shipped dashboard."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def panels_without_data(prometheus_url: str, queries: list[tuple[str, str]]) -> list[tuple[str, str, list[float]]]:
    """(title, query, values) of each query that returns no finite value."""
    empty = []
    for title, expr in queries:
        values = [float(series["value"][1]) for series in query(prometheus_url, expr)]
        if not any(math.isfinite(v) for v in values):
            empty.append((title, expr, values))
    return empty
