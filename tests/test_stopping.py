"""Stopping rules (service/stopping.py): the posterior's estimate, each rule's decision, and a replay of a real
model's recorded samples (skipped without ../shared/data)."""

from __future__ import annotations

import pytest

from bench.stop_rules import SAMPLES, load, replay
from service.stopping import StopRule, leader_holds, should_stop


def test_the_posterior_grows_with_the_lead_and_repeats_itself() -> None:
    unanimous = [leader_holds([votes], 8 - votes) for votes in range(1, 6)]
    assert unanimous == sorted(unanimous) and unanimous[0] < 0.8 < 0.95 < unanimous[2]
    assert leader_holds([3], 5) == leader_holds([3], 5)  # seeded by the votes: a seed's run stops where it did
    assert leader_holds([2, 2], 4) < 0.5  # a tie at the end counts against the leader
    assert leader_holds([3, 1], 4) < leader_holds([4], 4)  # a rival answer makes the leader less sure
    assert (leader_holds([2, 1], 0), leader_holds([1, 1], 0), leader_holds([], 3)) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("votes", "remaining", "stops"),
    [
        ([5], 3, {StopRule.UNBEATABLE, StopRule.POSTERIOR}),
        ([3], 5, {StopRule.POSTERIOR}),  # the posterior is sure long before the leader is unbeatable
        ([2], 6, set()),
        ([3, 3], 2, set()),
        ([4, 1], 2, {StopRule.UNBEATABLE, StopRule.POSTERIOR}),
        ([1, 1], 0, {StopRule.UNBEATABLE, StopRule.POSTERIOR, StopRule.NONE}),  # nobody left: every rule stops
    ],
)
def test_each_rule_stops_when_it_should(votes: list[int], remaining: int, stops: set[StopRule]) -> None:
    assert {rule for rule in StopRule if should_stop(rule, votes, remaining)} == stops


@pytest.mark.data
def test_on_a_real_models_samples_the_posterior_saves_samples_and_keeps_the_answer() -> None:
    if not SAMPLES.is_file():
        pytest.skip(f"{SAMPLES} is absent (../shared/data)")
    outcomes = replay(load(), orders=20)
    unbeatable, posterior, none = (outcomes[rule] for rule in (StopRule.UNBEATABLE, StopRule.POSTERIOR, StopRule.NONE))
    assert unbeatable.same_as_full == unbeatable.votes  # exact: it never changes the answer
    assert posterior.same_as_full >= 0.99 * posterior.votes
    assert posterior.samples < 0.7 * unbeatable.samples < none.samples
    assert abs(posterior.right - none.right) <= 0.005 * none.votes
