"""Every process runs its main on uvloop, unless HUBMESH_EVENT_LOOP=asyncio says otherwise."""

import asyncio

import uvloop

from services.common import event_loop


async def _loop_type():
    return type(asyncio.get_running_loop())


def test_uvloop_by_default(monkeypatch):
    monkeypatch.delenv("HUBMESH_EVENT_LOOP", raising=False)
    assert event_loop.run(_loop_type()) is uvloop.Loop


def test_plain_asyncio_on_request(monkeypatch):
    monkeypatch.setenv("HUBMESH_EVENT_LOOP", "asyncio")
    assert not issubclass(event_loop.run(_loop_type()), uvloop.Loop)
