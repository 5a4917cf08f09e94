"""Catalogues: the TOML files that say which model ids a service serves and on which Triton models.

A catalogue is a list of `[[models]]` tables. Each modality declares its entry as a subclass of
CatalogEntry (pydantic, frozen, unknown keys refused); `load_catalog(path, EntryType)` reads the
file and validates every table. Whatever is wrong, the error is a CatalogError naming the file, the
entry (`models[2]` and its id) and each bad field with pydantic's reason, e.g.

    services/text/catalog.toml: models[1] (id "tiny"): context_length=0: Input should be greater than 0;
    colour: Extra inputs are not permitted

Validators that need the catalogue's folder (files named relative to it) read it from the
validation context: `info.context["catalog_dir"]`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Entry = TypeVar("Entry", bound="CatalogEntry")


class CatalogError(ValueError):
    """A catalogue that cannot be served: unreadable, not TOML, empty, or with a bad entry."""


class CatalogEntry(BaseModel):
    """One served model: what every modality's catalogue entry has."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, arbitrary_types_allowed=True)

    id: str = Field(min_length=1)  # what OpenAI clients send as `model`
    triton_model: str = Field(min_length=1)  # the model's name in Triton's repository
    owned_by: str = "hubmesh"
    created: int = Field(0, ge=0)  # Unix time, for /v1/models
    description: str = ""


def load_catalog(path: Path | str, entry_type: type[Entry]) -> dict[str, Entry]:
    """Served id -> entry, for every [[models]] table of the TOML file at `path`; CatalogError otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CatalogError(f"{path}: cannot read the catalogue: {reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise CatalogError(f"{path}: not valid TOML: {err}") from None
    unknown = sorted(set(data) - {"models"})
    if unknown:
        raise CatalogError(f"{path}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                           "a catalogue holds only [[models]] tables")
    tables = data.get("models", [])
    if not isinstance(tables, list):
        raise CatalogError(f"{path}: `models` must be an array of tables ([[models]])")
    if not tables:
        raise CatalogError(f"{path}: no [[models]] entries")

    context = {"catalog_dir": path.parent, "catalog_path": path}
    entries: dict[str, Entry] = {}
    first_index: dict[str, int] = {}
    for index, raw in enumerate(tables):
        where = _where(path, index, raw)
        if not isinstance(raw, dict):
            raise CatalogError(f"{where}: not a table")
        try:
            entry = entry_type.model_validate(raw, context=context)
        except ValidationError as err:
            raise CatalogError(f"{where}: {_reasons(err)}") from None
        if entry.id in entries:
            raise CatalogError(f"{where}: duplicate id, already used by models[{first_index[entry.id]}]")
        entries[entry.id] = entry
        first_index[entry.id] = index
    return entries


def _where(path: Path, index: int, raw: Any) -> str:
    model_id = raw.get("id") if isinstance(raw, dict) else None
    return f"{path}: models[{index}]" + (f" (id {_quote(model_id)})" if isinstance(model_id, str) else "")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _reasons(err: ValidationError) -> str:
    """ "field=value: reason; other.0: reason" (the value when it is a short scalar)."""
    reasons = []
    for error in err.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "(entry)"
        value = error["input"]
        shown = isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 80
        reasons.append(f"{field}={value!r}: {error['msg']}" if shown else f"{field}: {error['msg']}")
    return "; ".join(reasons)
