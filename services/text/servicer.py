"""gRPC methods of hubmesh.text.v1.TextGeneration."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc

from hubmesh.text.v1 import text_generation_pb2 as pb
from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument, ModelNotFound
from services.common.grpc_errors import abort_on_service_error
from services.common.metrics import StreamTimer, count_tokens
from services.common.telemetry import set_genai_attributes
from services.text.backend import GenerationChunk, TextBackend
from services.text.catalog import ModelEntry

log = logging.getLogger(__name__)

MAX_CHOICES = 128
MAX_STOP_SEQUENCES = 4
FINISH_REASONS = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}


def _check_range(name: str, value: float, low: float, high: float, param: str | None = None) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidArgument(f"{name} must be between {low:g} and {high:g}, got {value:g}", param or name)


def sampling_to_contract(sampling: pb.SamplingParameters, entry: ModelEntry) -> dict[str, Any]:
    """The `sampling_parameters` JSON of the vLLM-backend contract; validates every field."""
    params: dict[str, Any] = {"n": sampling.n or 1}
    if not 1 <= params["n"] <= MAX_CHOICES:
        raise InvalidArgument(f"n must be between 1 and {MAX_CHOICES}, got {params['n']}", "n")
    if sampling.HasField("temperature"):
        _check_range("temperature", sampling.temperature, 0.0, 2.0)
        params["temperature"] = sampling.temperature
    if sampling.HasField("top_p"):
        _check_range("top_p", sampling.top_p, 0.0, 1.0)
        if sampling.top_p == 0.0:
            raise InvalidArgument("top_p must be greater than 0", "top_p")
        params["top_p"] = sampling.top_p
    for name in ("presence_penalty", "frequency_penalty"):
        if sampling.HasField(name):
            _check_range(name, getattr(sampling, name), -2.0, 2.0)
            params[name] = getattr(sampling, name)
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
        _check_range(f"logit_bias[{token}]", bias, -100.0, 100.0, "logit_bias")
    if sampling.logit_bias:
        params["logit_bias"] = {str(k): v for k, v in sampling.logit_bias.items()}
    if sampling.HasField("seed"):
        params["seed"] = sampling.seed
    return params


class TextGenerationServicer(pb_grpc.TextGenerationServicer):
    """Chat and completion generation in front of a TextBackend (Triton in production)."""

    def __init__(self, backend: TextBackend, catalog: dict[str, ModelEntry]) -> None:
        self._backend = backend
        self._catalog = catalog

    def _prepare(self, request: pb.GenerateRequest) -> tuple[ModelEntry, str, dict[str, Any]]:
        entry = self._catalog.get(request.model)
        if entry is None:
            raise ModelNotFound(f"The model '{request.model}' does not exist", "model")
        which = request.WhichOneof("input")
        if which == "chat":
            if not request.chat.messages:
                raise InvalidArgument("messages must not be empty", "messages")
            messages = []
            for m in request.chat.messages:
                message = {"role": m.role, "content": m.content}
                if m.HasField("name"):
                    message["name"] = m.name
                messages.append(message)
            prompt = entry.chat_template.render(messages, add_generation_prompt=True)
        elif which == "prompt":
            prompt = request.prompt
        else:
            raise InvalidArgument("either chat messages or a prompt is required", "messages")
        sampling = sampling_to_contract(request.sampling, entry)
        set_genai_attributes(
            operation__name="chat" if which == "chat" else "text_completion",
            request__model=entry.id,
            request__max_tokens=sampling["max_tokens"],
            request__temperature=sampling.get("temperature"),
            request__top_p=sampling.get("top_p"),
            request__choice__count=sampling["n"],
        )
        return entry, prompt, sampling

    async def is_ready(self) -> bool:
        """Ready when every catalogued Triton model is ready."""
        for entry in self._catalog.values():
            if not await self._backend.is_ready(entry.triton_model):
                return False
        return True

    @abort_on_service_error
    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        entry, prompt, sampling = self._prepare(request)
        n = sampling["n"]
        texts = [""] * n
        reasons: list[str | None] = [None] * n
        usage = pb.Usage()
        async for chunk in self._backend.generate(entry.triton_model, prompt, sampling, stream=False):
            for i, text in enumerate(chunk.texts):
                texts[i] += text
                reasons[i] = chunk.finish_reasons[i] or reasons[i]
            _add_usage(usage, chunk)
        choices = [
            pb.Choice(index=i, text=texts[i], finish_reason=FINISH_REASONS.get(reasons[i] or "", 0))
            for i in range(n)
        ]
        _report(entry.id, usage, [r or "" for r in reasons])
        return pb.GenerateResponse(model=entry.id, choices=choices, usage=usage)

    @abort_on_service_error
    async def GenerateStream(
        self, request: pb.GenerateRequest, context
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        entry, prompt, sampling = self._prepare(request)
        usage = pb.Usage()
        finished: dict[int, str] = {}  # backends repeat a choice's finish_reason in later responses
        timer = StreamTimer(entry.id)
        async for chunk in self._backend.generate(entry.triton_model, prompt, sampling, stream=True):
            _add_usage(usage, chunk)
            deltas = []
            for i, text in enumerate(chunk.texts):
                reason = chunk.finish_reasons[i] if i not in finished else None
                if reason:
                    finished[i] = reason
                if text or reason:
                    deltas.append(
                        pb.ChoiceDelta(index=i, text=text, finish_reason=FINISH_REASONS.get(reason or "", 0))
                    )
            if deltas:
                timer.chunk()
                yield pb.GenerateStreamResponse(model=entry.id, deltas=deltas)
        _report(entry.id, usage, [finished[i] for i in sorted(finished)])
        yield pb.GenerateStreamResponse(model=entry.id, usage=usage)

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        models = [
            pb.Model(id=e.id, owned_by=e.owned_by, created=e.created, context_length=e.context_length)
            for e in self._catalog.values()
        ]
        return pb.ListModelsResponse(models=models)


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
    usage.completion_tokens += sum(chunk.num_output_tokens)
