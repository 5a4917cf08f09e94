"""The CPU text model (smollm2) resumes a generation from the token ids another replica reported.

One real tritonserver with smollm2. Each case runs a request uninterrupted (streaming), cuts it
after a response, and sends the rest as a continuation (`continuation_token_ids` = the ids
reported up to the cut, max_tokens = what remains): the text before the cut plus the
continuation's text must be the uninterrupted text exactly, with the same finish reason and
token counts. The server has served another prompt in between each time, so the continuation
evaluates its prompt afresh, as a replica that never saw the request would.
"""

import codecs
import json
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
CUT = 20  # cut after the first response that takes the reported ids to this many


class ModelError(Exception):
    pass


@dataclass
class Choice:
    """One choice of a streamed generation: per response, its text delta and reported ids."""

    texts: list[str] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def all_ids(self, responses: int | None = None) -> list[int]:
        return [t for row in self.ids[:responses] for t in row]


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    with one_triton(tmp_path_factory.mktemp("cont"), ["smollm2"], "cont") as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def vocab():
    """The model's tokenizer alone (no weights), to detokenize reported ids."""
    return llama_cpp.Llama(model_path=packaged_gguf(), vocab_only=True, verbose=False)


def generate(stub, prompt, sampling, stream=True, continuation=None, choice_index=None):
    """(choices, num_input_tokens) of one ModelStreamInfer call, built as the text service builds it."""
    request = triton_tensors.new_request("smollm2")
    for name, value in (("text_input", prompt), ("sampling_parameters", json.dumps(sampling))):
        triton_tensors.add_bytes(request, name, [value.encode()], [1])
    for name, flag in (("stream", stream), ("exclude_input_in_output", True), ("return_finish_reason", True),
                       ("return_num_input_tokens", True), ("return_num_output_tokens", True)):
        triton_tensors.add_flag(request, name, flag)
    if continuation is not None:
        triton_tensors.add_array(request, "continuation_token_ids", np.array(continuation, dtype=np.int32))
    if choice_index is not None:
        triton_tensors.add_array(request, "choice_index", np.array([choice_index], dtype=np.int32))
    choices, n_in = None, set()
    for response in stub.ModelStreamInfer(iter([request]), timeout=600):
        if response.error_message:
            raise ModelError(response.error_message)
        out = triton_tensors.outputs(response.infer_response)
        ids = out["output_token_ids"]
        n = len(out["text_output"])
        assert ids.shape[0] == n and ids.dtype == np.int32
        choices = choices or [Choice() for _ in range(n)]
        for i, choice in enumerate(choices):
            row = ids[i].tolist()
            reported = [t for t in row if t != -1]
            assert row == reported + [-1] * (len(row) - len(reported))  # padding only at the end
            assert out["num_output_tokens"][i] == len(reported)
            choice.texts.append(out["text_output"][i])
            choice.ids.append(reported)
            choice.counts.append(int(out["num_output_tokens"][i]))
            if out["finish_reason"][i] not in ("None", ""):
                choice.reason = out["finish_reason"][i]
        n_in.add(int(out["num_input_tokens"][0]))
    assert len(n_in) == 1
    return choices, n_in.pop()


def evict(stub):
    """Another prompt: the next request evaluates its prompt afresh (no cached prompt)."""
    generate(stub, PROMPT.format("Say hi."), {"max_tokens": 1, "temperature": 0})


def check_reported_ids(vocab, choice: Choice):
    """Before every non-final response, the ids reported so far detokenize to the text emitted so far."""
    for j in range(1, len(choice.texts)):
        data = b"".join(vocab.detokenize([t]) for t in choice.all_ids(j))
        assert codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data) == "".join(choice.texts[:j])


def cut_after(choice: Choice, at_least: int) -> int:
    """The number of responses up to the first whose reported ids reach `at_least`."""
    total = 0
    for j, row in enumerate(choice.ids[:-1]):
        total += len(row)
        if total >= at_least:
            return j + 1
    raise AssertionError("the generation is too short to cut")


def resume(stub, vocab, prompt, sampling, at_least=CUT, responses=None, stream=True, run=None):
    """Runs `sampling` uninterrupted (unless `run` is that run), then cut after `responses` (or after
    `at_least` ids) and continued; asserts they agree. Returns the uninterrupted choice."""
    (whole,), n_in = run or generate(stub, prompt, sampling)
    check_reported_ids(vocab, whole)
    total = sum(whole.counts)
    assert whole.all_ids() and len(whole.all_ids()) == total
    responses = responses or cut_after(whole, at_least)
    before, k = "".join(whole.texts[:responses]), len(whole.all_ids(responses))
    evict(stub)
    rest = {**sampling, "max_tokens": sampling["max_tokens"] - k}
    (cont,), cont_n_in = generate(stub, prompt, rest, stream=stream, continuation=whole.all_ids(responses))
    assert before + cont.text == whole.text
    assert (cont.reason, cont_n_in, sum(cont.counts)) == (whole.reason, n_in, total - k)
    assert cont.all_ids() == whole.all_ids()[k:]
    return whole


def test_greedy_resumes_byte_for_byte(stub, vocab):
    whole = resume(stub, vocab, STORY, {"temperature": 0, "max_tokens": 60})
    assert whole.reason == "length" and len(whole.texts) > 30
    # unary too, and an empty continuation is a plain request
    resume(stub, vocab, STORY, {"temperature": 0, "max_tokens": 60}, at_least=35, stream=False)
    (plain,), _ = generate(stub, STORY, {"temperature": 0, "max_tokens": 5}, stream=False, continuation=[])
    assert plain.text == "".join(whole.texts)[: len(plain.text)] and plain.all_ids() == whole.all_ids()[:5]


def test_seeded_sample_with_penalties_resumes_exactly(stub, vocab):
    sampling = {"temperature": 1.0, "seed": 7, "max_tokens": 60, "presence_penalty": 0.4, "frequency_penalty": 0.3}
    resume(stub, vocab, STORY, sampling)


def test_structured_output_resumes_with_the_grammar_replayed(stub, vocab):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"},
                       "landmarks": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
        "required": ["city", "population", "landmarks"], "additionalProperties": False,
    }
    sampling = {"temperature": 0.8, "seed": 3, "max_tokens": 120,
                "structured_outputs": json.dumps({"json": schema})}
    prompt = PROMPT.format("Describe Paris as JSON with its city name, population and landmarks.")
    whole = resume(stub, vocab, prompt, sampling)
    answer = json.loads(whole.text)
    assert whole.reason == "stop" and set(answer) == {"city", "population", "landmarks"}
    # every token replayed: the grammar is complete, nothing more comes
    (done,), _ = generate(stub, prompt, {**sampling, "max_tokens": 10}, continuation=whole.all_ids())
    assert (done.text, done.reason, sum(done.counts)) == ("", "stop", 0)


def test_stop_sequence_found_across_the_cut(stub, vocab):
    (free,), _ = generate(stub, STORY, {"temperature": 0, "max_tokens": 60})
    ids = free.all_ids()
    # a stop from the middle of token i's text to the middle of token i + 2's (i >= 20)
    ends = [len(vocab.detokenize(ids[: i + 1]).decode("utf-8", "replace")) for i in range(len(ids))]
    i = next(i for i in range(20, 50) if ends[i] - ends[i - 1] >= 2 and ends[i + 2] - ends[i + 1] >= 2)
    start, end = ends[i] - 1, ends[i + 2] - 1
    stop = free.text[start:end]
    assert free.text.find(stop) == start, "pick a stop that appears only there"
    sampling = {"temperature": 0, "max_tokens": 60, "stop": [stop]}
    run = generate(stub, STORY, sampling)
    (stopped,), _ = run
    assert stopped.text == free.text[:start] and stopped.reason == "stop"
    # the last cut possible: the stream held back the start of the stop; the continuation
    # regenerates it and finds the stop, which spans the tokens either side of the cut
    assert sum(stopped.counts) - len(stopped.all_ids(len(stopped.texts) - 1)) >= 2
    resume(stub, vocab, STORY, sampling, responses=len(stopped.texts) - 1, run=run)
    resume(stub, vocab, STORY, sampling, at_least=10, run=run)


def test_a_cut_inside_a_utf8_character_completes_it(stub, vocab):
    prompt = PROMPT.format("Reply with ten emoji about the weather, like \u2600\ufe0f\U0001f327\ufe0f\u26c8\ufe0f.")
    sampling = {"temperature": 1.0, "seed": 5, "max_tokens": 60}
    run = generate(stub, prompt, sampling)
    (whole,), _ = run

    def mid_character(j):  # the ids of the first j responses end inside a character
        data = b"".join(vocab.detokenize([t]) for t in whole.all_ids(j))
        return codecs.getincrementaldecoder("utf-8")().decode(data) != data.decode("utf-8", "replace")

    cut = next((j for j in range(1, len(whole.texts)) if mid_character(j)), None)
    assert cut is not None, "no response of this sample ends inside a character: pick another"
    resume(stub, vocab, prompt, sampling, responses=cut, run=run)


def test_choice_index_resumes_choice_1_of_n_2(stub, vocab):
    sampling = {"temperature": 1.0, "seed": 11, "max_tokens": 30}
    both, n_in = generate(stub, STORY, {**sampling, "n": 2})
    assert both[0].text != both[1].text
    check_reported_ids(vocab, both[1])
    second = both[1]
    responses = cut_after(second, 10)
    k = len(second.all_ids(responses))
    evict(stub)
    (alone,), _ = generate(stub, STORY, sampling, choice_index=1)
    assert alone.text == second.text
    (cont,), cont_n_in = generate(stub, STORY, {**sampling, "max_tokens": 30 - k},
                                  continuation=second.all_ids(responses), choice_index=1)
    assert "".join(second.texts[:responses]) + cont.text == second.text
    assert (cont.reason, cont_n_in, sum(cont.counts)) == (second.reason, n_in, 30 - k)


def test_invalid_continuations_are_refused(stub):
    with pytest.raises(ModelError, match="invalid argument: continuation_token_ids needs n = 1"):
        generate(stub, STORY, {"n": 2, "max_tokens": 4}, continuation=[1, 2])
    with pytest.raises(ModelError, match="invalid argument: continuation token id 1000000 is out of vocabulary"):
        generate(stub, STORY, {"max_tokens": 4}, continuation=[1, 1_000_000])
