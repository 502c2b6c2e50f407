"""Problem affinity: every step of a problem goes to one engine replica while it is alive and has room.

The problem's prompt and each candidate's earlier steps sit in that replica's vLLM prefix cache, so a step
routed there prefills only what is new. The routing key is the handle call's session id (RayEngine sets it
to the problem); each replica is ranked by rendezvous (highest random weight) hashing of key and replica
id, so every solver replica's router picks the same replica for a problem without sharing any state, and a
replica that joins or leaves moves only the problems that rank it first.

The preferred replica is one rank; all others are the next, where Serve's own selection takes the least
loaded. Serve moves to the next rank when the preferred replica refuses the step: at its
max_ongoing_requests steps in flight (the deployment's option, the threshold at which a problem spills
over), or when it is dead. A call without a key is routed to the least loaded replica.

A replica chosen for a request is given to that very request. Serve (2.60) matches them by internal
request id, which every handle call made while one HTTP request is handled inherits: a solve's concurrent
steps all carry their /solve request's, and all but the first would wait forever (Serve's own routers
fall back to first-come order, which would hand one problem's replica to another problem's step).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from ray.serve._private.common import RequestMetadata
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

Replica = TypeVar("Replica")


def rendezvous_score(key: str, replica_id: str) -> int:
    """The weight of `replica_id` for `key`: the replica with the highest weight is the key's."""
    digest = hashlib.blake2b(f"{key}\0{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preferred_first(key: str, replicas: Sequence[Replica], replica_id: Callable[[Replica], str]) -> list[Replica]:
    """`replicas` from the key's preferred one down (`replica_id(replica)` names each)."""
    return sorted(replicas, key=lambda replica: rendezvous_score(key, replica_id(replica)), reverse=True)


class AffinityRouter(RequestRouter):
    """Ray Serve request router of the engine deployment: the problem's replica first, then the least loaded."""

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is None or not pending_request.metadata.session_id:
            return [candidate_replicas]
        # Back off between passes over the ranks when every replica is full, as Serve's own routers do.
        pending_request.routing_context.should_backoff = True
        ranked = preferred_first(pending_request.metadata.session_id, candidate_replicas, _unique_id)
        return [ranked[:1], ranked[1:]]

    def _fulfill_next_pending_request(
        self, replica: RunningReplica, request_metadata: RequestMetadata | None = None
    ) -> None:
        """Give `replica` to the request it was chosen for (the one whose metadata this is: see the module)."""
        for pending in self._pending_requests_to_fulfill:
            if pending.metadata is request_metadata and not pending.future.done():
                self._cancel_routing_task_for_pending_request(pending)
                self._record_queue_wait_time(pending)
                pending.future.set_result(replica)
                self._remove_pending_request_from_indices(pending)
                return


def _unique_id(replica: RunningReplica) -> str:
    return replica.replica_id.unique_id
