"""A real Prometheus server scrapes the running service; every dashboard query returns data."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.api import create_app
from service.components import make_executor
from service.settings import Settings
from tests.doubles import ScriptedEngine
from tests.servers import free_port, serve_in_thread, wait_until_up
from tests.test_sandbox_docker import require_docker

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "sctir.json"
CODE = "```python\nprint(2)\n```\n```output\n"


def split_votes(candidate: int, step: int, prompt: str) -> tuple[str, float]:
    """Candidates 0-2 agree, 3 does not; some take longer so the latencies spread."""
    answer = "5" if candidate == 3 else "4"
    return [CODE, f"$\\boxed{{{answer}}}$"][step], 0.05 * candidate


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(prometheus URL, service URL) with Prometheus scraping the service every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("SCTIR_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("SCTIR_REQUIRE_PROMETHEUS=1 but no prometheus binary on PATH")
        pytest.skip("no prometheus server binary (Debian package 'prometheus')")
    require_docker()  # the sandbox pool's panels need the real pool
    settings = Settings(num_samples=4, answer_mode="aimo", sandbox_pool_size=1, sandbox_pool_name="sctir-observability")
    app = create_app(settings, engine=ScriptedEngine(split_votes), executor=make_executor(settings))
    with serve_in_thread(app, "/healthz") as service:
        workdir = tmp_path_factory.mktemp("prometheus")
        config = workdir / "prometheus.yml"
        target = service.removeprefix("http://")
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs: [{{job_name: sctir, static_configs: [{{targets: ['{target}']}}]}}]\n"
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
            yield url, service
        finally:
            process.terminate()
            process.wait(timeout=30)


def query(prometheus_url: str, expr: str) -> list[dict]:
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert response["status"] == "success", (expr, response)
    return response["data"]["result"]


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_every_dashboard_query_returns_data(prometheus: tuple[str, str]) -> None:
    prometheus_url, service = prometheus
    assert wait_for(lambda: query(prometheus_url, 'up{job="sctir"} == 1')), "the service was never scraped"
    for seed in range(4):
        response = httpx.post(f"{service}/solve", json={"problem": "2+2?", "seed": seed}, timeout=60)
        assert response.status_code == 200
        time.sleep(1.0)  # spread the solves over scrapes, so rates see them
    time.sleep(3.0)
    queries = dashboard_queries()
    assert len(queries) >= 14
    empty = []
    for title, expr in queries:
        result = query(prometheus_url, expr.replace("$__rate_interval", "1m"))
        values = [float(series["value"][1]) for series in result]
        if not any(math.isfinite(v) for v in values):
            empty.append((title, expr, values))
    assert not empty, f"panels without data: {empty}"
    answered = query(prometheus_url, 'sum(sctir_solve_duration_seconds_count{outcome="answered"})')
    assert float(answered[0]["value"][1]) == 4
