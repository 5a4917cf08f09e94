"""Generations on the text service for one HTTP request: reserving their cost, the unary call, the
stream whose first message is read before any HTTP byte, and what they used.

Handlers call generate_served() and open_streams(): a request naming a model alias is tried on each
model of its chain in turn until one serves it (facade/aliases.py), each attempt reserving its own
tokens; a stream moves on only at its start, before any HTTP byte."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import grpc
from aiohttp import web

from facade import resumable
from facade.aliases import serve
from facade.api.response_bodies import Usage
from facade.call import Call, call_of
from facade.clients import CLIENTS
from facade.errors import from_grpc
from hubmesh.text.v1 import text_generation_pb2 as pb


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

    def record(self, call: Call) -> None:
        """Call.record_usage, once: the totals, plus what an unfinished stream showed."""
        if not self._recorded:
            self._recorded = True
            call.record_usage(self.total.prompt_tokens + self._prompt, self.total.completion_tokens + self._deltas,
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
    granted = await call_of(http).reserve_tokens(
        request.model, request.ByteSize(), choices=sampling.n if sampling.HasField("n") else 1,
        max_tokens=sampling.max_tokens if sampling.HasField("max_tokens") else None)
    if granted is not None:
        request.token_budget = granted


async def generate(http: web.Request, request: pb.GenerateRequest, input_param: str) -> pb.GenerateResponse:
    """Unary Generate; gRPC failures become OpenAI errors. Cancelling the caller cancels the call.
    The request's token budget is reserved first (reserve_budget). A text service lost before it
    answers is replaced by another (facade/resumable.py)."""
    clients = http.app[CLIENTS]
    try:
        result = await resumable.generate(clients.text_streams, request, clients.timeout_s)
    except grpc.aio.AioRpcError as err:
        raise from_grpc(err, "text", default_param=input_param) from err
    call_of(http).record_usage(result.usage.prompt_tokens, result.usage.completion_tokens,
                               cached_tokens=cached_of(result.usage))
    return result


def _message(read: pb.GenerateStreamResponse | object) -> pb.GenerateStreamResponse | None:
    """What TextStream.read() gave: the next message, or None for grpc.aio.EOF (after the last)."""
    return read if isinstance(read, pb.GenerateStreamResponse) else None


class GenerationStream:
    """A GenerateStream call whose first message (or error) is read before any HTTP byte is sent,
    so that errors such as an unknown model still get their own HTTP status. The request's token
    budget is reserved first (await reserve_budget(http, request) before making one: every
    reservation of a request before any of its calls starts, so that a refusal leaves none running).
    A text service lost mid-stream does not end it: it goes on through another (facade/resumable.py)."""

    def __init__(self, http: web.Request, request: pb.GenerateRequest, input_param: str) -> None:
        clients = http.app[CLIENTS]
        self._call = resumable.ResumableStream(clients.text_streams, request, clients.timeout_s)
        self._input_param = input_param
        self._first: pb.GenerateStreamResponse | None = None
        self._started = False

    async def start(self) -> None:
        """Reads the first message (or error); once: a stream already started stays as it is."""
        if self._started:
            return
        self._started = True
        try:
            self._first = _message(await self._call.read())
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "text", default_param=self._input_param) from err

    async def messages(self) -> AsyncIterator[pb.GenerateStreamResponse]:
        """The stream's messages; raises OpenAIError on a mid-stream failure."""
        message = self._first
        try:
            while message is not None:
                yield message
                message = _message(await self._call.read())
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "text", default_param=self._input_param) from err

    def cancel(self) -> None:
        """Stops the generation upstream (client gone, or done early)."""
        if not self._call.done():
            self._call.cancel()


async def generate_served(http: web.Request, requests: Sequence[pb.GenerateRequest],
                          input_param: str) -> list[pb.GenerateResponse]:
    """The unary generation of each of `requests` (every budget reserved first, then the calls made
    together): on the model they name or, for an alias, on the first model of its chain that serves
    them (facade/aliases.py's serve). All requests name the same model (several prompts of one
    completion request)."""

    async def attempt(model: str) -> list[pb.GenerateResponse]:
        for request in requests:
            _use_model(request, model)
        for request in requests:  # every reservation before any call starts: a refusal leaves nothing running
            await reserve_budget(http, request)
        return list(await asyncio.gather(*(generate(http, request, input_param) for request in requests)))

    return await serve(http, requests[0].model, attempt)


async def open_streams(http: web.Request, requests: Sequence[pb.GenerateRequest],
                       input_param: str) -> list[GenerationStream]:
    """A started stream for each of `requests` (every budget reserved first, then the streams
    opened, the first one's first message read): on the model they name or, for an alias, on the
    first model of its chain that starts them (facade/aliases.py's serve). All requests name the same
    model (several prompts of one completion request)."""

    async def attempt(model: str) -> list[GenerationStream]:
        for request in requests:
            _use_model(request, model)
        for request in requests:  # every reservation before any call starts: a refusal leaves nothing running
            await reserve_budget(http, request)
        streams = [GenerationStream(http, request, input_param) for request in requests]
        try:
            await streams[0].start()
        except BaseException:
            for stream in streams:
                stream.cancel()
            raise
        return streams

    return await serve(http, requests[0].model, attempt)


def _use_model(request: pb.GenerateRequest, model: str) -> None:
    """The request, for one model of an alias's chain (no budget of an earlier attempt left on it)."""
    request.model = model
    request.ClearField("token_budget")
