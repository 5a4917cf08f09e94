"""`make run` with HUBMESH_TEXT_SERVICES=N (local/stack.py, local/nats.py): N text services on their own
ports, the façade's target naming all of them, and the bus their routing views share, said out loud."""

from __future__ import annotations

from pathlib import Path

import pytest

from local import nats as local_nats
from local.nats import NatsServer, choose_bus, describe_bus, nats_binary, server_info
from local.stack import MODALITIES, LocalStack, StackConfig


def test_text_services_get_ports_of_their_own_and_the_facade_names_them_all(tmp_path):
    config = StackConfig(api_key="k", run_dir=tmp_path, text_services=3)
    assert config.text_ports() == [(50051, 9464), (50151, 9564), (50251, 9664)]  # make run: + 100 × i
    assert config.service_target("text") == "ipv4:127.0.0.1:50051,127.0.0.1:50151,127.0.0.1:50251"
    assert config.service_target("embeddings") == "127.0.0.1:50052"
    free = StackConfig.with_free_ports(api_key="k", run_dir=tmp_path, text_services=4)
    ports = [p for pair in free.text_ports() for p in pair]
    assert len(set(ports)) == 8 and not set(ports[2:]) & free._ports_in_use()
    assert StackConfig(api_key="k", run_dir=tmp_path).service_target("text") == "127.0.0.1:50051"


def test_each_text_service_is_supervised_and_the_private_bus_too(tmp_path, monkeypatch):
    monkeypatch.delenv("HUBMESH_TEXT_ROUTING_BUS_URL", raising=False)
    config = StackConfig.with_free_ports(api_key="k", run_dir=tmp_path, text_services=2, routing_bus="private")
    stack = LocalStack(config, modalities=tuple(m for m in MODALITIES if m.name == "text"))
    names = [u.name for u in stack.units()]
    if nats_binary() is None:
        assert stack.bus.how == "off" and "nats" not in names
    else:
        assert stack.bus.how == "private" and "nats" in names
        assert stack.text_env()["HUBMESH_TEXT_ROUTING_BUS_URL"] == stack.bus.server.url
    assert {"text", "text-1"} <= set(names)
    one = LocalStack(StackConfig.with_free_ports(api_key="k", run_dir=tmp_path), modalities=stack.modalities)
    assert one.bus is None and one.text_env() == {}  # one text service: nothing to share


def test_the_bus_is_chosen_in_order_and_none_is_said(tmp_path, monkeypatch):
    given = choose_bus(tmp_path, {"HUBMESH_TEXT_ROUTING_BUS_URL": "nats://bus:4222"})
    assert (given.how, given.url) == ("given", "nats://bus:4222")
    off = choose_bus(tmp_path, {"HUBMESH_TEXT_ROUTING_BUS_URL": ""})
    assert off.how == "off" and "own prefix index" in describe_bus(off, 3)
    monkeypatch.setattr(local_nats, "nats_binary", lambda: None)
    monkeypatch.setattr(local_nats, "server_info", lambda port: None)
    assert choose_bus(tmp_path, {}).how == "off"
    monkeypatch.setattr(local_nats, "server_info", lambda port: {"jetstream": True})
    shared = choose_bus(tmp_path, {})
    assert shared.how == "shared" and shared.url == "nats://127.0.0.1:4222"
    assert shared.subject.startswith("hubmesh.route.") and shared.subject != choose_bus(tmp_path, {}).subject


def test_a_private_nats_server_starts_with_jetstream_and_stops_by_its_pid(tmp_path: Path):
    if nats_binary() is None:
        pytest.fail("nats-server is not installed (make test installs Debian's nats-server)")
    server = NatsServer(tmp_path).start()
    try:
        assert server_info(server.port)["jetstream"]
        pid = server.proc.pid
        server.kill()
        assert server_info(server.port) is None
        server.start()
        assert server.proc.pid != pid and server.is_ready()
    finally:
        server.stop()
    assert server.proc is None and server_info(server.port) is None


def test_make_runs_supervisor_starts_a_crashed_bus_again_on_its_port(tmp_path, monkeypatch):
    import os
    import signal

    from local.supervisor import Supervisor

    if nats_binary() is None:
        pytest.fail("nats-server is not installed (make test installs Debian's nats-server)")
    monkeypatch.delenv("HUBMESH_TEXT_ROUTING_BUS_URL", raising=False)
    config = StackConfig.with_free_ports(api_key="k", run_dir=tmp_path, text_services=2, routing_bus="private")
    stack = LocalStack(config, modalities=tuple(m for m in MODALITIES if m.name == "text"))
    stack.start_bus()
    server = stack.bus.server
    try:
        (unit,) = [u for u in stack.units() if u.name == "nats"]
        now = [0.0]
        supervisor = Supervisor([unit], clock=lambda: now[0])
        crashed = server.proc
        os.killpg(crashed.pid, signal.SIGKILL)
        crashed.wait(timeout=10)
        supervisor.tick()
        assert unit.state == "restarting"
        now[0] += 60
        supervisor.tick()  # started again, on the same port
        assert server.proc is not crashed and unit.state == "starting"
        from local import processes

        processes.wait_until(server.is_ready, 20, "nats-server", server.proc, server.log_path)
    finally:
        server.stop()
