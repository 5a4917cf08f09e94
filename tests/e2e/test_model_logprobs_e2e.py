"""Logprobs from the Triton models themselves, as Triton's vLLM backend carries them: input
`return_logprobs`, `sampling_parameters.logprobs` = k, output `logprobs[n]` (per choice, the JSON of a
list with one {"<token id>": {"logprob", "rank", "decoded_token"}} per token of the response).

One real tritonserver serves both the CPU model (smollm2, logprobs of its llama.cpp logits) and the
engine simulator (sim, deterministic made-up ones). Each case checks, response by response, that a
choice's list has exactly the tokens of output_token_ids and num_output_tokens, in order, each with
the chosen token first; that greedy tokens are rank 1; that the probabilities listed sum to at most 1;
that the decoded tokens spell the text; and that a non-streamed request gets the whole list.
"""

import json
import math
from dataclasses import dataclass, field

import grpc
import llama_cpp
import numpy as np
import pytest
from tritonclient.grpc import service_pb2_grpc

from tests.e2e.one_triton import one_triton
from services.common import triton_tensors
from weights import packaged_gguf  # the model's own module (tests/conftest.py puts it on sys.path)

pytestmark = pytest.mark.e2e

PROMPT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
STORY = PROMPT.format("Write a short story about a lighthouse keeper and a storm.")


class ModelError(Exception):
    pass


@dataclass
class Choice:
    """One choice of a generation, response by response."""

    texts: list[str] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    logprobs: list[list[dict] | None] = field(default_factory=list)  # the parsed JSON of each response
    reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def all_ids(self) -> list[int]:
        return [t for row in self.ids for t in row]

    def all_logprobs(self) -> list[dict]:
        return [step for row in self.logprobs for step in row]


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    with one_triton(tmp_path_factory.mktemp("lp"), ["smollm2", "sim"], "lp") as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def vocab():
    """SmolLM2's tokenizer alone (no weights)."""
    return llama_cpp.Llama(model_path=packaged_gguf(), vocab_only=True, verbose=False)


def generate(stub, model, prompt, sampling, stream=True, return_logprobs=True, continuation=None):
    """The choices of one ModelStreamInfer call, the outputs of each response checked for shape."""
    request = triton_tensors.new_request(model)
    for name, value in (("text_input", prompt), ("sampling_parameters", json.dumps(sampling))):
        triton_tensors.add_bytes(request, name, [value.encode()], [1])
    flags = [("stream", stream), ("exclude_input_in_output", True), ("return_finish_reason", True),
             ("return_num_input_tokens", True), ("return_num_output_tokens", True)]
    if return_logprobs is not None:
        flags.append(("return_logprobs", return_logprobs))
    for name, flag in flags:
        triton_tensors.add_flag(request, name, flag)
    if continuation is not None:
        triton_tensors.add_array(request, "continuation_token_ids", np.array(continuation, dtype=np.int32))
    choices = None
    for response in stub.ModelStreamInfer(iter([request]), timeout=600):
        if response.error_message:
            raise ModelError(response.error_message)
        out = triton_tensors.outputs(response.infer_response)
        n = len(out["text_output"])
        assert len(out["logprobs"]) == n  # always there, one element per choice
        choices = choices or [Choice() for _ in range(n)]
        for i, choice in enumerate(choices):
            reported = [t for t in out["output_token_ids"][i].tolist() if t != -1]
            assert out["num_output_tokens"][i] == len(reported)
            choice.texts.append(out["text_output"][i])
            choice.ids.append(reported)
            choice.counts.append(int(out["num_output_tokens"][i]))
            choice.logprobs.append(json.loads(out["logprobs"][i]))
            if out["finish_reason"][i] not in ("None", ""):
                choice.reason = out["finish_reason"][i]
    return choices


def check_lined_up(choice: Choice, k: int, greedy: bool = False, constrained: bool = False) -> list[int]:
    """Per response, one logprobs dict per reported token, the chosen one first; returns the chosen ranks.
    `constrained`: a grammar may leave fewer than k tokens possible, so fewer may be listed."""
    ranks = []
    for ids, count, steps in zip(choice.ids, choice.counts, choice.logprobs, strict=True):
        assert steps is not None and len(steps) == len(ids) == count
        for token, step in zip(ids, steps):
            keys = list(step)
            assert keys[0] == str(token) and len(set(keys)) == len(keys)
            if constrained:
                assert 1 <= len(keys) <= k + 1
            else:
                assert len(keys) in ((k, k + 1) if k else (1,))
            values = list(step.values())
            assert all(set(v) == {"logprob", "rank", "decoded_token"} for v in values)
            assert all(isinstance(v["logprob"], float) and v["logprob"] <= 0 for v in values)
            assert sum(math.exp(v["logprob"]) for v in values) <= 1 + 1e-6
            others = values[1:]
            assert [v["rank"] for v in others] == sorted(v["rank"] for v in others)
            assert all(a["logprob"] >= b["logprob"] for a, b in zip(others, others[1:]))
            chosen = values[0]
            # its rank: its place among the listed ones, or past them when it is not among the best k
            better = sum(1 for v in others if v["logprob"] > chosen["logprob"] + 1e-9)
            if len(keys) == k + 1 and k:
                assert chosen["rank"] > k and better == k
            else:
                assert chosen["rank"] == better + 1 or (
                    chosen["rank"] <= better + 1 and any(abs(v["logprob"] - chosen["logprob"]) < 1e-9 for v in others))
            if greedy:
                assert chosen["rank"] == 1 and all(chosen["logprob"] >= v["logprob"] for v in others)
            ranks.append(chosen["rank"])
    return ranks


def decoded(choice: Choice) -> str:
    return "".join(step[str(token)]["decoded_token"] for token, step in zip(choice.all_ids(), choice.all_logprobs()))


def same_values(a: list[dict], b: list[dict], tolerance: float = 1e-4) -> bool:
    if [list(s) for s in a] != [list(s) for s in b]:
        return False
    return all(abs(x[t]["logprob"] - y[t]["logprob"]) <= tolerance and x[t]["rank"] == y[t]["rank"]
               for x, y in zip(a, b) for t in x)


# -- smollm2: real logprobs of the model's logits ---------------------------------------------------


def test_smollm2_greedy_stream_and_unary(stub, vocab):
    sampling = {"temperature": 0, "max_tokens": 40, "logprobs": 3}
    (streamed,) = generate(stub, "smollm2", STORY, sampling)
    assert len(streamed.texts) > 20 and sum(streamed.counts) == 40
    check_lined_up(streamed, 3, greedy=True)
    # each decoded_token is the token's own text; English prose: no token splits a UTF-8 character
    for token in streamed.all_ids():
        vocab.detokenize([token]).decode("utf-8")  # strict: raises on a split character
    assert decoded(streamed) == streamed.text
    for token, step in zip(streamed.all_ids(), streamed.all_logprobs()):
        assert all(v["decoded_token"] == vocab.detokenize([int(t)]).decode("utf-8", "replace") for t, v in step.items())
    (unary,) = generate(stub, "smollm2", STORY, sampling, stream=False)
    assert len(unary.logprobs) == 1 and unary.all_ids() == streamed.all_ids()
    check_lined_up(unary, 3, greedy=True)
    assert same_values(unary.all_logprobs(), streamed.all_logprobs())
    # the model is confident of some tokens and not of others: the values are the model's, not constants
    chosen = [step[str(t)]["logprob"] for t, step in zip(unary.all_ids(), unary.all_logprobs())]
    assert max(chosen) > -0.05 and min(chosen) < -0.5


def test_smollm2_sampled_n_2_with_a_ban_and_k_0(stub, vocab):
    (free,) = generate(stub, "smollm2", STORY, {"temperature": 0, "max_tokens": 8, "logprobs": 5}, stream=False)
    banned = free.all_ids()[0]  # the greedy first token, then banned: never chosen nor listed
    sampling = {"temperature": 1.0, "seed": 11, "max_tokens": 30, "n": 2, "logprobs": 5,
                "logit_bias": {str(banned): -100}}
    choices = generate(stub, "smollm2", STORY, sampling)
    assert choices[0].text != choices[1].text
    ranks = []
    for choice in choices:
        ranks += check_lined_up(choice, 5)
        assert all(str(banned) not in step for step in choice.all_logprobs())
        # a response carries one choice's tokens: the other's list is empty
        assert all(steps == [] for ids, steps in zip(choice.ids, choice.logprobs) if not ids)
    assert ranks.count(1) < len(ranks)  # sampled at temperature 1: not always the most likely token
    (zero,) = generate(stub, "smollm2", STORY, {"temperature": 0, "max_tokens": 6, "logprobs": 0}, stream=False)
    check_lined_up(zero, 0, greedy=True)
    assert all(len(step) == 1 for step in zero.all_logprobs())


def test_smollm2_structured_output_lists_only_what_the_grammar_allows(stub):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}
    sampling = {"temperature": 0, "max_tokens": 30, "logprobs": 4, "structured_outputs": json.dumps({"json": schema})}
    (choice,) = generate(stub, "smollm2", PROMPT.format("What is 6 times 7? Answer as JSON."), sampling)
    assert choice.reason == "stop" and set(json.loads(choice.text)) == {"answer"}
    check_lined_up(choice, 4, greedy=True, constrained=True)
    # the first token of a JSON object: only "{" (or whitespace before it) is allowed, so only such tokens are
    # listed, though the unconstrained model would rather start in words
    first = choice.all_logprobs()[0].values()
    assert all(v["decoded_token"].strip() == "" or v["decoded_token"].lstrip().startswith("{") for v in first)
    (free,) = generate(stub, "smollm2", PROMPT.format("What is 6 times 7? Answer as JSON."),
                       {"temperature": 0, "max_tokens": 1, "logprobs": 4})
    assert not all(v["decoded_token"].lstrip().startswith("{") for v in free.all_logprobs()[0].values())


def test_smollm2_continuation_reports_new_tokens_only_and_null_without_asking(stub):
    sampling = {"temperature": 0, "max_tokens": 24, "logprobs": 2}
    (whole,) = generate(stub, "smollm2", STORY, sampling, stream=False)
    ids = whole.all_ids()
    (rest,) = generate(stub, "smollm2", STORY, {**sampling, "max_tokens": 14}, continuation=ids[:10])
    check_lined_up(rest, 2, greedy=True)
    assert rest.all_ids() == ids[10:]
    assert same_values(rest.all_logprobs(), whole.all_logprobs()[10:], tolerance=1e-3)
    # not asked for: null, per choice and response
    for return_logprobs, extra in ((False, {"logprobs": 2}), (None, {"logprobs": 2}), (True, {})):
        choices = generate(stub, "smollm2", STORY, {"temperature": 0, "max_tokens": 3, "n": 2, **extra},
                           return_logprobs=return_logprobs)
        assert all(lp is None for c in choices for lp in c.logprobs)
    with pytest.raises(ModelError, match="invalid argument: logprobs must be an integer from 0 to 20"):
        generate(stub, "smollm2", STORY, {"max_tokens": 3, "logprobs": 21})


# -- sim: deterministic, plausible logprobs -------------------------------------------------------------


def test_sim_stream_and_unary_line_up(stub):
    prompt = "Tell the story of a replica that reports its confidence."
    # a stop that never matches but often starts to: tokens (and their logprobs) are held back now and then
    sampling = {"n": 2, "max_tokens": 40, "seed": 5, "temperature": 1.0, "logprobs": 3, "stop": [" the zzzz", " of yy"]}
    streamed = generate(stub, "sim", prompt, sampling)
    unary = generate(stub, "sim", prompt, sampling, stream=False)
    ranks = []
    for s, u in zip(streamed, unary):
        ranks += check_lined_up(s, 3)
        check_lined_up(u, 3)
        assert sum(s.counts) == 40 and decoded(s) == s.text == u.text == decoded(u)
        assert s.all_logprobs() == u.all_logprobs() and len(u.logprobs) == 1
    assert any(len(ids) > 1 for ids in streamed[0].ids)  # something was held back, logprobs with it
    assert 1 in ranks and ranks.count(1) < len(ranks)
    greedy = generate(stub, "sim", prompt, {"temperature": 0, "max_tokens": 20, "logprobs": 20})
    check_lined_up(greedy[0], 20, greedy=True)


def test_sim_continuation_null_and_errors(stub):
    prompt = "Where does it go on?"
    sampling = {"max_tokens": 20, "seed": 8, "logprobs": 1}
    (whole,) = generate(stub, "sim", prompt, sampling, stream=False)
    (rest,) = generate(stub, "sim", prompt, {**sampling, "max_tokens": 13}, continuation=whole.all_ids()[:7])
    assert rest.all_ids() == whole.all_ids()[7:] and rest.all_logprobs() == whole.all_logprobs()[7:]
    for return_logprobs, extra in ((False, {"logprobs": 2}), (None, {"logprobs": 2}), (True, {})):
        choices = generate(stub, "sim", prompt, {"max_tokens": 3, "n": 2, **extra}, return_logprobs=return_logprobs)
        assert all(lp is None for c in choices for lp in c.logprobs)
    with pytest.raises(ModelError, match="invalid argument: logprobs must be an integer from 0 to 20"):
        generate(stub, "sim", prompt, {"max_tokens": 3, "logprobs": -1})
