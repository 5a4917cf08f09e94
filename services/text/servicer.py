"""gRPC methods of hubmesh.text.v1.TextGeneration."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

from hubmesh.common.v1 import common_pb2 as common_pb
from hubmesh.text.v1 import text_generation_pb2 as pb
from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument
from services.common.grpc_errors import abort_on_service_error
from services.common.metrics import StreamTimer, count_tokens
from services.common.servicer import CatalogServicer
from services.common.telemetry import set_genai_attributes
from services.text import budget, migration
from services.text.backend import GenerationChunk, TextBackend
from services.text.catalog import ModelEntry
from services.text.contract import TokenLogprob
from services.text.limits import (
    LOGIT_BIAS_RANGE,
    MAX_CHOICES,
    MAX_COMPLETION_LOGPROBS,
    MAX_STOP_SEQUENCES,
    MAX_TOP_LOGPROBS,
    RANGES,
)
from services.text.multiplex import Multiplexer
from services.text.sampling_plan import SamplingPlan
from services.text.structured import Mode, OutputPlan, plan_output
from services.text.tool_calls import CallStart, Content, Event, ToolCallParser

FINISH_REASONS = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}
TOOL_CHOICE_NAMES = {pb.TOOL_CHOICE_MODE_AUTO: "auto", pb.TOOL_CHOICE_MODE_REQUIRED: "required"}


def _check_range(name: str, value: float, low: float, high: float, param: str | None = None) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidArgument(f"{name} must be between {low:g} and {high:g}, got {value:g}", param or name)


def sampling_to_contract(sampling: pb.SamplingParameters, entry: ModelEntry, chat: bool = True) -> dict[str, Any]:
    """The `sampling_parameters` JSON of the vLLM-backend contract; validates every field (`chat`:
    the request is a chat, whose logprobs count is OpenAI's top_logprobs, else a completion's logprobs)."""
    params: dict[str, Any] = {"n": sampling.n if sampling.HasField("n") else 1}
    if not 1 <= params["n"] <= MAX_CHOICES:
        raise InvalidArgument(f"n must be between 1 and {MAX_CHOICES}, got {params['n']}", "n")
    for name, (low, high) in RANGES.items():
        if sampling.HasField(name):
            _check_range(name, getattr(sampling, name), low, high)
            params[name] = getattr(sampling, name)
    if params.get("top_p") == 0.0:
        raise InvalidArgument("top_p must be greater than 0", "top_p")
    if sampling.HasField("top_k") and sampling.top_k > 0:  # 0: every token, as unset
        params["top_k"] = sampling.top_k
    if len(sampling.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgument(f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(sampling.stop)}", "stop")
    if any(s == "" for s in sampling.stop):
        raise InvalidArgument("stop sequences must not be empty", "stop")
    if sampling.stop:
        params["stop"] = list(sampling.stop)
    if sampling.HasField("max_tokens"):
        if sampling.max_tokens < 1:
            raise InvalidArgument("max_tokens must be at least 1", "max_tokens")
        if sampling.max_tokens > entry.context_length:
            raise InvalidArgument(
                f"max_tokens is {sampling.max_tokens}, but this model's maximum context length is "
                f"{entry.context_length} tokens",
                "max_tokens",
            )
        params["max_tokens"] = sampling.max_tokens
    else:
        # "Until the context is full": the model clamps this to what the prompt leaves.
        params["max_tokens"] = entry.context_length
    for token, bias in sampling.logit_bias.items():
        if token < 0:
            raise InvalidArgument(f"logit_bias token ids must be non-negative, got {token}", "logit_bias")
        _check_range(f"logit_bias[{token}]", bias, *LOGIT_BIAS_RANGE, "logit_bias")
    if sampling.logit_bias:
        params["logit_bias"] = {str(k): v for k, v in sampling.logit_bias.items()}
    if sampling.HasField("seed"):
        params["seed"] = sampling.seed
    if sampling.HasField("logprobs"):
        most, param = (MAX_TOP_LOGPROBS, "top_logprobs") if chat else (MAX_COMPLETION_LOGPROBS, "logprobs")
        if sampling.logprobs > most:
            raise InvalidArgument(f"{param} must be between 0 and {most}, got {sampling.logprobs}", param)
        params["logprobs"] = sampling.logprobs
    return params


class TextGenerationServicer(CatalogServicer[ModelEntry], pb_grpc.TextGenerationServicer):
    """Chat and completion generation in front of a TextBackend (Triton in production)."""

    _backend: TextBackend

    def __init__(self, backend: TextBackend, catalog, flush_interval_s: float = 0.0) -> None:
        super().__init__(backend, catalog)
        self.flush_interval_s = flush_interval_s  # of GenerateMany's writes (services.text.multiplex)
        self._multiplexers: set[Multiplexer] = set()
        self._draining = False

    def details(self, entry: ModelEntry) -> dict[str, Any]:
        return {"text": common_pb.TextModelDetails(context_length=entry.context_length)}

    def _prepare(self, request: pb.GenerateRequest) -> tuple[ModelEntry, str, SamplingPlan, OutputPlan]:
        entry = self.entry(request.model)
        which = request.WhichOneof("input")
        plan = plan_output(request)
        if which == "chat":
            if not request.chat.messages:
                raise InvalidArgument("messages must not be empty", "messages")
            prompt = _render_chat(entry, request, plan)
        elif which == "prompt":
            prompt = request.prompt
        else:
            raise InvalidArgument("either chat messages or a prompt is required", "messages")
        params = sampling_to_contract(request.sampling, entry, chat=which == "chat")
        if plan.forced:
            # The grammar decides where the JSON ends; a stop sequence inside it would break it.
            params.pop("stop", None)
        sampling = SamplingPlan({**params, **plan.sampling_entry})
        set_genai_attributes(
            operation__name="chat" if which == "chat" else "text_completion",
            request__model=entry.id,
            request__max_tokens=sampling["max_tokens"],
            request__temperature=sampling.get("temperature"),
            request__top_p=sampling.get("top_p"),
            request__choice__count=sampling["n"],
        )
        return entry, prompt, sampling, plan

    def _chunks(self, entry: ModelEntry, prompt: str, sampling: SamplingPlan, request: pb.GenerateRequest,
                stream: bool, resume: migration.Progress | None = None) -> AsyncIterator[GenerationChunk]:
        """The model's responses (after `resume`'s, for a resumed generation); within the request's
        token budget when it has one (streamed from the model then, so that each choice can be
        stopped at its share)."""
        if not request.HasField("token_budget"):
            return self._backend.generate(entry.triton_model, prompt, sampling, stream=stream, resume=resume)
        clamped = budget.clamp_sampling(sampling, request.token_budget)
        chunks = self._backend.generate(entry.triton_model, prompt, clamped, stream=True, resume=resume)
        return budget.within_budget(chunks, request.token_budget, clamped.n)

    @abort_on_service_error
    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        entry, prompt, sampling, plan = self._prepare(request)
        n = sampling["n"]
        texts = [""] * n
        reasons: list[str | None] = [None] * n
        tokens: list[list[TokenLogprob]] = [[] for _ in range(n)]
        usage = pb.Usage()
        async for chunk in self._chunks(entry, prompt, sampling, request, stream=False):
            for i, text in enumerate(chunk.texts):
                texts[i] += text
                reasons[i] = chunk.finish_reasons[i] or reasons[i]
            if chunk.logprobs is not None:
                for i, choice_tokens in enumerate(chunk.logprobs[:n]):
                    tokens[i].extend(choice_tokens or ())
            _add_usage(usage, chunk)
        top_k = sampling.get("logprobs")
        choices = []
        for i in range(n):
            parser = _parser(plan)
            events = parser.feed(texts[i]) + parser.finish()
            content = "".join(e.text for e in events if isinstance(e, Content))
            calls = [pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in parser.calls]
            choices.append(
                pb.Choice(index=i, text=content, finish_reason=_finish_reason(reasons[i], parser), tool_calls=calls,
                          logprobs=_logprobs(tokens[i], top_k) if top_k is not None else ())
            )
        _report(entry.id, usage, [_reason_name(c.finish_reason) for c in choices])
        return pb.GenerateResponse(model=entry.id, choices=choices, usage=usage)

    @abort_on_service_error
    async def GenerateStream(
        self, request: pb.GenerateRequest, context
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        entry, prompt, sampling, plan = self._prepare(request)
        usage = pb.Usage()
        resume = None
        if request.HasField("resume"):  # another text service's generation, the caller relayed part of it
            if plan.mode is not Mode.TEXT:
                raise InvalidArgument("only a free-text generation can be resumed", "resume")
            resume = migration.resumed(request.resume.choices, sampling["n"])
            usage.prompt_tokens, usage.completion_tokens = request.resume.prompt_tokens, resume.tokens
        finished: dict[int, pb.FinishReason] = {}  # backends repeat a choice's finish_reason in later responses
        parsers: dict[int, ToolCallParser] = {}
        top_k = sampling.get("logprobs")
        held: dict[int, list[pb.TokenLogprob]] = {}  # tokens whose choice had no delta to carry them yet
        timer = StreamTimer(entry.id)
        told_prompt = bool(usage.prompt_tokens)  # whether a message carried prompt_tokens yet
        async for chunk in self._chunks(entry, prompt, sampling, request, stream=True, resume=resume):
            _add_usage(usage, chunk)
            rounds: list[list[pb.ChoiceDelta]] = []  # one stream message per round
            for i, text in enumerate(chunk.texts):
                reason = chunk.finish_reasons[i] if i not in finished else None
                if plan.mode is Mode.TEXT:
                    deltas = [pb.ChoiceDelta(index=i, text=text)] if text else []
                else:
                    parser = parsers.setdefault(i, _parser(plan))
                    events = parser.feed(text) + (parser.finish() if reason else [])
                    deltas = [_delta(i, event) for event in events]
                if reason:  # on a delta of its own, as OpenAI sends it
                    if plan.mode is Mode.TEXT:
                        finished[i] = FINISH_REASONS.get(reason, pb.FINISH_REASON_UNSPECIFIED)
                    else:
                        finished[i] = _finish_reason(reason, parser)
                    deltas.append(pb.ChoiceDelta(index=i, finish_reason=finished[i]))
                if top_k is not None:
                    _carry_logprobs(deltas, held, i, chunk, top_k)
                for position, delta in enumerate(deltas):
                    _in_round(rounds, position).append(delta)
            progress = _progress(chunk) if plan.mode is Mode.TEXT else []
            if progress and not rounds:  # tokens that made no text yet: the caller still counts them
                rounds.append([])
            for position, deltas in enumerate(rounds):
                if deltas:
                    timer.chunk()
                message = pb.GenerateStreamResponse(model=entry.id, deltas=deltas,
                                                    progress=progress if position == 0 else ())
                if not told_prompt and usage.prompt_tokens:
                    message.prompt_tokens, told_prompt = usage.prompt_tokens, True
                yield message
        if held:  # tokens after the last delta of their choice (a model that never finished it)
            yield pb.GenerateStreamResponse(model=entry.id, deltas=[
                pb.ChoiceDelta(index=i, logprobs=tokens) for i, tokens in sorted(held.items())
            ])
        _report(entry.id, usage, [_reason_name(finished[i]) for i in sorted(finished)])
        yield pb.GenerateStreamResponse(model=entry.id, usage=usage)

    async def GenerateMany(self, requests: AsyncIterator[pb.GenerateManyRequest], context) -> None:
        """GenerateStream and Generate calls carried by one call (services.text.multiplex)."""
        mux = Multiplexer(self.GenerateStream, self.Generate, context, self.flush_interval_s)
        self._multiplexers.add(mux)
        if self._draining:
            mux.drain()
        try:
            await mux.run(requests)
        finally:
            self._multiplexers.discard(mux)

    def drain(self) -> None:
        """The service is stopping: every GenerateMany caller is told to open no more streams on it."""
        self._draining = True
        for mux in self._multiplexers:
            mux.drain()


def _render_chat(entry: ModelEntry, request: pb.GenerateRequest, plan: OutputPlan) -> str:
    """The prompt of a chat request: the model's template, or its tool template when tools,
    tool calls or tool results are in play (transformers' message and tool shapes)."""
    messages: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    uses_tools = plan.prompt_tools is not None
    for m in request.chat.messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.HasField("name"):
            message["name"] = m.name
        if m.tool_calls:
            uses_tools = True
            message["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": _arguments_value(c.arguments)}}
                for c in m.tool_calls
            ]
            names_by_id.update((c.id, c.name) for c in m.tool_calls)
        if m.HasField("tool_call_id"):
            message["tool_call_id"] = m.tool_call_id
            if m.tool_call_id in names_by_id and "name" not in message:
                message["name"] = names_by_id[m.tool_call_id]
        uses_tools = uses_tools or m.role == "tool"
        messages.append(message)
    if not uses_tools:
        return entry.chat_template.render(messages, add_generation_prompt=True)
    extra: dict[str, Any] = {"parallel_tool_calls": plan.parallel}
    if plan.prompt_tools is not None:
        choice = request.tool_choice
        if choice.WhichOneof("choice") == "function_name":
            extra["tool_choice"] = choice.function_name
        else:
            extra["tool_choice"] = TOOL_CHOICE_NAMES.get(choice.mode, "auto")
    return entry.tool_template.render(messages, add_generation_prompt=True, tools=plan.prompt_tools, **extra)


def _arguments_value(arguments: str) -> Any:
    """Arguments as the templates expect them: a dict when they parse, else the text as sent."""
    try:
        return json.loads(arguments)
    except (json.JSONDecodeError, RecursionError):
        return arguments


def _parser(plan: OutputPlan) -> ToolCallParser:
    return ToolCallParser(plan.mode, plan.tool_names, plan.parallel)


def _finish_reason(reason: str | None, parser: ToolCallParser) -> pb.FinishReason:
    """tool_calls when the choice ended with complete calls (even if the budget ran out after them)."""
    if parser.calls and parser.complete:
        return pb.FINISH_REASON_TOOL_CALLS
    return FINISH_REASONS.get(reason or "", pb.FINISH_REASON_UNSPECIFIED)


def _reason_name(reason: int) -> str:
    return pb.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower() if reason else ""


def _delta(index: int, event: Event) -> pb.ChoiceDelta:
    if isinstance(event, Content):
        return pb.ChoiceDelta(index=index, text=event.text)
    if isinstance(event, CallStart):
        call = pb.ToolCallDelta(index=event.index, id=event.id, name=event.name)
    else:
        call = pb.ToolCallDelta(index=event.index, arguments=event.fragment)
    return pb.ChoiceDelta(index=index, tool_calls=[call])


def _logprobs(tokens: list[TokenLogprob], top_k: int) -> list[pb.TokenLogprob]:
    """Tokens as the proto's, with the alternatives of rank <= top_k (at most top_k, best first)."""
    out = []
    for t in tokens:
        top = [pb.TopLogprob(token=e.token, logprob=e.logprob, bytes=e.token.encode("utf-8"))
               for e in t.top[:top_k + 1] if e.rank <= top_k][:top_k]
        out.append(pb.TokenLogprob(token=t.token, logprob=t.logprob, bytes=t.token.encode("utf-8"), top_logprobs=top))
    return out


def _carry_logprobs(deltas: list[pb.ChoiceDelta], held: dict[int, list[pb.TokenLogprob]], index: int,
                    chunk: GenerationChunk, top_k: int) -> None:
    """Puts choice `index`'s new tokens (and any held before) on its first delta of this chunk, or
    holds them for its next delta: over the stream, each token is on exactly one delta."""
    new = chunk.logprobs[index] if chunk.logprobs is not None and index < len(chunk.logprobs) else None
    if new:
        held.setdefault(index, []).extend(_logprobs(new, top_k))
    if deltas and index in held:
        deltas[0].logprobs.extend(held.pop(index))


def _progress(chunk: GenerationChunk) -> list[pb.ChoiceProgress]:
    """Each choice's tokens of `chunk`, with their ids where the model reports them."""
    ids = chunk.token_ids
    return [pb.ChoiceProgress(index=i, tokens=tokens, token_ids=ids[i] if ids is not None and i < len(ids) else ())
            for i, tokens in enumerate(chunk.num_output_tokens) if tokens]


def _in_round(rounds: list[list[pb.ChoiceDelta]], position: int) -> list[pb.ChoiceDelta]:
    while len(rounds) <= position:
        rounds.append([])
    return rounds[position]


def _report(model: str, usage: pb.Usage, finish_reasons: list[str]) -> None:
    count_tokens(model, usage.prompt_tokens, usage.completion_tokens)
    set_genai_attributes(
        usage__input_tokens=usage.prompt_tokens,
        usage__output_tokens=usage.completion_tokens,
        response__finish_reasons=finish_reasons,
    )


def _add_usage(usage: pb.Usage, chunk: GenerationChunk) -> None:
    if chunk.num_input_tokens is not None:
        usage.prompt_tokens = chunk.num_input_tokens
    if chunk.num_cached_tokens is not None:
        usage.cached_tokens = chunk.num_cached_tokens
    usage.completion_tokens += sum(chunk.num_output_tokens)
