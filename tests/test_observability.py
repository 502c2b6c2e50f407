"""A real Prometheus server scrapes the running service; every dashboard query returns data.

The service here runs a scripted engine (the solver's own metrics are what is measured) on the
real Docker sandbox pool; the dashboard's vLLM panels are checked against the in-process vLLM
engine in tests/test_observability_vllm.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from service.api.app import create_app
from service.components import make_executor
from service.settings import Settings
from tests.support.docker import require_docker
from tests.support.doubles import ScriptedEngine
from tests.support.prometheus import (
    dashboard_queries,
    panels_without_data,
    prometheus_binary,
    prometheus_scraping,
    scalar,
)
from tests.support.servers import serve_in_thread

CODE = "```python\nprint(2)\n```\n```output\n"


def split_votes(candidate: int, step: int, prompt: str) -> tuple[str, float]:
    """Candidates 0-2 agree, 3 does not; some take longer so the latencies spread."""
    answer = "5" if candidate == 3 else "4"
    return [CODE, f"$\\boxed{{{answer}}}$"][step], 0.05 * candidate


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(prometheus URL, service URL) with Prometheus scraping the service every second."""
    prometheus_binary()
    require_docker()  # the sandbox pool's panels need the real pool
    settings = Settings(num_samples=4, answer_mode="aimo", sandbox_pool_size=1, sandbox_pool_name="sctir-observability")
    app = create_app(settings, engine=ScriptedEngine(split_votes), executor=make_executor(settings))
    with serve_in_thread(app, "/healthz") as service:
        with prometheus_scraping("sctir", service, tmp_path_factory.mktemp("prometheus")) as url:
            yield url, service


def test_every_dashboard_query_returns_data(prometheus: tuple[str, str]) -> None:
    prometheus_url, service = prometheus
    for seed in range(4):
        response = httpx.post(f"{service}/solve", json={"problem": "2+2?", "seed": seed}, timeout=60)
        assert response.status_code == 200
        time.sleep(1.0)  # spread the solves over scrapes, so rates see them
    time.sleep(3.0)
    queries = [(title, expr) for title, expr in dashboard_queries() if "vllm:" not in expr]
    assert len(queries) >= 14
    empty = panels_without_data(prometheus_url, queries)
    assert not empty, f"panels without data: {empty}"
    assert scalar(prometheus_url, 'sum(sctir_solve_duration_seconds_count{outcome="answered"})') == 4
