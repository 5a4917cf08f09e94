"""The prefix pickers' shared routing view (services.text.prefix_view): what pickers exchange, how
each applies the others', and (with a real nats-server) publishing, replay, a lost bus and its return."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid

import pytest

from local.nats import NatsServer, nats_binary, server_info
from services.common.replicas import EngineLoad, Replica
from services.text.prefix_picker import PrefixPicker, picker_cost_us, view_cost_us
from services.text.prefix_view import (
    DONE,
    STARTED,
    InFlight,
    PrefixView,
    batch,
    encode_load,
    encode_placed,
    encode_state,
    unbatch,
)

MODEL = "sim"


def pool(n: int = 4) -> list[Replica]:
    return [Replica("127.0.0.1", 21000 + i, 0, []) for i in range(n)]


def prompt(tenant: int, question: str = "what?", blocks: int = 12) -> str:
    rng = random.Random(tenant)
    system = "".join(rng.choice("abcdefgh ") for _ in range(256 * blocks))
    return f"<|system|>{system}<|user|>{question}"


def connected(seed: int) -> tuple[PrefixPicker, PrefixView]:
    """A picker with a live view and no bus: what it would publish is taken with view.drain()."""
    picker = PrefixPicker(rng=random.Random(seed))
    view = PrefixView("nats://unused", origin=seed)
    view.attach(picker)
    view.live = True
    return picker, view


def exchange(*views: PrefixView) -> None:
    """Delivers what each view queued to every other (as the bus does)."""
    queued = [(v, [r for part in v.drain() for r in part]) for v in views]
    for sender, records in queued:
        for receiver in views:
            if receiver is not sender:
                for record in unbatch(batch(records)):
                    receiver.apply(record)


# -- the records ------------------------------------------------------------------------------------


def test_records_round_trip_through_a_batch():
    records = [encode_placed(7, "127.0.0.1:8001", MODEL, [1, -2, 2**62], 4, 3),
               encode_load(STARTED, 7, "127.0.0.1:8001", 0, 3), encode_load(DONE, 7, "127.0.0.1:8001", 4, 0),
               encode_state(7, {"a:1": InFlight(2, 1, 5, 9)})]
    assert unbatch(batch(records)) == records
    view, picker = PrefixView(origin=1), PrefixPicker()
    view.attach(picker)
    view.live = True
    view.apply(records[0])
    assert picker.index.matches([1, -2, 2**62]) == {"127.0.0.1:8001": 3}
    assert view.remote("127.0.0.1:8001") == InFlight(1, 1, 3, 4)
    view.apply(records[1])
    assert view.remote("127.0.0.1:8001") == InFlight(1, 0, 0, 4)
    view.apply(records[2])
    assert view.remote("127.0.0.1:8001") == InFlight(0, 0, 0, 0)
    view.apply(records[3])
    assert view.remote("a:1") == InFlight(2, 1, 5, 9) and view.remote("127.0.0.1:8001") is None


def test_a_view_ignores_its_own_records_and_counts_nothing_remote_unless_live():
    view, picker = PrefixView(origin=5), PrefixPicker()
    view.attach(picker)
    view.live = True
    view.apply(encode_placed(5, "a:1", MODEL, [1, 2], 3, 3))
    assert picker.index.matches([1, 2]) == {} and view.remote("a:1") is None
    view.apply(encode_placed(6, "a:1", MODEL, [1, 2], 3, 3))
    assert view.remote("a:1").calls == 1
    view.live = False
    assert view.remote("a:1") is None and view.remote_totals() == (0, 0, 0)


def test_block_hashes_are_the_same_in_every_process():
    code = ("from services.text.prefix_picker import PrefixIndex; "
            "print(PrefixIndex(256).hashes('sim', 'abc é ' * 200))")
    outs = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                           capture_output=True, text=True, check=True).stdout for seed in ("1", "2", "random")}
    assert len(outs) == 1 and len(eval(outs.pop())) == len(("abc é " * 200).encode()) // 256


# -- pickers that share a view ----------------------------------------------------------------------


def test_a_prefix_placed_by_one_picker_is_a_hit_for_every_other():
    replicas = pool()
    pickers = [connected(seed) for seed in range(4)]
    views = [v for _, v in pickers]
    homes = {}
    for tenant in range(12):  # each tenant's first request on picker tenant % 4, the next on another
        first = pickers[tenant % 4][0].pick(MODEL, replicas, prompt(tenant))
        pickers[tenant % 4][0].done(first)
        exchange(*views)
        homes[tenant] = first.replica
    for tenant in range(12):
        picker = pickers[(tenant + 1) % 4][0]
        again = picker.pick(MODEL, replicas, prompt(tenant, "and then?"))
        picker.done(again)
        exchange(*views)
        assert again.replica is homes[tenant] and again.reason == "prefix"


def test_without_the_view_other_pickers_miss():
    """The issue's failure: a picker that did not see the placement does not find the prefix."""
    replicas = pool()
    a, b = PrefixPicker(rng=random.Random(1)), PrefixPicker(rng=random.Random(2))
    a.done(a.pick(MODEL, replicas, prompt(1)))
    decision = b.pick(MODEL, replicas, prompt(1, "next"))
    assert decision.reason == "load"  # no hit known: chosen by load (and the rendezvous affinity)


def test_other_pickers_calls_in_flight_count_as_load():
    replicas = pool(2)
    (a, va), (b, vb) = connected(1), connected(2)
    busy = [a.pick(MODEL, replicas[:1], prompt(t)) for t in range(6)]  # six prefills queued on replica 0
    exchange(va, vb)
    assert vb.remote(replicas[0].address).prefilling == 6
    decision = b.pick(MODEL, replicas, prompt(99))
    assert decision.replica is replicas[1]
    for d in busy:
        a.started(d)
        a.done(d)
    exchange(va, vb)
    assert vb.remote(replicas[0].address) == InFlight(0, 0, 0, 0)


def test_engine_gauges_do_not_count_the_peers_calls_twice():
    replicas = pool(2)
    (a, va), (b, vb) = connected(1), connected(2)
    calls = [a.pick(MODEL, replicas[:1], prompt(t)) for t in range(4)]
    for d in calls:
        a.started(d)
    exchange(va, vb)
    replicas[0].load[MODEL] = EngineLoad(running=4, waiting=0, ours=0)  # the engine counts a's 4 calls
    queued, decoding, _ = b._terms(replicas[0], MODEL, 10, 10)
    assert decoding == 4 and queued == 0  # a's four, once
    vb.live = False  # bus lost: the engine's figure is all b knows
    queued, decoding, _ = b._terms(replicas[0], MODEL, 10, 10)
    assert decoding == 4


def test_a_heartbeat_replaces_a_peers_picture_and_silent_peers_expire():
    replicas = pool(2)
    (a, va), (_b, vb) = connected(1), connected(2)
    for t in range(3):
        a.pick(MODEL, replicas[:1], prompt(t))
    va.drain()  # lost on the way
    assert vb.remote(replicas[0].address) is None
    va.heartbeat()
    exchange(va, vb)
    assert vb.remote(replicas[0].address).calls == 3
    vb.expire(now=10**9)
    assert vb.remote(replicas[0].address) is None


def test_a_restarted_picker_learns_the_index_from_replayed_placements():
    replicas = pool()
    a, va = connected(1)
    homes = {}
    stored = []
    for tenant in range(8):
        d = a.pick(MODEL, replicas, prompt(tenant))
        a.done(d)
        stored += [r for r in va.drain()[0]]
        homes[tenant] = d.replica
    fresh, vf = connected(9)
    for record in stored:
        vf.apply(record, replay=True)
    assert vf.remote_totals() == (0, 0, 0)  # replayed placements teach the index, not the load
    for tenant, home in homes.items():
        assert fresh.pick(MODEL, replicas, prompt(tenant, "again")).replica is home


def test_the_views_added_cost_is_measured():
    prompts = [prompt(t % 8, f"q{t}") for t in range(200)]
    own = picker_cost_us("prefix", prompts)
    added = view_cost_us(prompts)
    assert own["p50_us"] > 0 and added["publish_p50_us"] > 0 and added["apply_p50_us"] > 0


# -- a real nats-server -----------------------------------------------------------------------------


async def until(predicate, what: str, timeout_s: float = 10.0) -> None:
    """Awaits a condition the event loop makes true (each turn yields to the view's tasks)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


async def _views_over(url: str, subject: str, stream: str, count: int = 2):
    pairs = []
    for seed in range(count):
        picker = PrefixPicker(rng=random.Random(seed))
        view = PrefixView(url, subject=subject, stream=stream, heartbeat_s=0.2, expiry_s=1.0, connect_timeout_s=1.0)
        view.attach(picker)
        pairs.append((picker, view, asyncio.create_task(view.run())))
    await until(lambda: all(v.live for _, v, _ in pairs), "views connected")
    return pairs


async def _stop(pairs) -> None:
    for _, _, task in pairs:
        task.cancel()
    await asyncio.gather(*(t for _, _, t in pairs), return_exceptions=True)


@pytest.fixture
def nats_server(tmp_path):
    if nats_binary() is None:
        pytest.fail("nats-server is not installed (make test installs Debian's nats-server)")
    with NatsServer(tmp_path) as server:
        yield server


async def test_views_share_placements_replay_them_and_survive_a_lost_bus(nats_server):
    replicas = pool()
    pairs = await _views_over(nats_server.url, "hubmesh.route.t", "HUBMESH_ROUTE_T")
    (a, va, _), (b, vb, _) = pairs
    try:
        placed = a.pick(MODEL, replicas, prompt(1))
        a.started(placed)  # decoding now (a prefill queued there would rightly send b elsewhere)
        await until(lambda: vb.remote(placed.replica.address) is not None
                    and vb.remote(placed.replica.address).calls == 1
                    and vb.remote(placed.replica.address).prefilling == 0, "b sees a's call decoding")
        assert b.pick(MODEL, replicas, prompt(1, "next")).replica is placed.replica
        a.done(placed)
        await until(lambda: vb.remote(placed.replica.address).calls == 0, "b sees it done")
        # a third picker, started now, learns the placement from the stream
        late = await _views_over(nats_server.url, "hubmesh.route.t", "HUBMESH_ROUTE_T", 1)
        assert late[0][1].replayed >= 1
        assert late[0][0].index.matches(late[0][0].index.hashes(MODEL, prompt(1)))
        await _stop(late)
        # the bus dies: local routing, no error; it comes back: live again, placements flow again
        nats_server.kill()
        await until(lambda: not va.live and not vb.live, "views notice the lost bus")
        decision = a.pick(MODEL, replicas, prompt(2))  # decides alone, publishes nothing
        a.done(decision)
        assert vb.remote(decision.replica.address) is None
        nats_server.start()
        await until(lambda: va.live and vb.live, "views reconnected", timeout_s=20)
        again = a.pick(MODEL, replicas, prompt(3))
        await until(lambda: (vb.remote(again.replica.address) or InFlight()).calls == 1, "updates flow again")
    finally:
        await _stop(pairs)


async def test_no_bus_is_local_routing(tmp_path):
    picker = PrefixPicker()
    view = PrefixView("nats://127.0.0.1:1", connect_timeout_s=0.2)
    view.attach(picker)
    task = asyncio.create_task(view.run())
    await until(lambda: view.state == "lost", "the view gives up for now")
    decision = picker.pick(MODEL, pool(), prompt(1))
    picker.done(decision)
    assert not view.live and view.drain() == ([], [])
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_with_the_machines_nats_on_4222():
    """The NATS every machine of this project runs (127.0.0.1:4222, JetStream), under a subject of its own."""
    info = server_info(4222)
    if not info:
        pytest.skip("no NATS on 127.0.0.1:4222 on this machine (the private nats-server tests above cover it)")
    tag = uuid.uuid4().hex[:10]
    pairs = await _views_over("nats://127.0.0.1:4222", f"hubmesh.test.{tag}", f"HUBMESH_TEST_{tag}")
    (a, _, _), (b, vb, _) = pairs
    try:
        placed = a.pick(MODEL, pool(), prompt(5))
        a.started(placed)
        await until(lambda: (vb.remote(placed.replica.address) or InFlight()).calls == 1, "b sees a's call")
        assert b.index.matches(b.index.hashes(MODEL, prompt(5)))
    finally:
        import nats

        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            await nc.jetstream().delete_stream(f"HUBMESH_TEST_{tag}")
        finally:
            await nc.close()
        await _stop(pairs)
