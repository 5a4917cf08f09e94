"""GET /v1/usage's query parameters (UsageQuery): groups, a time window, filters."""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from facade.store.usage import GROUPS

DEFAULT_WINDOW_S = 30 * 24 * 3600.0  # without `start`: the last 30 days
MAX_LIMIT = 10_000
LAST_INSTANT = datetime(9999, 12, 31, tzinfo=UTC).timestamp()
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _groups(value: Any) -> tuple[str, ...]:
    """ "model, day" -> ("model", "day"): names of GROUPS, comma-separated, each once."""
    names = [name.strip() for name in value.split(",")] if isinstance(value, str) else []
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
        return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
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
        f"What the totals are per: a comma-separated list of {', '.join(GROUPS)} (day: the UTC date; hour: the UTC hour, YYYY-MM-DDTHH:00Z)."))
    start: Instant | None = Field(None, description=(
        "From this instant on (inclusive): unix seconds or YYYY-MM-DD (midnight UTC). Default: 30 days before end."))
    end: Instant | None = Field(None, description=(
        "Until this instant (exclusive): unix seconds or YYYY-MM-DD (midnight UTC). Default: now."))
    subject: str | None = Field(None, description="Only this subject's requests (e.g. jwt:alice).")
    user: str | None = Field(None, description="Only requests with this OpenAI `user`.")
    model: str | None = Field(None, description="Only requests for this model.")
    limit: int = Field(1000, ge=1, le=MAX_LIMIT, description=f"Groups at most (1-{MAX_LIMIT}).")
