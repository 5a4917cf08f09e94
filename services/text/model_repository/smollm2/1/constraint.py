"""Structured output for the CPU text model: vLLM's `structured_outputs` enforced with llguidance.

The text service sends vLLM's StructuredOutputsParams (as `structured_outputs` in the
`sampling_parameters` JSON, a JSON string as Triton's vLLM backend expects; the older
`guided_decoding` is read too). Exactly one of its constraint fields is honoured: `json` (a JSON
schema), `json_object`, `regex`, `choice`, `grammar` (Lark or GBNF) or `structural_tag` (vLLM's
{"structures": [{"begin", "schema", "end"}], "triggers": [...]}: free text in which every
trigger starts one of the structures). They are compiled the way vLLM's `guidance` backend
compiles them, so a GPU node running vLLM with llguidance enforces the very same grammar.

One difference is deliberate: JSON is generated in json.dumps' default layout (", " and ": ",
no newlines or indentation; vLLM's `disable_any_whitespace` is the same idea without the spaces),
because a small model given free whitespace can loop on newlines inside an object.

Each step the matcher gives the set of allowed tokens; the sampler sees only those, and the
end-of-generation tokens are allowed only where the grammar accepts the output.
"""

from __future__ import annotations

import json
import warnings

import llguidance
import numpy as np
from sampling import InvalidSampling

JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def tokenizer_from_llama(vocab, n_vocab: int, eog_tokens: list[int]) -> llguidance.LLTokenizer:
    """llguidance's tokenizer over the model's own llama.cpp vocabulary (about a second; build once)."""
    from llguidance.llamacpp import lltokenizer_from_vocab

    with warnings.catch_warnings():  # it reads token attributes with a llama.cpp call since renamed
        warnings.simplefilter("ignore", DeprecationWarning)
        return lltokenizer_from_vocab(vocab, n_vocab=n_vocab, eos_token=list(eog_tokens))


def _schema(value) -> dict:
    schema = json.loads(value) if isinstance(value, str) else value
    if not isinstance(schema, dict):
        raise InvalidSampling("a JSON schema must be a JSON object")
    return schema


def _with_layout(schema: dict) -> dict:
    """The schema with this model's JSON layout, unless the schema sets its own x-guidance."""
    return schema if "x-guidance" in schema else {**schema, "x-guidance": JSON_LAYOUT}


def grammar_for(constraint: dict) -> str:
    """The llguidance grammar of a one-key constraint (sampling.requested_constraint())."""
    (kind, value), = constraint.items()
    try:
        if kind == "json":
            return llguidance.LLMatcher.grammar_from_json_schema(_schema(value), defaults=JSON_LAYOUT)
        if kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_LAYOUT)
        if kind == "regex":
            return llguidance.grammar_from("regex", str(value))
        if kind == "choice":
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise InvalidSampling("structured_outputs.choice must be a list of strings")
            return llguidance.grammar_from("choice", value)
        if kind == "grammar":
            return llguidance.grammar_from("grammar", str(value))
        return _structural_tag_grammar(value)
    except InvalidSampling:
        raise
    except (ValueError, TypeError, KeyError, AssertionError) as err:
        raise InvalidSampling(f"structured_outputs.{kind} cannot be compiled: {err}") from err


def _structural_tag_grammar(value) -> str:
    spec = json.loads(value) if isinstance(value, str) else value
    if not isinstance(spec, dict) or "structures" not in spec:
        raise InvalidSampling('structured_outputs.structural_tag must be {"structures": [...], "triggers": [...]}')
    triggers = list(spec.get("triggers") or [])
    tags = []
    for structure in spec["structures"]:
        begin = structure["begin"]
        trigger = next((t for t in triggers if begin.startswith(t)), None)
        if trigger is None:
            raise InvalidSampling(f"structural_tag: no trigger starts {begin!r}")
        tags.append(
            llguidance.StructTag(
                trigger=trigger, begin=begin, grammar=_with_layout(_schema(structure["schema"])), end=structure["end"]
            )
        )
    if not tags:
        raise InvalidSampling("structural_tag has no structures")
    return llguidance.StructTag.to_grammar(tags)


class Constraint:
    """A compiled constraint; matcher() gives each choice its own TokenMask."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, constraint: dict) -> None:
        grammar = grammar_for(constraint)
        error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        if error:
            raise InvalidSampling(f"structured output cannot be enforced: {error}")
        self._tokenizer = tokenizer
        self._grammar = grammar

    def matcher(self, n_vocab: int) -> TokenMask:
        return TokenMask(llguidance.LLMatcher(self._tokenizer, self._grammar, log_level=0), n_vocab)


class TokenMask:
    """The grammar's state for one sequence: which tokens may come next."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int) -> None:
        if matcher.is_error():
            raise InvalidSampling(f"structured output cannot be enforced: {matcher.get_error()}")
        self._matcher = matcher
        self._n_vocab = n_vocab
        self._bits = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """Boolean mask over the vocabulary of the tokens the grammar allows next."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        mask = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._n_vocab].astype(bool)
        if not mask.any():
            why = self._matcher.get_error() or "no token fits"
            raise InvalidSampling(f"the structured output cannot be completed: {why}")
        return mask

    def accept(self, token: int) -> None:
        """Advances past a sampled token (one the last mask allowed)."""
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"the grammar rejected token {token}: {self._matcher.get_error()}")

    def replay(self, token: int) -> None:
        """Advances past a token of a continuation (generated elsewhere): one the grammar must allow."""
        if not self._matcher.consume_token(token):
            why = self._matcher.get_error()
            raise InvalidSampling(f"continuation token {token} breaks the structured output: {why}")

    @property
    def finished(self) -> bool:
        """True when the grammar is complete and only an end-of-generation token may follow."""
        return self._matcher.is_stopped()
