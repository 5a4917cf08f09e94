"""Test doubles for unit tests only: never used by end-to-end tests or benchmarks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from services.text.backend import GenerationChunk
from services.text.contract import TokenLogprob, TopLogprob


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

    async def generate(self, model: str, prompt: str, sampling: dict[str, Any], stream: bool,
                       resume: Any = None) -> AsyncIterator[GenerationChunk]:
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
          n_out: list[int] | None = None, logprobs: list[list[TokenLogprob] | None] | None = None) -> GenerationChunk:
    return GenerationChunk(
        texts=texts,
        finish_reasons=reasons or [None] * len(texts),
        num_input_tokens=n_in,
        num_output_tokens=n_out if n_out is not None else [1 if t else 0 for t in texts],
        logprobs=logprobs,
    )


def token(text: str, logprob: float, *alternatives: tuple[str, float]) -> TokenLogprob:
    """A sampled token as the contract parses it: `alternatives` (text, logprob), best first, get
    ranks 1, 2, ...; the sampled token is among them where its text is, else ranked after them."""
    top = [TopLogprob(t, lp, rank) for rank, (t, lp) in enumerate(alternatives, start=1)]
    if all(t != text for t, _ in alternatives):
        top.append(TopLogprob(text, logprob, len(alternatives) + 1))
    return TokenLogprob(text, logprob, top)


def logprob_chunks(pieces: list[str], alternatives: int = 3, reason: str = "stop") -> list[GenerationChunk]:
    """One chunk per piece (one token each, the most likely of its step, with `alternatives` - 1
    others), then the finish: a backend answering a request with logprobs."""
    chunks = []
    for i, piece in enumerate(pieces):
        best = -0.1 * (i + 1)
        others = [(f"<alt{i}.{k}>", best - k) for k in range(1, alternatives + 1)]
        chunks.append(chunk([piece], logprobs=[[token(piece, best, (piece, best), *others)]]))
    chunks.append(chunk([""], [reason], n_out=[0], logprobs=[[]]))
    return chunks


class FakeEmbeddingsBackend:
    """An EmbeddingsBackend whose vector for a text is a deterministic function of it."""

    def __init__(self, dims: int = 4, error: Exception | None = None) -> None:
        self.dims = dims
        self.error = error
        self.requests: list[tuple[str, list]] = []

    async def is_ready(self, model: str) -> bool:
        return True

    def _vector(self, seed: int):
        import numpy as np

        vector = np.random.default_rng(seed).normal(size=self.dims).astype(np.float32)
        return vector / np.linalg.norm(vector)

    async def embed_texts(self, model: str, texts: list[str]):
        import numpy as np

        self.requests.append(("text", list(texts)))
        if self.error is not None:
            raise self.error
        await asyncio.sleep(0)
        return np.stack([self._vector(sum(t.encode())) for t in texts]), [len(t.split()) for t in texts]

    async def embed_tokens(self, model: str, ids: list[int]):
        import numpy as np

        self.requests.append(("tokens", list(ids)))
        return np.stack([self._vector(sum(ids))]), [len(ids)]

    async def close(self) -> None:
        pass


class FakeImagesBackend:
    """An ImagesBackend drawing a solid colour that depends on the seed."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[dict] = []

    async def is_ready(self, model: str) -> bool:
        return True

    async def generate(self, model, prompt, width, height, n, seed, quality, style):
        import numpy as np

        self.calls.append({"model": model, "prompt": prompt, "width": width, "height": height, "n": n,
                           "seed": seed, "quality": quality, "style": style})
        if self.error is not None:
            raise self.error
        base = 0 if seed is None else seed
        return np.stack([np.full((height, width, 3), (base + i) % 256, dtype=np.uint8) for i in range(n)])

    async def close(self) -> None:
        pass
