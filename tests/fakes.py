"""Test doubles for unit tests only: never used by end-to-end tests or benchmarks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from services.text.backend import GenerationChunk


class FakeTextBackend:
    """A TextBackend that replays scripted chunks and records what it was asked."""

    def __init__(self, chunks: list[GenerationChunk] | None = None, ready: bool = True,
                 error: Exception | None = None, hang_after: int | None = None) -> None:
        self.chunks = chunks or []
        self.ready = ready
        self.error = error
        self.hang_after = hang_after  # stop producing after this many chunks (a slow model)
        self.calls: list[dict[str, Any]] = []
        self.closed_early = asyncio.Event()

    async def is_ready(self, model: str) -> bool:
        return self.ready

    async def generate(self, model: str, prompt: str, sampling: dict[str, Any], stream: bool) -> AsyncIterator[GenerationChunk]:
        self.calls.append({"model": model, "prompt": prompt, "sampling": sampling, "stream": stream})
        completed = False
        try:
            if self.error is not None:
                raise self.error
            for i, chunk in enumerate(self.chunks):
                if self.hang_after is not None and i >= self.hang_after:
                    await asyncio.Event().wait()
                yield chunk
            completed = True
        finally:
            if not completed:
                self.closed_early.set()

    async def close(self) -> None:
        pass


def chunk(texts: list[str], reasons: list[str | None] | None = None, n_in: int = 5,
          n_out: list[int] | None = None) -> GenerationChunk:
    return GenerationChunk(
        texts=texts,
        finish_reasons=reasons or [None] * len(texts),
        num_input_tokens=n_in,
        num_output_tokens=n_out if n_out is not None else [1 if t else 0 for t in texts],
    )
