"""Carrying a generation over to another Triton replica when the one producing it dies.

The text service sees every token, so when a replica goes away mid-generation (UNAVAILABLE) the
backend sends each unfinished choice to another replica as a *continuation*: the same prompt and
sampling parameters, what remains of `max_tokens` (and of the deadline), and what the choice produced
so far. Choices are continued one after the other; the chunks of a continuation are renumbered as
the choice they continue, so the servicer (and its tool-call parser) sees one stream.

- **By token ids** where the model reports them (`output_token_ids`: the CPU model and the engine
  simulator): the continuation carries `continuation_token_ids` and `choice_index`, and the model
  resumes exactly — its sampling randomness is a function of (seed, choice, position), its stop
  matching and structured-output grammar replay the tokens, and it never re-emits text.
- **By text** where it does not (Triton's vLLM backend on GPU nodes, which takes no such inputs):
  the continuation's prompt is the prompt followed by the text produced so far (re-tokenised, so the
  boundary may shift by a token; a stop sequence spanning it is not seen); a structured-output
  request is not continued this way (the grammar would start again), it ends as before.

The same continuation serves a generation whose *text service* was lost: the façade sends the request
again, to another text service, with `resume` (what it relayed: text, ids, token counts per choice),
which becomes the Progress a continuation starts from (`resumed`; facade/resumable.py).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common import triton_tensors
from services.common.errors import InvalidArgument
from services.text.contract import GenerationChunk, TokenLogprob


@dataclass
class ChoiceProgress:
    """What one choice has produced so far."""

    ids: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    tokens: int = 0
    finished: bool = False


class Progress:
    """Every choice's progress through one generation; which continuation comes next."""

    def __init__(self, n: int) -> None:
        self.choices = [ChoiceProgress() for _ in range(n)]
        self.with_ids = True  # every chunk so far carried token ids

    def record(self, chunk: GenerationChunk) -> None:
        for i, text in enumerate(chunk.texts):
            choice = self.choices[i]
            if text:
                choice.texts.append(text)
            if i < len(chunk.num_output_tokens):
                choice.tokens += chunk.num_output_tokens[i]
            if chunk.finish_reasons[i]:
                choice.finished = True
        if chunk.token_ids is None:
            if any(chunk.num_output_tokens):
                self.with_ids = False
        else:
            for i, ids in enumerate(chunk.token_ids):
                self.choices[i].ids.extend(ids)

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    def unfinished(self) -> int | None:
        """The first choice without a finish reason, or None when all have one."""
        return next((i for i, c in enumerate(self.choices) if not c.finished), None)


@dataclass
class Segment:
    """One Triton request of a generation: the first (every choice), or a continuation of one."""

    request: Any  # service_pb2.ModelInferRequest
    choice: int | None = None  # the choice a continuation produces (its index 0); None: all choices
    n: int = 1

    def renumber(self, chunk: GenerationChunk) -> GenerationChunk:
        """A continuation's chunk as chunk of the whole generation (its choice 0 is `choice`)."""
        if self.choice is None:
            return chunk
        c, n = self.choice, self.n
        texts: list[str] = [""] * n
        reasons: list[str | None] = [None] * n
        counts: list[int] = [0] * n
        texts[c] = chunk.texts[0] if chunk.texts else ""
        reasons[c] = chunk.finish_reasons[0] if chunk.finish_reasons else None
        counts[c] = chunk.num_output_tokens[0] if chunk.num_output_tokens else 0
        ids: list[list[int]] | None = None
        if chunk.token_ids is not None:
            ids = [[] for _ in range(n)]
            ids[c] = chunk.token_ids[0] if chunk.token_ids else []
        logprobs: list[list[TokenLogprob] | None] | None = None
        if chunk.logprobs is not None:
            logprobs = [None] * n
            logprobs[c] = chunk.logprobs[0] if chunk.logprobs else None
        # the prompt's count stays what it is; its cache hits are the first replica's
        return GenerationChunk(texts, reasons, chunk.num_input_tokens, counts, None, ids, logprobs)


def resumed(choices: Sequence[Any], n: int) -> Progress:
    """The progress a caller reports of a generation of `n` choices (hubmesh.text.v1.ResumedChoice
    each): by ids where every choice's tokens came with theirs."""
    if len(choices) != n:
        raise InvalidArgument(f"resume has {len(choices)} choices, the request {n}", "resume")
    progress = Progress(n)
    for choice, reported in zip(progress.choices, choices, strict=True):
        choice.ids = list(reported.token_ids)
        choice.texts = [reported.text] if reported.text else []
        choice.tokens = reported.tokens
        choice.finished = reported.finished
    progress.with_ids = all(len(c.ids) == c.tokens for c in progress.choices)
    return progress


def can_continue(progress: Progress, sampling: Mapping[str, Any]) -> bool:
    """Whether the generation can go on elsewhere: by ids always; by text unless a grammar constrains it."""
    return progress.with_ids or not any(k in sampling for k in ("structured_outputs", "guided_decoding"))


def continuation(template, progress: Progress, choice: int, prompt: str, sampling: Mapping[str, Any]) -> Segment:
    """The request that continues `choice` (built from the first request, `template`)."""
    done = progress.choices[choice]
    remaining = dict(sampling, n=1)
    if sampling.get("max_tokens") is not None:  # absent: until the context is full, as before
        remaining["max_tokens"] = max(1, int(sampling["max_tokens"]) - done.tokens)
    request = copy.deepcopy(template)
    texts = {"sampling_parameters": json.dumps(remaining)}
    if progress.with_ids:
        triton_tensors.add_array(request, "continuation_token_ids", np.array(done.ids, dtype=np.int32))
        triton_tensors.add_array(request, "choice_index", np.array([choice], dtype=np.int32))
    else:
        texts["text_input"] = prompt + "".join(done.texts)
    _replace_bytes(request, texts)
    request.id = triton_tensors.new_request(request.model_name).id
    return Segment(request, choice, len(progress.choices))


def _replace_bytes(request, values: dict[str, str]) -> None:
    """Sets the BYTES inputs named in `values` (one element each) of `request`."""
    for position, tensor in enumerate(request.inputs):
        if tensor.name in values:
            request.raw_input_contents[position] = triton_tensors.encode_bytes([values[tensor.name].encode("utf-8")])
