"""Which Triton replica generates a prompt: prefix affinity weighed against load.

A replica that already holds a prompt's prefix in its KV cache skips that much prefill, so the first
token comes many times sooner; but sending every request of a popular prefix to one replica makes it
the bottleneck (llm-d measured 55% success with prefix-only scoring). The `prefix` strategy estimates,
for each candidate replica r, the latency the request would add there, in one unit — the time to
prefill one block of prompt — as NVIDIA Dynamo's KV router counts blocks:

    cost(r) = prefix_weight × (new(r) × (1 + decoding(r)) + queued(r))
            + load_weight   × context(r)

where new(r) is the prompt blocks r would prefill for this request (its own time to first token),
times one more for every request decoding on r (one forward pass carries prefill and decode, so a
prefill stalls every sequence of r's batch for as long); queued(r) the prefill r has yet to do for
requests already sent; context(r) the blocks r is decoding.

- *Prompt blocks to prefill*: the rendered prompt cut into blocks of `block_chars` characters (~4
  characters a token), chained hashes (each block's hash covers everything before it), looked up in an
  approximate per-replica index (PrefixIndex): the blocks this service routed there recently, less
  what it has learnt the replica evicted (a replica that reports far fewer cached tokens than the
  index expected holds less than the index thought: its index capacity shrinks).
- *Queued, decoding, context*: this service's calls on r — those with no first token yet (their
  uncached blocks are queued prefill), those generating (decoding, their prompt blocks context) — plus
  the requests other clients have there (its `vllm:num_requests_running` + `_waiting`, scraped off the
  request path, less ours when it was read; waiting ones count as queued prefill) at the mean size of
  ours. A decode step reads every sequence's whole context, so each one slows r a little; but a prefill
  costs far more per token (compute-bound) than a token of context costs a decode step (memory-bound):
  hence a small `load_weight` by default (`make bench` compares).

A cache hit (new ≈ 1) stays where its prefix is until that replica is far busier; a miss goes where it
stalls the fewest and waits the least.

The lowest cost wins. When the index knows nothing of the prompt, the replica its first block maps to
by rendezvous hashing (a stable hash: the same in every text-service replica) costs `affinity` × the
prompt's blocks less: pickers that have never seen a prefix still agree where it goes, so several text-service replicas
don't scatter one tenant over every Triton; load overrides it as soon as the difference is larger.
Remaining ties go at random, so pickers with the same view don't all choose the same replica.

Several text-service replicas: a PrefixView (services.text.prefix_view) attached to the picker shares
every picker's placements and calls in flight over NATS, so that each decides with the whole
cluster's index and load, as one picker would (docs/routing.md); without it, or while its bus is
gone, the picker decides on its own index and the scraped gauges, as above. The block hashes are
stable across processes (CRC-32 of each block, chained through the hash of a tuple of integers,
which Python does not randomise) so that pickers can exchange them.
"""

from __future__ import annotations

import random
import statistics
import time
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.metrics import CACHED_TOKENS, PREFIX_MATCH
from services.common.pickers import STRATEGIES, Decision, Picker
from services.common.replicas import Replica
from services.text.prefix_view import InFlight, PrefixView

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
        """Chained hashes of the prompt's full blocks of `block_chars` UTF-8 bytes, the same in every
        process (CRC-32 per block, chained by hashing a tuple of ints: not randomised by Python)."""
        size = self.block_chars
        data = memoryview(prompt.encode("utf-8", "surrogatepass"))
        h, out, crc = zlib.crc32(model.encode()), [], zlib.crc32
        for start in range(0, len(data) - size + 1, size):
            h = hash((h, crc(data[start:start + size])))
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

    blocks: int  # prompt blocks (context)
    new_blocks: int  # of which the replica was expected to prefill
    hashes: list[int]
    expected: float  # the share of the prompt expected cached on the replica
    model: str
    units: float = 0.0  # prefill before its first token, in blocks: its own and the queue's (cost model)
    prefilling: bool = True  # no first token yet


class PrefixPicker(Picker):
    """Lowest prefill-and-load cost (see the module's docstring)."""

    name = "prefix"

    def __init__(
        self, prefix_weight: float = 1.0, load_weight: float = 0.1, affinity: float = 0.5, block_chars: int = 256,
        index_blocks: int = 8192, rng: random.Random | None = None,
    ) -> None:
        super().__init__(rng)
        self.prefix_weight = prefix_weight
        self.load_weight = load_weight
        self.affinity = affinity
        self.index = PrefixIndex(block_chars, index_blocks)
        self._prefill: dict[str, int] = {}  # address -> uncached blocks of our calls without a first token
        self._prefilling: dict[str, int] = {}  # address -> our calls there without a first token
        self._context: dict[str, int] = {}  # address -> prompt blocks of our calls in flight there
        self._calls: dict[str, int] = {}  # address -> our calls in flight there
        self._sized: set[str] = set()  # replicas whose index capacity came from their own report
        self.view: PrefixView | None = None  # the other pickers' placements and calls (PrefixView.attach)

    def _terms(self, replica: Replica, model: str, mean_context: float, mean_new: float) -> tuple[float, float, float]:
        """(queued, decoding, context) of the module's docstring, on `replica` now."""
        address = replica.address
        queued: float = self._prefill.get(address, 0)
        decoding: float = self._calls.get(address, 0) - self._prefilling.get(address, 0)
        context: float = self._context.get(address, 0)
        remote = None if self.view is None else self.view.remote(address)
        if remote is not None:  # the other pickers' calls there, as they published them
            queued += remote.prefill
            decoding += remote.calls - remote.prefilling
            context += remote.context
        load = replica.load.get(model)
        if load is not None:
            waiting, others = load.waiting, load.others()
            if remote is not None and others:  # the engine's count includes the peers' calls: not twice
                unknown = max(0.0, others - remote.calls)
                waiting, others = waiting * unknown / others, unknown
            queued += waiting * mean_new  # the engine's queue: admitted only as others finish
            decoding += others
            context += others * mean_context
        return queued, decoding, context

    def _cost(self, replica: Replica, model: str, new_blocks: int, mean_context: float, mean_new: float) -> float:
        queued, decoding, context = self._terms(replica, model, mean_context, mean_new)
        return self.prefix_weight * (new_blocks * (1 + decoding) + queued) + self.load_weight * context

    def pick(self, model: str, candidates: Sequence[Replica], prompt: str | None = None) -> Decision:
        prompt = prompt or ""
        hashes = self.index.hashes(model, prompt)
        blocks = len(hashes) + 1  # the last, partial block is always prefilled
        matched = self.index.matches(hashes) if hashes else {}
        calls, prefill, context = sum(self._calls.values()), sum(self._prefill.values()), sum(self._context.values())
        if self.view is not None and self.view.live:
            r_calls, r_prefill, r_context = self.view.remote_totals()
            calls, prefill, context = calls + r_calls, prefill + r_prefill, context + r_context
        mean_context = context / calls if calls else blocks
        mean_new = prefill / calls if calls else blocks
        home = None if matched or not hashes or not self.affinity else _rendezvous(
            prompt[: self.index.block_chars], candidates)
        best: list[Replica] = []
        best_cost = 0.0
        for replica in candidates:
            cost = self._cost(replica, model, blocks - matched.get(replica.address, 0), mean_context, mean_new)
            if replica is home:
                cost -= self.prefix_weight * self.affinity * blocks
            if not best or cost < best_cost:
                best, best_cost = [replica], cost
            elif cost == best_cost:
                best.append(replica)
        replica = best[0] if len(best) == 1 else self._random.choice(best)
        address = replica.address
        hit = matched.get(address, 0)
        queued, decoding, _ = self._terms(replica, model, mean_context, mean_new)
        units = (blocks - hit) * (1 + decoding) + queued  # what stands before its first token (stalls)
        self._size_from_report(replica, model)
        self.index.insert(address, hashes)
        new_blocks = blocks - hit
        self._prefill[address] = self._prefill.get(address, 0) + new_blocks
        self._prefilling[address] = self._prefilling.get(address, 0) + 1
        self._context[address] = self._context.get(address, 0) + blocks
        self._calls[address] = self._calls.get(address, 0) + 1
        if self.view is not None:
            self.view.placed(address, model, hashes, blocks, new_blocks)
        expected = hit / blocks
        PREFIX_MATCH.labels(model).observe(expected)
        reason = "prefix" if hit else "load"
        return Decision(replica, reason, _Placed(blocks, new_blocks, hashes, expected, model, units))

    def _size_from_report(self, replica: Replica, model: str) -> None:
        """The index holds about as much as the replica's KV cache, once the replica says how much."""
        if replica.address in self._sized:
            return
        load = replica.load.get(model)
        if load is not None and load.kv_capacity_tokens:
            self.index.resize(replica.address, load.kv_capacity_tokens * CHARS_PER_TOKEN // self.index.block_chars)
            self._sized.add(replica.address)

    def prefill_units(self, decision: Decision, prompt: str | None = None) -> float:
        return decision.state.units

    def started(self, decision: Decision) -> None:
        if self._started(decision) and self.view is not None:
            self.view.started(decision.replica.address, decision.state.new_blocks)

    def _started(self, decision: Decision) -> bool:
        placed: _Placed = decision.state
        if not placed.prefilling:
            return False
        placed.prefilling = False
        address = decision.replica.address
        self._prefill[address] = self._prefill.get(address, 0) - placed.new_blocks
        self._prefilling[address] = self._prefilling.get(address, 0) - 1
        return True

    def done(self, decision: Decision, prompt_tokens: int | None = None, cached_tokens: int | None = None) -> None:
        placed: _Placed = decision.state
        address = decision.replica.address
        was_prefilling = self._started(decision)
        if self.view is not None:
            self.view.done(address, placed.blocks, placed.new_blocks if was_prefilling else 0)
        self._context[address] = self._context.get(address, 0) - placed.blocks
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

    def own_load(self) -> dict[str, InFlight]:
        """This picker's calls in flight per Triton replica (what its PrefixView's heartbeat publishes)."""
        return {address: InFlight(calls, self._prefilling.get(address, 0), self._prefill.get(address, 0),
                                  self._context.get(address, 0))
                for address, calls in self._calls.items() if calls > 0}


def _rendezvous(key: str, candidates: Sequence[Replica]) -> Replica:
    """The candidate `key` maps to by highest-random-weight hashing (stable across processes)."""
    data = key.encode("utf-8", "surrogatepass")
    return max(candidates, key=lambda r: zlib.crc32(r.address.encode(), zlib.crc32(data)))


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


def view_cost_us(prompts: list[str], replicas: int = 4, model: str = "sim") -> dict[str, float]:
    """What the shared view (services.text.prefix_view) adds per request, in µs (p50, p99), in this
    process: `publish` — the view's calls on the request's path (its placement, start and end encoded
    and queued); `apply` — one other
    picker's placement, start and end applied to this picker's index and load (each picker applies
    every other's, off the request's path). The bus's own send is batched in a task, not counted."""
    from services.common.replicas import Replica as _Replica

    pool = [_Replica("127.0.0.1", 20000 + i, 0, []) for i in range(replicas)]
    picker, receiver = PrefixPicker(rng=random.Random(1)), PrefixPicker()
    sender = PrefixView("nats://unused", origin=1)  # live, no bus: what it queues is taken with drain()
    sender.live = True
    inbox = PrefixView("nats://unused", origin=2)
    inbox.attach(receiver)
    inbox.live = True
    publish, apply = [], []
    clock = time.perf_counter_ns
    for prompt in prompts:
        decision = picker.pick(model, pool, prompt)
        picker.done(decision)
        placed: _Placed = decision.state
        address = decision.replica.address
        t0 = clock()  # what the picker's pick/started/done add with a live view
        sender.placed(address, model, placed.hashes, placed.blocks, placed.new_blocks)
        sender.started(address, placed.new_blocks)
        sender.done(address, placed.blocks, 0)
        publish.append((clock() - t0) / 1000)
        records = [r for part in sender.drain() for r in part]
        t1 = clock()
        for record in records:
            inbox.apply(record)
        apply.append((clock() - t1) / 1000)
    publish.sort()
    apply.sort()

    def q(values, f):
        return round(values[int(f * (len(values) - 1))], 2)

    return {"publish_p50_us": q(publish, 0.5), "publish_p99_us": q(publish, 0.99),
            "apply_p50_us": q(apply, 0.5), "apply_p99_us": q(apply, 0.99), "requests": len(prompts)}
