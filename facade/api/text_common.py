"""What chat completions and completions share: sampling fields, proto mapping, the gRPC calls."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc
from aiohttp import web
from hubmesh.text.v1 import text_generation_pb2 as pb
from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictStr,
    field_validator,
)

from facade.api.responses import (
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    Completion,
    CompletionChoice,
    FinishReason,
    Usage,
)
from facade.api import validation
from facade.api.validation import Int64, UInt32
from facade.auth.middleware import reserve_tokens
from facade.clients import CLIENTS
from facade.errors import OpenAIError, from_grpc, invalid
from facade.observability import MODEL, record_usage
from facade.sse import ChunkEncoder, EventStream
from services.common.metrics import StreamTimer
from services.text import limits

FINISH_REASONS: dict[int, FinishReason] = {
    pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}
SYSTEM_FINGERPRINT = "fp_hubmesh_0_1"
StreamChunk = ChatCompletionChunk | Completion  # one `data:` event of a chat or completions stream
ChunkChoice = ChatCompletionChunkChoice | CompletionChoice

def shows_limit(field: str, default: Any = None) -> Any:
    """A field whose limit the text service checks (services/text/limits.py), shown in the document."""
    return validation.shows_limit(limits.DOCUMENTED, field, default)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: StrictBool = False


class SamplingFields(BaseModel):
    """OpenAI's sampling fields, as types; their limits are the text service's (services/text/servicer.py)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: StrictStr
    temperature: float | None = shows_limit("temperature")
    top_p: float | None = shows_limit("top_p")
    n: UInt32 | None = shows_limit("n")
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = shows_limit("stop")
    max_tokens: UInt32 | None = shows_limit("max_tokens")
    presence_penalty: float | None = shows_limit("presence_penalty")
    frequency_penalty: float | None = shows_limit("frequency_penalty")
    logit_bias: dict[StrictStr, float] | None = None
    seed: Int64 | None = None
    user: StrictStr | None = None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value):
        for token in value or {}:  # JSON keys are strings: each must spell a token id
            if not (token.isascii() and token.isdigit() and int(token) < 2**31):
                raise ValueError(f"keys must be token ids, got {token[:40]!r}")
        return value

    def sampling_proto(self, max_tokens: int | None) -> pb.SamplingParameters:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        sampling = pb.SamplingParameters(
            stop=stops,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
        )
        for name in ("n", "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed"):
            value = getattr(self, name)
            if value is not None:
                setattr(sampling, name, value)
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        return sampling

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def check_stream_options(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options is only allowed when stream is true.", param="stream_options")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage_json(usage: pb.Usage) -> Usage:
    """OpenAI's usage; prompt_tokens_details.cached_tokens where the model server reported its cache."""
    body: Usage = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    if usage.HasField("cached_tokens"):
        body["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return body


def cached_of(usage: pb.Usage) -> int:
    """The prompt tokens the model server's prefix cache served (0 where it reports none)."""
    return usage.cached_tokens if usage.HasField("cached_tokens") else 0


class StreamUsage:
    """What generation streams used: the totals their last messages report, and for a stream cut
    before its last message (the client gone, a failure), what it had shown — its prompt's tokens
    (the first message says) and one completion token per text or tool-call delta — so that the
    limits and the usage ledger still see it."""

    def __init__(self) -> None:
        self.total = pb.Usage()
        self._prompt = 0  # of the stream not finished yet
        self._deltas = 0
        self._recorded = False

    def see(self, message: pb.GenerateStreamResponse) -> None:
        if message.HasField("prompt_tokens"):
            self._prompt = message.prompt_tokens
        for delta in message.deltas:
            if delta.text or delta.tool_calls:
                self._deltas += 1
        if message.HasField("usage"):
            add_usage(self.total, message.usage)
            self._prompt = self._deltas = 0

    def record(self, http: web.Request) -> None:
        """record_usage, once: the totals, plus what an unfinished stream showed."""
        if not self._recorded:
            self._recorded = True
            record_usage(http, self.total.prompt_tokens + self._prompt, self.total.completion_tokens + self._deltas,
                         cached_tokens=cached_of(self.total))


def add_usage(total: pb.Usage, part: pb.Usage) -> None:
    """Adds one generation's usage to a request's (several prompts, or several streams)."""
    total.prompt_tokens += part.prompt_tokens
    total.completion_tokens += part.completion_tokens
    if part.HasField("cached_tokens"):
        total.cached_tokens += part.cached_tokens


async def reserve_budget(http: web.Request, request: pb.GenerateRequest) -> None:
    """Reserves what the generation can cost against the caller's token limits, if any apply, and
    sets what they grant as the request's token_budget (the text service keeps it within). Each
    handler reserves every generation of its request before it starts any."""
    sampling = request.sampling
    granted = await reserve_tokens(
        http, request.model, request.ByteSize(), choices=sampling.n if sampling.HasField("n") else 1,
        max_tokens=sampling.max_tokens if sampling.HasField("max_tokens") else None)
    if granted is not None:
        request.token_budget = granted


async def generate(http: web.Request, request: pb.GenerateRequest, input_param: str) -> pb.GenerateResponse:
    """Unary Generate; gRPC failures become OpenAI errors. Cancelling the caller cancels the call.
    The request's token budget is reserved first (reserve_budget)."""
    clients = http.app[CLIENTS]
    try:
        result = await clients.text_streams.generate(request, clients.timeout_s)
    except grpc.aio.AioRpcError as err:
        raise from_grpc(err, "text", default_param=input_param) from err
    record_usage(http, result.usage.prompt_tokens, result.usage.completion_tokens, cached_tokens=cached_of(result.usage))
    return result


class GenerationStream:
    """A GenerateStream call whose first message (or error) is read before any HTTP byte is sent,
    so that errors such as an unknown model still get their own HTTP status. The request's token
    budget is reserved first (await reserve_budget(http, request) before making one: every
    reservation of a request before any of its calls starts, so that a refusal leaves none running)."""

    def __init__(self, http: web.Request, request: pb.GenerateRequest, input_param: str) -> None:
        clients = http.app[CLIENTS]
        self._call = clients.text_streams.open(request, clients.timeout_s)
        self._input_param = input_param
        self._first: pb.GenerateStreamResponse | None = None

    async def start(self) -> None:
        try:
            self._first = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "text", default_param=self._input_param) from err

    async def messages(self) -> AsyncIterator[pb.GenerateStreamResponse]:
        """The stream's messages; raises OpenAIError on a mid-stream failure."""
        message = self._first
        try:
            while message is not grpc.aio.EOF and message is not None:
                yield message
                message = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "text", default_param=self._input_param) from err

    def cancel(self) -> None:
        """Stops the generation upstream (client gone, or done early)."""
        if not self._call.done():
            self._call.cancel()


def max_tokens_of(body: SamplingFields, max_completion_tokens: int | None, default: int | None) -> int | None:
    """max_completion_tokens wins over the deprecated max_tokens."""
    if max_completion_tokens is not None:
        return max_completion_tokens
    if body.max_tokens is not None:
        return body.max_tokens
    return default



async def respond_with_stream(
    request: web.Request,
    upstreams: Sequence[tuple[int, GenerationStream]],
    base: Mapping[str, Any],
    include_usage: bool,
    render: Callable[[pb.ChoiceDelta, int], Sequence[ChunkChoice]],
    opening: list[ChatCompletionChunkChoice] | None = None,
    text_choice: Callable[[int, str], ChunkChoice] | None = None,
) -> web.StreamResponse:
    """Relays generation streams as OpenAI SSE chunks; the first stream's errors keep their HTTP status.

    Each event is a StreamChunk, `{**base, "choices": [...]}` (`base`: every field but choices).
    `upstreams` pairs each stream with the offset added to its choice indices (completions with
    several prompts); `render` turns one delta into chunk choices. `text_choice(index, text)`, where
    given, is what `render` makes of a delta with nothing but text (at index `offset + delta.index`):
    messages of such deltas, most of a stream, are encoded from templates (sse.ChunkEncoder), the same
    bytes. Every upstream call is cancelled when the response ends for any reason, the client going
    away included.
    """
    try:
        await upstreams[0][1].start()
        events = EventStream(request)
        await events.open()
        if include_usage:
            base = {**base, "usage": None}
        encoder = ChunkEncoder(base, text_choice)
        if opening:
            await events.send({**base, "choices": opening})
        used = StreamUsage()
        timer = StreamTimer(request.get(MODEL, ""))
        try:
            for position, (offset, upstream) in enumerate(upstreams):
                if position:
                    await upstream.start()
                async for message in upstream.messages():
                    used.see(message)
                    deltas = message.deltas
                    texts = _texts_only(deltas, offset) if text_choice is not None else None
                    event = encoder.texts(texts) if texts else None
                    if event is None:
                        choices = [c for delta in deltas for c in render(delta, offset)]
                        event = encoder.chunk(choices) if choices else None
                    if event is not None:
                        timer.chunk()
                        await events.send_bytes(event)
            used.record(request)
            if include_usage:
                await events.send({**base, "choices": [], "usage": usage_json(used.total)})
        except OpenAIError as err:
            await events.send_error(err)
        finally:
            used.record(request)  # a stream cut short: what it had shown
        return await events.close()
    finally:
        for _, upstream in upstreams:
            upstream.cancel()


def _texts_only(deltas: Sequence[pb.ChoiceDelta], offset: int) -> list[tuple[int, str]] | None:
    """(index, text) of each delta when every one carries text and nothing else; else None."""
    items = []
    for delta in deltas:
        text = delta.text
        if not text or delta.finish_reason or delta.tool_calls or delta.logprobs:
            return None
        items.append((offset + delta.index, text))
    return items
