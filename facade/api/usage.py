"""GET /v1/usage: the usage ledger's totals (facade/store/usage.py), for the operator (the `admin`
scope) and the platform team that bills from them. A hubmesh extension: OpenAI's API has none."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from datetime import date, datetime, timezone
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from facade.api.responses import UsageList
from facade.api.validation import parse_query
from facade.errors import OpenAIError, invalid
from facade.jsonio import json_response
from facade.store import StoreError
from facade.store.usage import GROUPS, USAGE_LEDGER

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 30 * 24 * 3600.0  # without `start`: the last 30 days
MAX_LIMIT = 10_000
LAST_INSTANT = datetime(9999, 12, 31, tzinfo=timezone.utc).timestamp()
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _groups(value: Any) -> tuple[str, ...]:
    """ "model, day" -> ("model", "day"): names of GROUPS, comma-separated, each once."""
    names = [name.strip() for name in value.split(",")] if isinstance(value, str) else [None]
    if not names or any(name not in GROUPS for name in names):
        raise ValueError(f"a comma-separated list of {', '.join(GROUPS)}")
    return tuple(dict.fromkeys(names))


def _instant(value: Any) -> float:
    """Unix seconds, or a date YYYY-MM-DD (its midnight, UTC)."""
    text = value.strip() if isinstance(value, str) else ""
    if _DATE.match(text):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is no date") from None
        return datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= LAST_INSTANT:  # nan included
        raise ValueError("unix seconds or a date YYYY-MM-DD (UTC)")
    return seconds


Groups = Annotated[tuple[str, ...], BeforeValidator(_groups), WithJsonSchema({"type": "string"})]
Instant = Annotated[float, BeforeValidator(_instant), WithJsonSchema({"type": "string"})]


class UsageQuery(BaseModel):
    """GET /v1/usage's query parameters."""

    model_config = ConfigDict(extra="ignore")

    group_by: Groups = Field("subject", validate_default=True, description=(
        f"What the totals are per: a comma-separated list of {', '.join(GROUPS)} (day: the UTC date)."))
    start: Instant | None = Field(None, description=(
        "From this instant on (inclusive): unix seconds or YYYY-MM-DD (midnight UTC). Default: 30 days before end."))
    end: Instant | None = Field(None, description=(
        "Until this instant (exclusive): unix seconds or YYYY-MM-DD (midnight UTC). Default: now."))
    subject: str | None = Field(None, description="Only this subject's requests (e.g. jwt:alice).")
    user: str | None = Field(None, description="Only requests with this OpenAI `user`.")
    model: str | None = Field(None, description="Only requests for this model.")
    limit: int = Field(1000, ge=1, le=MAX_LIMIT, description=f"Groups at most (1-{MAX_LIMIT}).")


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
    try:
        # what this replica has not written yet (it reads its own writes); shielded: a caller that
        # goes away does not cut a write short
        await asyncio.shield(ledger.flush())
        rows = await ledger.query(query.group_by, start, end, subject=query.subject, user=query.user,
                                  model=query.model, limit=query.limit + 1)
    except StoreError as err:
        log.error("usage ledger: %s", err)
        raise _unavailable() from None
    usage: UsageList = {"object": "list", "data": rows[:query.limit], "has_more": len(rows) > query.limit,
                        "start": start, "end": end}
    return json_response(usage)
