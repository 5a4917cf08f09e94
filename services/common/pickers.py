"""Which Triton replica takes a call: the strategies every modality can use.

A picker chooses among the candidates the replica set offers (ready, not ejected) and says why; the
backend makes the call and tells the picker when it is `done` (with what the replica reported).
Ties are broken at random, so several service replicas — several pickers, each with its own view —
do not all send their next call to the same Triton.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.replicas import Replica

UNIT_CHARS = 256  # characters of prompt in one unit of prefill (the prefix picker's default block)


@dataclass(slots=True)
class Decision:
    """A pick: the replica, why it was chosen, and whatever the picker wants back when it is done."""

    replica: Replica
    reason: str
    state: Any = field(default=None)


class Picker:
    """Base: `pick` one of `candidates` (never empty) for a call of `model`."""

    name = "picker"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = rng or random.Random()

    def pick(self, model: str, candidates: Sequence[Replica], prompt: str | None = None) -> Decision:
        raise NotImplementedError

    def prefill_units(self, decision: Decision, prompt: str | None = None) -> float:
        """What stands before the call's first response, in units of one prompt block's prefill: the
        prompt's blocks (UNIT_CHARS characters each) once for itself and once more for every other call
        of ours on the replica (the PrefixPicker knows better: cache hits, the engine's queue)."""
        blocks = len(prompt or "") // UNIT_CHARS + 1
        return blocks * (1 + max(0, decision.replica.in_flight))

    def started(self, decision: Decision) -> None:
        """The call's first response arrived (a generation's prefill is over)."""

    def done(self, decision: Decision, prompt_tokens: int | None = None, cached_tokens: int | None = None) -> None:
        """The call ended; `prompt_tokens`/`cached_tokens` as the replica reported them, when it did."""

    def forget(self, replica: Replica) -> None:
        """`replica` lost its state (ejected, restarted, removed)."""

    def _least(self, candidates: Sequence[Replica], cost) -> Replica:
        """The candidate of least `cost`, ties at random."""
        best, best_cost = [], None
        for replica in candidates:
            value = cost(replica)
            if best_cost is None or value < best_cost:
                best, best_cost = [replica], value
            elif value == best_cost:
                best.append(replica)
        return best[0] if len(best) == 1 else self._random.choice(best)


class RoundRobin(Picker):
    """Each call to the next candidate in turn (gRPC's round_robin, per call)."""

    name = "round_robin"

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self._turn = itertools.count(self._random.randrange(1 << 16))

    def pick(self, model: str, candidates: Sequence[Replica], prompt: str | None = None) -> Decision:
        return Decision(candidates[next(self._turn) % len(candidates)], self.name)


class LeastRequest(Picker):
    """The candidate with the fewest requests outstanding: this process's calls in flight there, or
    what its engine reports when that is more (other pickers' calls)."""

    name = "least_request"

    def pick(self, model: str, candidates: Sequence[Replica], prompt: str | None = None) -> Decision:
        return Decision(self._least(candidates, lambda r: r.outstanding(model)), self.name)


STRATEGIES: dict[str, type[Picker]] = {"round_robin": RoundRobin, "least_request": LeastRequest}
