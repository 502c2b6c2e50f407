"""The metrics move as the solves they describe: scraped over HTTP from the running service."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sandbox.executors import LocalExecutor
from service.api.app import create_app
from service.settings import Settings
from tests.support.doubles import ScriptedEngine
from tests.support.servers import serve_in_thread

CODE = "Compute:\n```python\nprint(1)\n```\n```output\n"


def three_of_four(candidate: int, step: int, prompt: str) -> tuple[str, float]:
    answer = "8" if candidate == 3 else "7"
    return [CODE, f"So $\\boxed{{{answer}}}$."][step], 0.0


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = Settings(num_samples=4, early_stop=False, answer_mode="aimo")
    app = create_app(settings, engine=ScriptedEngine(three_of_four), executor=LocalExecutor(concurrency=2))
    with serve_in_thread(app, "/healthz") as base:
        yield base


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_three_of_four_vote_is_recorded(url: str) -> None:
    before = scrape(url)
    body = httpx.post(f"{url}/solve", json={"problem": "p"}, timeout=60).json()
    assert body["answer"] == "7" and body["agreement"] == 0.75
    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("sctir_vote_agreement_count") == 1
    assert delta("sctir_vote_agreement_sum") == pytest.approx(0.75)
    assert delta("sctir_vote_agreement_bucket", le="0.7") == 0
    assert delta("sctir_vote_agreement_bucket", le="0.75") == 1
    assert delta("sctir_candidates_total", status="answered") == 4
    assert delta("sctir_candidates_total", status="pruned") == 0
    assert delta("sctir_candidate_steps_count") == 4 and delta("sctir_candidate_steps_sum") == 8
    assert delta("sctir_code_executions_total", result="ok") == 4
    assert delta("sctir_code_execution_duration_seconds_count") == 4
    assert delta("sctir_solve_duration_seconds_count", outcome="answered") == 1
    assert delta("sctir_tokens_total", kind="completion") == body["usage"]["completion_tokens"]
    assert delta("sctir_early_stops_total") == 0


def test_gauges_and_process_metrics(url: str) -> None:
    samples = scrape(url)
    assert samples[("sctir_engine_ready", ())] == 1
    assert samples[("sctir_requests_in_flight", ())] == 0 and samples[("sctir_requests_queued", ())] == 0
    assert ("process_cpu_seconds_total", ()) in samples  # the process-wide registry is exported too
