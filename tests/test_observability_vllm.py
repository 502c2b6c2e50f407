"""vLLM's own metrics reach Prometheus through the service's /metrics, and the dashboard shows them.

`sctir serve` with the in-process vLLM engine (the tiny random model on CPU) answers /solve
requests while a real Prometheus scrapes it; then every dashboard query over vllm:* series
returns data, and vLLM's token counts agree with the solver's own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.settings import Settings
from tests.support.prometheus import (
    dashboard_queries,
    panels_without_data,
    prometheus_binary,
    prometheus_scraping,
    scalar,
    wait_for,
)
from tests.support.servers import serve_in_thread
from tests.support.tiny_model import TINY_KV_CACHE_BYTES, TINY_MAX_MODEL_LEN

# Long enough to fill several KV-cache blocks, so the N candidates' shared prompt hits the prefix cache.
PROBLEM = "Find the sum of all positive integers n such that n squared plus 12 n is a perfect square. " * 4


@pytest.fixture(scope="module")
def prometheus(
    vllm_installed: None, tiny_model_dir: Path, vllm_cpu_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(prometheus URL, service URL): the service runs vLLM in-process, as the compose stack does."""
    prometheus_binary()
    settings = Settings(
        engine="vllm",
        model=str(tiny_model_dir),
        dtype="float32",
        max_model_len=TINY_MAX_MODEL_LEN,
        kv_cache_memory_bytes=TINY_KV_CACHE_BYTES,
        enforce_eager=True,
        executor="local",  # the random model writes no code worth a container; the pool has its own test
        num_samples=4,
        max_steps=2,
        max_new_tokens=24,
    )
    with serve_in_thread(create_app(settings), "/healthz", start_timeout_s=180) as service:
        assert httpx.get(f"{service}/readyz", timeout=10).status_code == 200
        with prometheus_scraping("sctir", service, tmp_path_factory.mktemp("prometheus")) as url:
            yield url, service


def test_vllm_panels_have_data_and_tokens_agree(prometheus: tuple[str, str]) -> None:
    prometheus_url, service = prometheus
    for seed in range(3):
        response = httpx.post(f"{service}/solve", json={"problem": PROBLEM, "seed": seed}, timeout=120)
        assert response.status_code == 200, response.text
        time.sleep(1.0)  # spread the solves over scrapes, so rates see them
    completion = 'sum(sctir_tokens_total{kind="completion"})'
    assert wait_for(lambda: scalar(prometheus_url, completion) > 0), "the solves were never scraped"
    time.sleep(2.0)  # a scrape after the last solve's metrics settled

    queries = [(title, expr) for title, expr in dashboard_queries() if "vllm:" in expr]
    assert len(queries) >= 6
    empty = panels_without_data(prometheus_url, queries)
    assert not empty, f"panels without data: {empty}"

    # The same tokens, counted by the solver (per step result) and by the engine.
    assert scalar(prometheus_url, "sum(vllm:generation_tokens_total)") == scalar(prometheus_url, completion)
    assert scalar(prometheus_url, "sum(vllm:prompt_tokens_total)") == scalar(
        prometheus_url, 'sum(sctir_tokens_total{kind="prompt"})'
    )
    # The candidates share the problem's prompt: vLLM served part of it from the prefix cache.
    assert scalar(prometheus_url, "sum(vllm:prefix_cache_hits_total)") > 0
    # Every step has finished: nothing left running or waiting in the engine.
    assert scalar(prometheus_url, "sum(vllm:num_requests_running) + sum(vllm:num_requests_waiting)") == 0
