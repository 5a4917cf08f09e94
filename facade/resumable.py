"""Generations that outlive the text service producing them.

A text service that goes away mid-stream — killed, or frozen or cut off until the channel's keepalive
gives it up (services/common/grpc_options.py) — loses its link (facade/text_streams.py's LinkLost),
not the generation: the stream goes on through another text service from what it had relayed.
Every message of a free-text stream carries each choice's new tokens (`progress`: counts, and ids
where the model reports them), so the façade knows exactly what the client has; it opens the same
request with `resume` (that text, those ids), and the service continues each unfinished choice
there — token-exactly where the model reports ids, by text otherwise, as a Triton replica's loss is
handled one level down (services/text/migration.py) — streaming only what follows. The client
sees one stream: no error, no repeated text, the whole usage.

A stream whose deltas are not the model's own text (tool calls, structured output) cannot be
resumed this way and fails as before; a unary generation lost before its answer starts again
(nothing of it was seen). At most MAX_RESUMES times a generation, within its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Counter

from facade.text_streams import LinkLost, TextStreams
from hubmesh.text.v1 import text_generation_pb2 as pb

log = logging.getLogger(__name__)

MAX_RESUMES = 3  # text services one generation may lose
RESUMES = Counter("hubmesh_text_stream_resumes", "Generations whose text service went away before they ended, by outcome "
                  "(resumed through another from what was relayed, restarted with nothing relayed yet, failed)",
                  ["model", "outcome"])


class Deadline:
    """A generation's deadline, across the text services it passes through."""

    def __init__(self, timeout_s: float | None) -> None:
        self._at = None if timeout_s is None else time.monotonic() + timeout_s

    def left(self) -> float | None:
        return None if self._at is None else max(0.0, self._at - time.monotonic())

    def passed(self) -> bool:
        return self._at is not None and time.monotonic() >= self._at


class Relayed:
    """What a generation stream has produced so far, read from its messages (`progress`, deltas):
    what another text service resumes it from (GenerateRequest.resume). A stream whose text came
    without progress (tool calls, structured output: the deltas are not the model's text) cannot be."""

    def __init__(self, n: int) -> None:
        self._texts: list[list[str]] = [[] for _ in range(n)]
        self._ids: list[list[int]] = [[] for _ in range(n)]
        self._tokens = [0] * n
        self._finished = [False] * n
        self.prompt_tokens = 0
        self.resumable = True

    @property
    def tokens(self) -> int:
        return sum(self._tokens)

    def see(self, message: pb.GenerateStreamResponse) -> None:
        if message.HasField("prompt_tokens"):
            self.prompt_tokens = message.prompt_tokens
        n = len(self._tokens)
        for progress in message.progress:
            if progress.index >= n:
                self.resumable = False
                return
            self._tokens[progress.index] += progress.tokens
            self._ids[progress.index].extend(progress.token_ids)
        for delta in message.deltas:
            if delta.index >= n or delta.tool_calls or (delta.text and not message.progress):
                self.resumable = False
                return
            if delta.text:
                self._texts[delta.index].append(delta.text)
            if delta.finish_reason:
                self._finished[delta.index] = True

    def resume(self) -> pb.Resume:
        return pb.Resume(prompt_tokens=self.prompt_tokens, choices=[
            pb.ResumedChoice(text="".join(texts), token_ids=ids, tokens=tokens, finished=finished)
            for texts, ids, tokens, finished in zip(self._texts, self._ids, self._tokens, self._finished, strict=True)])


class ResumableStream:
    """A generation stream on `streams` that goes on through another text service when the link to
    its own is lost; read(), done() and cancel() as TextStream's."""

    __slots__ = ("_streams", "_request", "_deadline", "_stream", "_relayed", "_lost")

    def __init__(self, streams: TextStreams, request: pb.GenerateRequest, timeout_s: float | None) -> None:
        self._streams = streams
        self._request = request
        self._deadline = Deadline(timeout_s)
        self._stream = streams.open(request, timeout_s)
        self._relayed = Relayed(request.sampling.n if request.sampling.HasField("n") else 1)
        self._lost = 0

    async def read(self) -> pb.GenerateStreamResponse | object:
        """The next message, grpc.aio.EOF after the last; raises grpc.aio.AioRpcError if the
        generation failed (LinkLost where it could not go on)."""
        while True:
            try:
                message = await self._stream.read()
            except LinkLost:
                self._lost += 1
                model = self._request.model
                if not self._relayed.resumable or self._lost > MAX_RESUMES or self._deadline.passed():
                    RESUMES.labels(model, "failed").inc()
                    raise
                await asyncio.sleep(0)  # the other links of a lost service notice it first
                if self._relayed.tokens:
                    RESUMES.labels(model, "resumed").inc()
                    log.info("text service lost after %d tokens of a %s generation; going on through another",
                             self._relayed.tokens, model)
                else:
                    RESUMES.labels(model, "restarted").inc()
                    log.info("text service lost before the first token of a %s generation; starting it on another",
                             model)
                self._stream = self._streams.open(self._next_request(), self._deadline.left())
                continue
            if isinstance(message, pb.GenerateStreamResponse):
                self._relayed.see(message)
            return message

    def done(self) -> bool:
        return self._stream.done()

    def cancel(self) -> None:
        self._stream.cancel()

    def _next_request(self) -> pb.GenerateRequest:
        """The request, resumed from what was relayed (as it is, where nothing was)."""
        if not self._relayed.tokens:
            return self._request
        request = pb.GenerateRequest()
        request.CopyFrom(self._request)
        request.resume.CopyFrom(self._relayed.resume())
        if request.HasField("token_budget"):  # what was produced is spent
            request.token_budget = max(1, request.token_budget - self._relayed.tokens)
        return request


async def generate(streams: TextStreams, request: pb.GenerateRequest, timeout_s: float | None) -> pb.GenerateResponse:
    """TextStreams.generate, asked again of another text service when the link to the first is lost
    before it answers (nothing of its answer was seen)."""
    deadline = Deadline(timeout_s)
    lost = 0
    while True:
        try:
            return await streams.generate(request, deadline.left())
        except LinkLost:
            lost += 1
            if lost > MAX_RESUMES or deadline.passed():
                RESUMES.labels(request.model, "failed").inc()
                raise
            RESUMES.labels(request.model, "restarted").inc()
            log.info("text service lost before it answered a %s generation; asking another", request.model)

