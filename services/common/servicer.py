"""What every modality's servicer shares: its catalogue, model lookup, readiness and ListModels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from hubmesh.common.v1 import common_pb2 as common_pb
from services.common.catalog import CatalogEntry
from services.common.errors import ModelNotFound
from services.common.triton_backend import all_ready

Entry = TypeVar("Entry", bound=CatalogEntry)


class CatalogServicer(Generic[Entry]):
    """A servicer in front of one backend and a catalogue of served models (id -> entry).
    Subclasses say what their models offer in `details`."""

    def __init__(self, backend: Any, catalog: Mapping[str, Entry]) -> None:
        self._backend = backend
        self._catalog = dict(catalog)
        self._models = common_pb.ListModelsResponse(models=[
            common_pb.Model(id=e.id, owned_by=e.owned_by, created=e.created,
                            description=e.description, **self.details(e))
            for e in self._catalog.values()
        ])

    def details(self, entry: Entry) -> dict[str, Any]:
        """The Model.details oneof for `entry`, as keyword arguments (e.g. {"text": TextModelDetails(...)})."""
        return {}

    def entry(self, model: str) -> Entry:
        """The catalogue entry of a served model id; MODEL_NOT_FOUND otherwise."""
        entry = self._catalog.get(model)
        if entry is None:
            raise ModelNotFound(model)
        return entry

    async def is_ready(self) -> bool:
        """Ready when every catalogued Triton model is ready."""
        return await all_ready(self._backend, (entry.triton_model for entry in self._catalog.values()))

    async def ListModels(self, request: common_pb.ListModelsRequest, context) -> common_pb.ListModelsResponse:
        """The catalogue's models (built once: the catalogue does not change while serving)."""
        return self._models
