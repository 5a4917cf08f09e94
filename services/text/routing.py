"""Which Triton replica generates a prompt: prefix affinity weighed against load.

A replica that already holds a prompt's prefix in its KV cache skips that much prefill, so the first
token comes many times sooner; but sending every request of a popular prefix to one replica makes it
the bottleneck (llm-d measured 55% success with prefix-only scoring). The `prefix` strategy scores
each candidate replica r, as NVIDIA Dynamo's KV router does, in one unit — blocks of prompt:

    cost(r) = prefix_weight × (prompt blocks r would have to prefill) + load_weight × (blocks active on r)

- *Prefill blocks*: the rendered prompt cut into blocks of `block_chars` characters (~4 characters a
  token), chained hashes (each block's hash covers everything before it), looked up in an approximate
  per-replica index (PrefixIndex): the blocks this service routed there recently. It is corrected with
  what the replica reports back: when a replica says it had cached much less than the index expected,
  it evicted more than the index thought, and its index capacity shrinks.
- *Active blocks*: the prompt blocks of this service's calls in flight on r, plus, when r's engine
  exports its queue (`vllm:num_requests_running` + `_waiting`, scraped off the request path), the
  calls other clients had there when it was read (its count less ours at that moment), at the mean
  size of ours.

The lowest cost wins; ties go at random. Several text-service replicas each keep their own index and
in-flight counts, and the scraped queues show each picker the others' load, so they don't all pile onto
one replica (measured by `make bench`, "prefix, 2 pickers").
"""

from __future__ import annotations

import random
import statistics
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.metrics import CACHED_TOKENS, PREFIX_MATCH
from services.common.pickers import STRATEGIES, Decision, Picker
from services.common.replicas import Replica

CHARS_PER_TOKEN = 4  # what the index assumes when a replica tells its KV capacity in tokens


class PrefixIndex:
    """Approximate: which prompt blocks each replica holds in its KV cache (an LRU of block hashes
    per replica, bounded by `capacity_blocks`, which replicas' reports adjust)."""

    def __init__(self, block_chars: int = 256, capacity_blocks: int = 8192) -> None:
        self.block_chars = block_chars
        self.default_capacity = capacity_blocks
        self._holders: dict[int, set[str]] = {}  # block hash -> addresses of the replicas holding it
        self._lru: dict[str, OrderedDict[int, None]] = {}  # address -> its blocks, oldest first
        self.capacity: dict[str, int] = {}

    def hashes(self, model: str, prompt: str) -> list[int]:
        """Chained hashes of the prompt's full blocks (Python's hash: the index is this process's own)."""
        size, h, out = self.block_chars, hash(model), []
        for start in range(0, len(prompt) - size + 1, size):
            h = hash((h, prompt[start:start + size]))
            out.append(h)
        return out

    def matches(self, hashes: Sequence[int]) -> dict[str, int]:
        """Address -> how many leading blocks of `hashes` the replica holds (replicas with none left out)."""
        matched: dict[str, int] = {}
        holders = self._holders
        for i, h in enumerate(hashes):
            here = holders.get(h)
            if not here:
                break
            advanced = False
            for address in here:
                if matched.get(address, 0) == i:
                    matched[address] = i + 1
                    advanced = True
            if not advanced:
                break
        return matched

    def insert(self, address: str, hashes: Sequence[int]) -> None:
        """The replica holds these blocks now (most recently used)."""
        lru = self._lru.get(address)
        if lru is None:
            lru = self._lru[address] = OrderedDict()
        holders = self._holders
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                holders.setdefault(h, set()).add(address)
        self._trim(address)

    def resize(self, address: str, capacity_blocks: int) -> None:
        self.capacity[address] = max(16, capacity_blocks)
        self._trim(address)

    def _trim(self, address: str) -> None:
        lru = self._lru.get(address)
        if lru is None:
            return
        limit = self.capacity.get(address, self.default_capacity)
        while len(lru) > limit:
            h, _ = lru.popitem(last=False)
            here = self._holders.get(h)
            if here is not None:
                here.discard(address)
                if not here:
                    del self._holders[h]

    def forget(self, address: str) -> None:
        """The replica's cache is gone (it restarted, or left)."""
        for h in self._lru.pop(address, ()):
            here = self._holders.get(h)
            if here is not None:
                here.discard(address)
                if not here:
                    del self._holders[h]

    def size(self, address: str) -> int:
        return len(self._lru.get(address, ()))


@dataclass(slots=True)
class _Placed:
    """What the prefix picker remembers of a call until it is done."""

    blocks: int
    hashes: list[int]
    expected: float  # the share of the prompt expected cached on the replica
    model: str


class PrefixPicker(Picker):
    """Lowest prefix-and-load cost (see the module's docstring)."""

    name = "prefix"

    def __init__(
        self, prefix_weight: float = 1.0, load_weight: float = 1.0, block_chars: int = 256,
        index_blocks: int = 8192, rng: random.Random | None = None,
    ) -> None:
        super().__init__(rng)
        self.prefix_weight = prefix_weight
        self.load_weight = load_weight
        self.index = PrefixIndex(block_chars, index_blocks)
        self._active: dict[str, int] = {}  # address -> prompt blocks of our calls in flight there
        self._calls: dict[str, int] = {}  # address -> our calls in flight there
        self._sized: set[str] = set()  # replicas whose index capacity came from their own report

    def _active_blocks(self, replica: Replica, model: str, mean_blocks: float) -> float:
        ours = self._active.get(replica.address, 0)
        load = replica.load.get(model)
        return ours if load is None else ours + load.others() * mean_blocks

    def pick(self, model: str, candidates: Sequence[Replica], prompt: str | None = None) -> Decision:
        hashes = self.index.hashes(model, prompt or "")
        blocks = len(hashes) + 1  # the last, partial block is always prefilled
        matched = self.index.matches(hashes) if hashes else {}
        calls = sum(self._calls.values())
        mean_blocks = sum(self._active.values()) / calls if calls else blocks
        best: list[Replica] = []
        best_cost = 0.0
        for replica in candidates:
            cost = (self.prefix_weight * (blocks - matched.get(replica.address, 0))
                    + self.load_weight * self._active_blocks(replica, model, mean_blocks))
            if not best or cost < best_cost:
                best, best_cost = [replica], cost
            elif cost == best_cost:
                best.append(replica)
        replica = best[0] if len(best) == 1 else self._random.choice(best)
        address = replica.address
        hit = matched.get(address, 0)
        self._size_from_report(replica, model)
        self.index.insert(address, hashes)
        self._active[address] = self._active.get(address, 0) + blocks
        self._calls[address] = self._calls.get(address, 0) + 1
        expected = hit / blocks
        PREFIX_MATCH.labels(model).observe(expected)
        reason = "prefix" if hit else "load"
        return Decision(replica, reason, _Placed(blocks, hashes, expected, model))

    def _size_from_report(self, replica: Replica, model: str) -> None:
        """The index holds about as much as the replica's KV cache, once the replica says how much."""
        if replica.address in self._sized:
            return
        load = replica.load.get(model)
        if load is not None and load.kv_capacity_tokens:
            self.index.resize(replica.address, load.kv_capacity_tokens * CHARS_PER_TOKEN // self.index.block_chars)
            self._sized.add(replica.address)

    def done(self, decision: Decision, prompt_tokens: int | None = None, cached_tokens: int | None = None) -> None:
        placed: _Placed = decision.state
        address = decision.replica.address
        self._active[address] = self._active.get(address, 0) - placed.blocks
        self._calls[address] = self._calls.get(address, 0) - 1
        if cached_tokens is None or not prompt_tokens:
            return
        CACHED_TOKENS.labels(placed.model).inc(cached_tokens)
        if placed.expected - cached_tokens / prompt_tokens > 0.25:
            # The replica had evicted what the index still lists: it holds less than the index thought.
            held = self.index.size(address)
            self.index.resize(address, int(held * 0.8))
            self.index.insert(address, placed.hashes)  # what it holds now, after this call

    def forget(self, replica: Replica) -> None:
        self.index.forget(replica.address)
        self._sized.discard(replica.address)


PICKERS: dict[str, type[Picker]] = {**STRATEGIES, "prefix": PrefixPicker}


def make_picker(strategy: str, **prefix_options) -> Picker:
    """The text service's picker for a strategy name (`prefix` takes `prefix_options`)."""
    if strategy == "prefix":
        return PrefixPicker(**prefix_options)
    return PICKERS[strategy]()


def picker_cost_us(strategy: str, prompts: list[str], replicas: int = 4, model: str = "sim") -> dict[str, float]:
    """The picker's own cost per request in µs (p50, p99): `prompts` picked in turn over `replicas`
    idle replicas, each call done before the next, in this process (what `make bench` reports)."""
    from services.common.replicas import Replica as _Replica

    pool = [_Replica("127.0.0.1", 20000 + i, 0, []) for i in range(replicas)]
    picker = make_picker(strategy)
    costs = []
    for prompt in prompts:
        started = time.perf_counter_ns()
        decision = picker.pick(model, pool, prompt)
        costs.append((time.perf_counter_ns() - started) / 1000)
        picker.done(decision)
    costs.sort()
    return {"p50_us": round(statistics.median(costs), 2), "p99_us": round(costs[int(0.99 * (len(costs) - 1))], 2),
            "requests": len(costs)}
