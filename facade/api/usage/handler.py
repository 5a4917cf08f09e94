"""GET /v1/usage: the usage ledger's totals (facade/store/usage.py). The operator (the `admin`
scope) and the platform team that bills from them read every subject's; any other caller its own:
its subject's, and its keys' (the hub keys its manager owns: facade/api/keys), as the console shows
a tenant. A hubmesh extension: OpenAI's API has none."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from aiohttp import web

from facade.api.response_bodies import UsageList, UsageTotals
from facade.api.usage.protocol import DEFAULT_WINDOW_S, UsageQuery
from facade.api.validation import parse_query
from facade.auth.hub_keys import KEY_REGISTRY, SUBJECT_PREFIX
from facade.call import call_of
from facade.errors import OpenAIError, invalid
from facade.jsonio import json_response
from facade.store import StoreError
from facade.store.usage import USAGE_LEDGER

log = logging.getLogger(__name__)


def _unavailable() -> OpenAIError:
    return OpenAIError(503, "The usage ledger's database is unavailable; try again shortly.", type="server_error",
                       code="store_unavailable", headers={"Retry-After": "5"})


async def get_usage(request: web.Request) -> web.Response:
    """Totals of every subject's requests (tokens, images, errors) over [start, end), per
    `group_by`; the usage ledger's, this replica's pending records included."""
    query = parse_query(request, UsageQuery)
    end = query.end if query.end is not None else time.time()
    start = query.start if query.start is not None else end - DEFAULT_WINDOW_S
    if start >= end:
        raise invalid("'start' must be before 'end'.", param="start")
    ledger = request.app[USAGE_LEDGER]
    subjects = await _readable_subjects(request, query.subject)
    try:
        # what this replica has not written yet (it reads its own writes); shielded: a caller that
        # goes away does not cut a write short
        await asyncio.shield(ledger.flush())
        rows = await ledger.query(query.group_by, start, end, subject=query.subject, user=query.user,
                                  model=query.model, limit=query.limit + 1, subjects=subjects)
    except StoreError as err:
        log.error("usage ledger: %s", err)
        raise _unavailable() from None
    # the ledger's rows are UsageTotals: the names of group_by, then its TOTALS (the store does not
    # import the API's types)
    data = cast(list[UsageTotals], rows[:query.limit])
    usage: UsageList = {"object": "list", "data": data, "has_more": len(rows) > query.limit,
                        "start": start, "end": end}
    return json_response(usage)


async def _readable_subjects(request: web.Request, asked: str | None) -> list[str] | None:
    """The subjects the caller may read (None: every one, for an admin): its own subject, its
    manager's and every key that manager owns; 403 when it asks for another."""
    principal = call_of(request).principal
    if principal is None or principal.is_admin:
        return None
    own = {principal.subject, principal.manager}
    try:
        keys = await (await request.app[KEY_REGISTRY].store()).list(owner=principal.manager)
    except StoreError as err:
        log.error("usage: the keys' store: %s", err)
        raise _unavailable() from None
    own.update(SUBJECT_PREFIX + key.id for key in keys)
    if asked is not None and asked not in own:
        raise OpenAIError(403, "This credential may read only its own usage (its subject's and its keys'); "
                          "reading another subject's needs the 'admin' scope.", type="permission_error",
                          code="insufficient_scope", param="subject")
    return sorted(own)
