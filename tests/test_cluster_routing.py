"""The cluster's routing and bookkeeping without a cluster: problem keys, rendezvous ranking, the affinity
router's ranks, what a retried step tells its listener, and the ledger (tests/test_cluster.py runs them on
a real Ray cluster)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

RAY_MISSING = "Ray Serve is not installed: pip install 'ray[serve]==2.60.0' (the cluster extra)"
pytest.importorskip("ray.serve", reason=RAY_MISSING, exc_type=ImportError)

from service.cluster.engine import Told  # noqa: E402
from service.cluster.ledger import Ledger  # noqa: E402
from service.cluster.protocol import StepFailed, problem_of  # noqa: E402
from service.cluster.router import AffinityRouter, preferred_first  # noqa: E402
from service.engines.base import ContextExhausted, EngineError  # noqa: E402

REPLICAS = ["r1", "r2", "r3"]
KEYS = [f"problem-{i}" for i in range(600)]


@pytest.mark.parametrize(
    ("request_id", "problem"),
    [
        ("3f2a9c-0-1", "3f2a9c"),
        ("client-id-with-dashes-12-3", "client-id-with-dashes"),
        ("no-numbers-here", "no-numbers-here"),
        ("one-1", "one-1"),
        ("plain", "plain"),
    ],
)
def test_the_problem_of_a_step_is_its_request_id_without_candidate_and_step(request_id: str, problem: str) -> None:
    assert problem_of(request_id) == problem


def first(key: str, replicas: list[str]) -> str:
    return preferred_first(key, replicas, str)[0]


def test_every_key_has_one_replica_whatever_the_order_the_replicas_come_in() -> None:
    for key in KEYS[:50]:
        assert first(key, REPLICAS) == first(key, list(reversed(REPLICAS)))


def test_keys_spread_over_the_replicas() -> None:
    counts = {replica: sum(first(key, REPLICAS) == replica for key in KEYS) for replica in REPLICAS}
    assert all(150 <= count <= 250 for count in counts.values()), counts


def test_a_replica_leaving_moves_only_its_own_problems() -> None:
    before = {key: first(key, REPLICAS) for key in KEYS}
    after = {key: first(key, ["r1", "r3"]) for key in KEYS}
    assert {key for key in KEYS if before[key] != after[key]} == {key for key in KEYS if before[key] == "r2"}


def replica(unique_id: str) -> SimpleNamespace:
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=unique_id))


def pending(session_id: str) -> SimpleNamespace:
    return SimpleNamespace(
        metadata=SimpleNamespace(session_id=session_id), routing_context=SimpleNamespace(should_backoff=False)
    )


async def test_the_router_ranks_the_problems_replica_first_then_all_others() -> None:
    router = AffinityRouter.__new__(AffinityRouter)  # choose_replicas reads nothing of the router's state
    replicas = [replica(r) for r in REPLICAS]
    request = pending("problem-7")
    ranks = await router.choose_replicas(replicas, request)
    preferred = first("problem-7", REPLICAS)
    assert [[r.replica_id.unique_id for r in rank] for rank in ranks] == [
        [preferred],
        [r for r in preferred_first("problem-7", REPLICAS, str) if r != preferred],
    ]
    assert request.routing_context.should_backoff  # when every replica is full, back off between passes
    assert await router.choose_replicas(replicas, pending("")) == [replicas]  # no key: the least loaded of all


def test_a_retried_step_tells_only_what_goes_beyond_what_was_told(caplog: pytest.LogCaptureFixture) -> None:
    told: list[str] = []
    step = Told(told.append)
    step.text("The answer ")
    step.text("is")
    step.restart()  # the replica died; the step streams again from its start
    step.text("The ans")
    step.text("wer is 4")
    step.text("2.")
    assert told == ["The answer ", "is", " 4", "2."]
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        step.restart()
        step.text("Another text entirely.")  # its first 17 characters were told already
    assert told[-1] == "rely." and "differs" in caplog.text


def test_the_ledger_counts_steps_per_replica_and_retried_steps_and_forgets_the_oldest() -> None:
    ledger = Ledger(capacity=2)
    ledger.served("a-0-0", "r1")
    ledger.served("a-1-0", "r1")
    ledger.retried("a-1-1")
    ledger.served("a-1-1", "r2")
    assert (dict(ledger.of("a").replicas), ledger.of("a").retried_steps) == ({"r1": 2, "r2": 1}, 1)
    ledger.served("b-0-0", "r1")
    ledger.served("a-0-1", "r1")  # a was used last: b is now the oldest
    ledger.served("c-0-0", "r2")
    assert set(ledger.snapshot()) == {"a", "c"}
    assert ledger.of("b").replicas == {}


def test_an_engine_failure_crosses_the_handle_as_the_same_kind() -> None:
    exhausted = StepFailed.of(ContextExhausted("maximum context length exceeded"), "r1").error()
    other = StepFailed.of(EngineError("the vLLM engine is dead"), "r1").error()
    assert type(exhausted) is ContextExhausted and "r1" in str(exhausted)
    assert type(other) is EngineError and "dead" in str(other)
