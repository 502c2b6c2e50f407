"""When a vote may stop: rules that read the votes so far and how many candidates are still to come.

- `unbeatable` (the service's early stop today, exact): the leader wins whatever the remaining candidates
  answer (service.answers.Ballot.is_decided holds the tie-break details).
- `posterior` (Adaptive-Consistency, Aggarwal et al., EMNLP 2023, adapted to a fixed N): the probability
  that the current leader is still the majority once all N have voted, under a Dirichlet posterior over
  the answers seen plus one class for an answer not seen yet, is at least a threshold. Estimated by
  sampling: answer shares from Dirichlet(votes + prior), the remaining votes from those shares.
- `none`: every candidate votes (the reference's way).

The estimate is a pure function of the votes (its random generator is seeded by them), so a seed's run
stops where it stopped before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from enum import StrEnum

import numpy as np

PRIOR = 1.0  # Dirichlet concentration of each class seen, and of the class of answers not seen yet
DRAWS = 4000  # samples of the posterior: the estimate's standard error is at most 0.008


class StopRule(StrEnum):
    UNBEATABLE = "unbeatable"
    POSTERIOR = "posterior"
    NONE = "none"


def leader_holds(votes: Sequence[int], remaining: int, *, prior: float = PRIOR, draws: int = DRAWS) -> float:
    """P(the class with the most `votes` still has strictly the most once `remaining` more votes are cast).

    `votes`: votes per answer class, leader first (as Ballot.votes() orders them). A tie at the end counts
    as the leader losing: the estimate errs towards sampling on.
    """
    if not votes:
        return 0.0
    if remaining == 0:
        return 1.0 if len(votes) == 1 or votes[0] > votes[1] else 0.0
    counts = np.array([*votes, 0], dtype=float)  # the last class: answers not seen yet
    rng = np.random.default_rng(_seed_of(votes, remaining))
    shares = rng.dirichlet(counts + prior, size=draws)
    final = counts + rng.multinomial(remaining, shares)
    return float(np.mean(final[:, 0] > final[:, 1:].max(axis=1)))


def should_stop(rule: StopRule, votes: Sequence[int], remaining: int, *, threshold: float = 0.95) -> bool:
    """Whether `rule` stops the vote now, with `votes` cast (leader first) and `remaining` still to come.

    `unbeatable` here counts votes only (no tie-break by candidate index): the leader's lead exceeds what
    the remaining candidates could add to the runner-up.
    """
    if remaining == 0 or not votes:
        return remaining == 0
    if rule is StopRule.NONE:
        return False
    if rule is StopRule.UNBEATABLE:
        runner_up = votes[1] if len(votes) > 1 else 0
        return votes[0] > runner_up + remaining
    return leader_holds(votes, remaining) >= threshold


def _seed_of(votes: Sequence[int], remaining: int) -> int:
    digest = hashlib.blake2b(f"{list(votes)}:{remaining}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
