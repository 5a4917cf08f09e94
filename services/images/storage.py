"""Where images for `response_format: url` live until they expire.

ImageStore is the interface; LocalDirectoryStore keeps them on the service's disk. Façade replicas
share no disk, so they fetch images through the images service (GetImage); an S3-compatible store
can implement the same interface when the images service itself runs as several replicas.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class StoredImage:
    """An image and when it stops being available."""

    image_id: str
    expires_at: float
    content_type: str = "image/png"
    data: bytes = b""


class ImageStore(Protocol):
    """Keeps images for a while."""

    async def put(self, data: bytes, content_type: str, ttl_s: float) -> StoredImage:
        """Stores data; returns its id and expiry (no data)."""
        ...

    async def get(self, image_id: str) -> StoredImage | None:
        """The image, or None when unknown or expired."""
        ...

    async def sweep(self) -> int:
        """Deletes expired images; returns how many."""
        ...


class LocalDirectoryStore:
    """ImageStore in a local directory: <id>.bin holds the bytes, <id>.json when they expire."""

    def __init__(self, directory: str | Path, clock=time.time) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._clock = clock

    def _paths(self, image_id: str) -> tuple[Path, Path]:
        return self.directory / f"{image_id}.bin", self.directory / f"{image_id}.json"

    def _put(self, data: bytes, content_type: str, ttl_s: float) -> StoredImage:
        image = StoredImage(uuid.uuid4().hex, self._clock() + ttl_s, content_type)
        blob, meta = self._paths(image.image_id)
        blob.write_bytes(data)
        meta.write_text(json.dumps({"expires_at": image.expires_at, "content_type": content_type}))
        return image

    def _get(self, image_id: str) -> StoredImage | None:
        if not _ID.match(image_id):  # ids are ours: nothing else may name a path
            return None
        blob, meta = self._paths(image_id)
        try:
            info = json.loads(meta.read_text())
            if info["expires_at"] <= self._clock():
                return None
            return StoredImage(image_id, info["expires_at"], info["content_type"], blob.read_bytes())
        except (OSError, ValueError, KeyError):
            return None

    def _sweep(self) -> int:
        removed = 0
        now = self._clock()
        for meta in self.directory.glob("*.json"):
            try:
                expired = json.loads(meta.read_text())["expires_at"] <= now
            except (OSError, ValueError, KeyError):
                expired = True
            if expired:
                meta.with_suffix(".bin").unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
                removed += 1
        return removed

    async def put(self, data: bytes, content_type: str, ttl_s: float) -> StoredImage:
        return await asyncio.to_thread(self._put, data, content_type, ttl_s)

    async def get(self, image_id: str) -> StoredImage | None:
        return await asyncio.to_thread(self._get, image_id)

    async def sweep(self) -> int:
        return await asyncio.to_thread(self._sweep)


async def sweep_forever(store: ImageStore, interval_s: float = 60.0) -> None:
    """Deletes expired images every interval_s until cancelled."""
    while True:
        await store.sweep()
        await asyncio.sleep(interval_s)


