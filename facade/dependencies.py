"""Whether the façade's own dependencies answer: a cheap probe of each, every PROBE_INTERVAL_S, as
Prometheus gauges that alerts can read directly instead of inferring an outage from failed requests:

- hubmesh_dependency_up{dependency}: 1 when the last probe answered within PROBE_TIMEOUT_S, else 0;
- hubmesh_dependency_last_success_timestamp_seconds{dependency}: Unix time of the last probe that
  answered (absent until one has).

`dependency` is `database` (a `SELECT 1` on the façade's database: the PostgreSQL of
HUBMESH_DATABASE_URL, or the embedded SQLite file of the default) and `redis` (a `PING` on the rate
limiter's Redis client, only when HUBMESH_REDIS_URL is set: without it no series exists for redis).
The probes use the same connections as the requests do, with the same timeouts, so "up" means what
the requests would find; a database that could not be opened is tried again, at most every
facade.store.RETRY_S, which also reconnects a façade nobody sends requests to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import Gauge

from facade.limits.middleware import METERING
from facade.store import RESPONSES_STORE

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 2.0  # a probe slower than this counts as down (Redis' own timeout is shorter)
DATABASE = "database"
REDIS = "redis"

DEPENDENCY_UP = Gauge(
    "hubmesh_dependency_up", "1 while a dependency of the façade answers its probe (database, redis), else 0",
    ["dependency"],
)
DEPENDENCY_LAST_SUCCESS = Gauge(
    "hubmesh_dependency_last_success_timestamp_seconds",
    "Unix time of the last probe of a dependency of the façade that answered", ["dependency"],
)

Check = Callable[[], Awaitable[object]]


class DependencyProbe:
    """Probes each dependency of `checks` (name -> a coroutine function that raises when it does not
    answer) and keeps the gauges; `probe()` is one round, `run()` one round every `interval_s`."""

    def __init__(self, checks: Mapping[str, Check], timeout_s: float = PROBE_TIMEOUT_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.checks = dict(checks)
        self.timeout_s = timeout_s
        self.clock = clock
        self.up: dict[str, bool] = {}

    async def _probe(self, name: str, check: Check) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                await check()
        except Exception as err:  # whatever it raises, it did not answer
            if self.up.get(name, True):
                log.warning("dependency %s does not answer its probe: %s: %s", name, err.__class__.__name__, err)
            return False
        if self.up.get(name) is False:
            log.info("dependency %s answers again", name)
        return True

    async def probe(self) -> dict[str, bool]:
        """One round: every dependency at once; name -> whether it answered."""
        names = list(self.checks)
        answers = await asyncio.gather(*(self._probe(n, self.checks[n]) for n in names))
        now = self.clock()
        for name, answered in zip(names, answers, strict=True):
            self.up[name] = answered
            DEPENDENCY_UP.labels(name).set(1 if answered else 0)
            if answered:
                DEPENDENCY_LAST_SUCCESS.labels(name).set(now)
        return dict(self.up)

    async def run(self, interval_s: float = PROBE_INTERVAL_S) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(interval_s)

    def forget(self) -> None:
        """Removes this probe's series (the app is gone: its dependencies are no longer its)."""
        for name in self.checks:
            for gauge in (DEPENDENCY_UP, DEPENDENCY_LAST_SUCCESS):
                with contextlib.suppress(KeyError):
                    gauge.remove(name)
        self.up.clear()


def app_checks(app: web.Application) -> dict[str, Check]:
    """The app's dependencies: its database always (SQLite counts), Redis when the limits use it."""
    holder = app[RESPONSES_STORE]

    async def database() -> None:
        await (await holder.database()).fetch("SELECT 1")

    checks: dict[str, Check] = {DATABASE: database}
    shared = app[METERING].limiter.shared
    if shared is not None:
        checks[REDIS] = shared.client.ping
    return checks


def dependencies_ctx(interval_s: float = PROBE_INTERVAL_S):
    """cleanup_ctx (after store_ctx: it probes the database that one opened): probes the
    dependencies while the app runs."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        probe = DependencyProbe(app_checks(app))
        task = asyncio.create_task(probe.run(interval_s))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        probe.forget()

    return ctx
