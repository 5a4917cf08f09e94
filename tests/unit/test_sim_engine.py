"""The engine simulator's core (services/text/model_repository/sim/1/engine.py), without Triton or a clock.

Each test drives `Engine.step()` by hand and pins what a step computes and how long the timing model
says it takes.
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SIM_DIR = Path(__file__).resolve().parents[2] / "services" / "text" / "model_repository" / "sim" / "1"
sys.path.insert(0, str(SIM_DIR))  # engine.py imports simtext.py beside it, as model.py does in Triton


def _load(name: str, filename: str):
    spec = importlib.util.spec_from_file_location(name, SIM_DIR / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


sim = _load("sim_engine", "engine.py")
from simtext import PIECE, WORDS, pieces  # noqa: E402

Engine, EngineConfig, new_request = sim.Engine, sim.EngineConfig, sim.new_request

H200 = EngineConfig()


def prompt_of(n_pieces: int, word: str = "abcd") -> str:
    """A prompt of exactly n_pieces tokens (each " " + a 4-letter word)."""
    return f" {word}" * n_pieces


def submit(engine, prompt, stream=True, **sampling):
    request = new_request(object(), prompt, sampling, stream, engine.config)
    engine.add(request)
    return request


def run(engine):
    """Steps until idle; returns the StepResults."""
    steps = []
    while engine.has_work():
        steps.append(engine.step())
        assert len(steps) < 100_000
    return steps


def texts_of(steps, request):
    """The whole text of each choice of a request, joined from its outputs."""
    out = [""] * request.n
    for step in steps:
        for o in step.outputs:
            if o.request is request:
                for i, t in enumerate(o.texts):
                    out[i] += t
    return out


# -- tokenisation and text ----------------------------------------------------------------------


def test_token_rule_cuts_words_into_pieces_of_four():
    assert pieces("hello world") == ["hell", "o", " worl", "d"]
    assert pieces("a  bc\n\tdefghi ") == ["a", "  bc", "\n\tdefg", "hi", " "]
    assert pieces("") == []
    assert "".join(pieces("Any text, at all!\n")) == "Any text, at all!\n"
    # ~4 characters a token on English prose
    prose = "The quick brown fox jumps over the lazy dog while the farmer watches from his porch. " * 20
    assert 3.5 < len(prose) / len(pieces(prose)) < 4.5
    request = new_request(None, "hello world", {}, False, H200)  # the spaces before a piece are free
    assert request.num_input_tokens == 4


def test_generated_words_are_one_token_each():
    for word in WORDS:
        assert PIECE.findall(" " + word) == [" " + word]


def test_text_is_deterministic_per_prompt_seed_and_choice():
    def generate(prompt, **sampling):
        engine = Engine(H200)
        request = submit(engine, prompt, stream=False, max_tokens=12, **sampling)
        return texts_of(run(engine), request)

    a = generate("Tell me a story", n=2, seed=7)
    assert a == generate("Tell me a story", n=2, seed=7)
    assert a[0] != a[1]  # choices differ
    assert generate("Tell me a story", seed=8) != a[:1]
    assert generate("Tell me a story!", seed=7) != a[:1]
    assert len(pieces(a[0])) == 12 and a[0].startswith(" ")
    # no seed: seed 0
    assert generate("Tell me a story") == generate("Tell me a story", seed=0)
    # temperature 0: one text per prompt, whatever the seed and the choice
    greedy = generate("Tell me a story", n=3, temperature=0, seed=5)
    assert greedy == [greedy[0]] * 3 == generate("Tell me a story", n=3, temperature=0, seed=6)


def test_streamed_deltas_add_up_to_the_whole_text():
    engine = Engine(H200)
    streamed = submit(engine, "same prompt", stream=True, n=2, max_tokens=20, seed=3)
    whole = submit(engine, "same prompt", stream=False, n=2, max_tokens=20, seed=3)
    steps = run(engine)
    assert texts_of(steps, streamed) == texts_of(steps, whole)
    outs = [o for s in steps for o in s.outputs if o.request is streamed]
    assert [sum(o.num_output_tokens[i] for o in outs) for i in range(2)] == [20, 20]
    assert outs[-1].finished and outs[-1].finish_reasons == ["length", "length"]
    assert all(not o.finished and "length" not in o.finish_reasons for o in outs[:-1])
    (only,) = [o for s in steps for o in s.outputs if o.request is whole]
    assert only.finished and only.num_output_tokens == [20, 20]


def test_stop_sequence_cuts_the_text_and_finishes_with_stop():
    engine = Engine(H200)
    free = submit(engine, "a prompt", stream=False, max_tokens=30, seed=1)
    (text,) = texts_of(run(engine), free)
    words = text.split(" ")[1:]
    stop = " " + words[5]
    cut = text[: text.index(stop)]
    streamed = submit(engine, "a prompt", stream=True, max_tokens=30, seed=1, stop=[stop])
    steps = run(engine)
    assert texts_of(steps, streamed) == [cut]
    last = [o for s in steps for o in s.outputs if o.request is streamed][-1]
    assert last.finished and last.finish_reasons == ["stop"]


def test_max_tokens_is_clamped_to_the_context():
    cfg = EngineConfig(max_model_len=64, kv_cache_tokens=256)
    engine = Engine(cfg)
    request = submit(engine, prompt_of(60), stream=False, max_tokens=1000)
    assert request.max_tokens == 4
    steps = run(engine)
    assert steps[-1].outputs[0].num_output_tokens == [4] and steps[-1].outputs[0].finish_reasons == ["length"]
    assert submit(Engine(cfg), prompt_of(10)).max_tokens == 54  # no max_tokens: until the context is full


@pytest.mark.parametrize(
    ("prompt", "sampling", "message"),
    [
        (prompt_of(8192), {}, "Prompt length of 8192 tokens is longer than the maximum model length of 8192 tokens"),
        ("hi", {"structured_outputs": '{"json": {}}'}, "the engine simulator does not enforce structured output"),
        ("hi", {"guided_decoding": {"regex": "a+"}}, "the engine simulator does not enforce structured output"),
        ("", {}, "the prompt is empty"),
        ("hi", {"max_tokens": 0}, "max_tokens must be at least 1"),
    ],
)
def test_invalid_requests(prompt, sampling, message):
    with pytest.raises(sim.InvalidRequest, match=message):
        new_request(None, prompt, sampling, True, H200)


# -- timing ---------------------------------------------------------------------------------------


def test_calibration_figures():
    cfg = EngineConfig(step_overhead_s=0)
    bandwidth = 4.8e12 * 0.8
    assert cfg.step_duration(1, 0) == pytest.approx(16.06e9 / bandwidth)  # ~4.18 ms
    assert cfg.step_duration(1, 0) == pytest.approx(4.18e-3, abs=0.01e-3)
    # a 3,000-token prefill: compute-bound, plus reading its own KV
    assert cfg.step_duration(3000, 3000) == pytest.approx(
        2 * 8.03e9 * 3000 / (989e12 * 0.5) + 3000 * 131072 / bandwidth
    )
    assert cfg.step_duration(3000, 0) == pytest.approx(97.4e-3, abs=0.1e-3)
    assert cfg.kv_capacity_tokens == int((141e9 * 0.9 - 16.06e9 - 2e9) // 131072) == 830383
    assert cfg.num_blocks == 51898
    assert EngineConfig(kv_cache_tokens=1000, max_model_len=512).num_blocks == 62
    assert EngineConfig(time_scale=0.1).step_duration(3000, 3000) == pytest.approx(
        EngineConfig().step_duration(3000, 3000) * 0.1
    )


def test_config_from_model_parameters():
    cfg = EngineConfig.from_parameters(
        {"max_num_seqs": "8", "time_scale": "0.5", "kv_cache_tokens": "1e5", "mfu": "0.4", "n_ctx": "ignored",
         "params": ""}
    )
    assert (cfg.max_num_seqs, cfg.time_scale, cfg.kv_cache_tokens, cfg.mfu, cfg.params) == (8, 0.5, 100000, 0.4, 8.03e9)
    with pytest.raises(ValueError, match="fewer than max_model_len"):
        EngineConfig(kv_cache_tokens=1000)


def test_first_token_at_the_end_of_the_prefill_step_then_one_per_step():
    engine = Engine(H200)
    request = submit(engine, prompt_of(3000), max_tokens=3)
    steps = run(engine)
    assert [s.num_tokens for s in steps] == [3000, 1, 1]
    assert [s.duration_s for s in steps] == [
        H200.step_duration(3000, 3000), H200.step_duration(1, 3001), H200.step_duration(1, 3002)
    ]
    assert [o.num_output_tokens for s in steps for o in s.outputs] == [[1], [1], [1]]
    assert engine.clock == pytest.approx(sum(s.duration_s for s in steps))
    assert request.finished and engine.pool.usage() == 0.0


def test_chunked_prefill_spreads_a_long_prompt_over_steps():
    cfg = EngineConfig(max_num_batched_tokens=1024)
    engine = Engine(cfg)
    submit(engine, prompt_of(3000), max_tokens=1)
    steps = run(engine)
    assert [s.num_tokens for s in steps] == [1024, 1024, 952]
    assert [len(s.outputs) for s in steps] == [0, 0, 1]
    assert steps[1].duration_s == cfg.step_duration(1024, 2048)  # the chunk attends to the prefix


def test_prefix_hit_shortens_the_prefill_by_the_cached_fraction():
    cfg = EngineConfig(step_overhead_s=0)
    engine = Engine(cfg)
    prompt = prompt_of(3000)
    cold = submit(engine, prompt, max_tokens=1)
    cold_step = run(engine)[0]
    warm = submit(engine, prompt, max_tokens=1)
    warm_step = run(engine)[0]
    assert cold.num_cached_tokens == 0
    assert warm.num_cached_tokens == 2992  # 187 full blocks of 16 within the first 2,999 tokens
    assert warm_step.num_tokens == 3000 - 2992
    # compute-bound prefill: the GEMM time shrinks by the cached fraction (attention still reads all the KV)
    attention = 3000 * cfg.kv_bytes_per_token / (cfg.hbm_bandwidth * cfg.bandwidth_efficiency)
    cold_gemm = cold_step.duration_s - attention
    assert cold_gemm == pytest.approx(2 * cfg.params * 3000 / (cfg.peak_flops * cfg.mfu))
    warm_prefill = warm_step.duration_s - attention
    # 8 tokens are below the roofline's knee: the weights' read bounds the step
    assert warm_prefill == pytest.approx(cfg.weight_bytes / (cfg.hbm_bandwidth * cfg.bandwidth_efficiency))
    assert warm_step.duration_s < cold_step.duration_s / 15

    # a prompt that shares its first 1,000 tokens: the shared full blocks (62 x 16) are cached
    shared = submit(engine, prompt_of(1000) + prompt_of(2000, "wxyz"), max_tokens=1)
    step = run(engine)[0]
    assert shared.num_cached_tokens == 992 and step.num_tokens == 3000 - 992
    assert step.duration_s - attention == pytest.approx(cold_gemm * (3000 - 992) / 3000)
    assert engine.stats.prefix_cache_queries == 9000
    assert engine.stats.prefix_cache_hits == 2992 + 992


def test_second_choice_hits_the_cache_of_the_first():
    engine = Engine(H200)
    request = submit(engine, prompt_of(500), n=3, max_tokens=2)
    first = engine.step()
    assert first.num_sequences == 3
    assert first.num_tokens == 500 + 2 * (500 - 496)  # choices 1 and 2 reuse 31 blocks of choice 0
    assert request.num_cached_tokens == 0  # choice 0's
    assert engine.stats.prefix_cache_hits == 2 * 496
    run(engine)


def test_bigger_decode_batch_makes_steps_slower_as_the_formula_says():
    cfg = EngineConfig()
    durations = {}
    for batch in (1, 8, 64, 256):
        engine = Engine(cfg)
        for i in range(batch):
            submit(engine, prompt_of(30, f"w{i:03d}"), max_tokens=10)
        assert engine.step().num_tokens == 30 * batch  # the prefills
        decode = engine.step()
        assert decode.num_tokens == batch
        assert decode.duration_s == cfg.step_duration(batch, batch * 31)
        durations[batch] = decode.duration_s
    bandwidth = cfg.hbm_bandwidth * cfg.bandwidth_efficiency
    # below the knee each sequence adds the read of its KV cache
    assert durations[64] - durations[8] == pytest.approx(56 * 31 * cfg.kv_bytes_per_token / bandwidth)
    # at 256 the GEMMs are compute-bound (2 x params x 256 FLOPs > the weights' read)
    assert 2 * cfg.params * 256 / (cfg.peak_flops * cfg.mfu) > cfg.weight_bytes / bandwidth
    assert durations[1] < durations[8] < durations[64] < durations[256]


def test_prefill_and_decodes_in_one_step_add_up():
    cfg = EngineConfig()
    engine = Engine(cfg)
    submit(engine, prompt_of(100), max_tokens=5)
    engine.step()
    submit(engine, prompt_of(2000, "wxyz"), max_tokens=5)
    mixed = engine.step()
    assert mixed.num_tokens == 2001 and mixed.duration_s == cfg.step_duration(2001, 101 + 2000)


def test_max_num_seqs_makes_a_queue():
    engine = Engine(EngineConfig(max_num_seqs=2))
    requests = [submit(engine, prompt_of(10, f"p{i:03d}"), max_tokens=3 + 2 * i) for i in range(3)]
    engine.step()
    assert (engine.num_running, engine.num_waiting) == (2, 1)
    steps = [engine.step(), engine.step()]  # request 0 finishes at the 3rd step
    assert (engine.num_running, engine.num_waiting) == (1, 1)
    admitting = engine.step()
    assert (engine.num_running, engine.num_waiting) == (2, 0)
    assert admitting.num_tokens == 1 + 10  # a decode and the queued prompt
    run(engine)
    assert all(r.finished for r in requests)
    assert not any(o.request is requests[2] for s in steps for o in s.outputs)


def test_full_kv_cache_makes_a_queue():
    # 8 blocks: one 100-token prompt takes 7, so the second waits for the first to finish
    engine = Engine(EngineConfig(kv_cache_tokens=128, max_model_len=128, block_size=16))
    first = submit(engine, prompt_of(100), max_tokens=2)
    second = submit(engine, prompt_of(100, "wxyz"), max_tokens=2)
    engine.step()
    assert (engine.num_running, engine.num_waiting) == (1, 1)
    assert engine.pool.usage() == 7 / 8
    engine.step()
    assert first.finished and (engine.num_running, engine.num_waiting) == (0, 1)
    assert engine.step().num_tokens == 100
    run(engine)
    assert second.finished


def test_lru_eviction_drops_the_oldest_unreferenced_blocks():
    # 8 blocks of 16; each prompt has 33 tokens: 3 blocks, 2 of them full (cacheable)
    engine = Engine(EngineConfig(kv_cache_tokens=128, max_model_len=128))
    a, b, c, d = (prompt_of(33, w) for w in ("aaaa", "bbbb", "cccc", "dddd"))
    for prompt in (a, b):
        submit(engine, prompt, max_tokens=1)
        run(engine)
    assert engine.pool.usage() == 0.0  # freed, yet still cached
    assert len(engine.pool.by_hash) == 4
    # c and d take 6 blocks: the 5 never used, then the least recently freed ones, a's
    for prompt in (c, d):
        submit(engine, prompt, max_tokens=1)
        run(engine)
    again_b = submit(engine, b, max_tokens=1)
    run(engine)
    again_a = submit(engine, a, max_tokens=1)
    run(engine)
    assert again_b.num_cached_tokens == 32  # both of its full blocks survived
    assert again_a.num_cached_tokens == 0  # the oldest: evicted


def test_preemption_recomputes_and_keeps_the_text():
    def texts(kv_tokens):
        engine = Engine(EngineConfig(kv_cache_tokens=kv_tokens, max_model_len=128, block_size=16))
        requests = [submit(engine, prompt_of(40, w), stream=False, max_tokens=60) for w in ("aaaa", "bbbb")]
        steps = run(engine)
        return [texts_of(steps, r) for r in requests], engine.stats.num_preemptions, engine

    roomy, none, _ = texts(1024)
    tight, preemptions, engine = texts(128)  # 8 blocks: two sequences of 100 tokens cannot both fit
    assert none == 0 and preemptions >= 1
    assert tight == roomy
    assert engine.pool.usage() == 0.0


def test_cancel_frees_the_blocks():
    engine = Engine(H200)
    keep = submit(engine, prompt_of(100), max_tokens=50)
    gone = submit(engine, prompt_of(100, "wxyz"), n=2, max_tokens=50)
    queued = submit(engine, prompt_of(10, "qqqq"), max_tokens=50)
    engine.step()
    engine.cancel(gone)
    engine.cancel(queued)
    assert gone.finished and engine.requests() == [keep]
    assert engine.num_running == 1
    assert engine.pool.usage() == math.ceil(101 / 16) / engine.pool.num_blocks
    run(engine)
    assert engine.pool.usage() == 0.0


# -- continuation (a generation moved to another replica) -------------------------------------------

from simtext import token_text  # noqa: E402


def outputs_of(steps, request):
    return [o for s in steps for o in s.outputs if o.request is request]


def ids_of(outs, n):
    """Each choice's token ids, joined from the outputs (row i of each output's token_ids)."""
    return [[t for o in outs for t in o.token_ids[i]] for i in range(n)]


def spelled(ids):
    return "".join(token_text(t) for t in ids)


def generate(prompt, stream=True, engine=None, continuation=None, choice_index=0, **sampling):
    """(request, outputs, texts, ids) of one request run alone to the end."""
    engine = engine or Engine(H200)
    request = new_request(object(), prompt, sampling, stream, engine.config, choice_index, continuation)
    engine.add(request)
    outs = outputs_of(run(engine), request)
    texts = ["".join(o.texts[i] for o in outs) for i in range(request.n)]
    return request, outs, texts, ids_of(outs, request.n)


def test_output_token_ids_spell_the_text_and_count_the_tokens():
    # a stop that never matches but whose start often does: text (and its ids) is held back now and then
    _, _, (text,), (ids,) = generate("ids prompt", stream=False, max_tokens=40, seed=4)
    assert spelled(ids) == text and len(ids) == 40
    first = text.split(" ")[1]
    _, outs, (streamed,), (streamed_ids,) = generate(
        "ids prompt", max_tokens=40, seed=4, stop=[f" {first} zzzz", " the zz"])
    assert streamed == text and streamed_ids == ids
    so_far_text, so_far_ids = "", []
    for o in outs:
        assert o.num_output_tokens == [len(o.token_ids[0])]
        so_far_text += o.texts[0]
        so_far_ids += o.token_ids[0]
        if not o.finished:
            assert spelled(so_far_ids) == so_far_text
    assert any(len(o.token_ids[0]) > 1 for o in outs)  # something was held back, ids with its text
    assert sum(o.num_output_tokens[0] for o in outs) == 40


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("n", "choice", "sampling"), [
    (1, 0, {"seed": 9}), (2, 1, {"seed": 9}), (3, 2, {"temperature": 0}), (1, 0, {}),
])
def test_a_continuation_produces_exactly_the_rest_of_the_uninterrupted_run(stream, n, choice, sampling):
    prompt = "Continue me, exactly."
    whole, _, texts, ids = generate(prompt, stream=stream, n=n, max_tokens=30, **sampling)
    for k in (1, 7, 29):
        request, outs, (rest,), (rest_ids,) = generate(
            prompt, stream=stream, continuation=ids[choice][:k], choice_index=choice, n=1,
            max_tokens=30 - k, **sampling)
        assert spelled(ids[choice][:k]) + rest == texts[choice]
        assert rest_ids == ids[choice][k:]
        assert sum(o.num_output_tokens[0] for o in outs) == 30 - k  # only the new tokens
        assert outs[-1].finished and outs[-1].finish_reasons == ["length"]
        assert request.num_input_tokens == whole.num_input_tokens == len(pieces(prompt))
    # choice_index alone: the choice's text from its first token
    _, _, (alone,), _ = generate(prompt, stream=stream, choice_index=choice, max_tokens=30, **sampling)
    assert alone == texts[choice]


def test_a_continuation_is_prefilled_with_the_prompt():
    cfg = EngineConfig(step_overhead_s=0)
    prompt = prompt_of(3000)
    _, _, _, (ids,) = generate(prompt, stream=False, engine=Engine(cfg), max_tokens=600, seed=1)
    cont = ids[:500]

    # a fresh replica: prompt and continuation are computed, their KV held, 3,500 tokens in the first step
    cold = Engine(cfg)
    request = new_request(object(), prompt, {"max_tokens": 100, "seed": 1}, True, cfg, 0, cont)
    cold.add(request)
    first = cold.step()
    assert first.num_tokens == 3500 and first.duration_s == cfg.step_duration(3500, 3500)
    assert cold.pool.usage() == math.ceil(3500 / 16) / cold.pool.num_blocks
    assert request.num_cached_tokens == 0 and request.num_input_tokens == 3000
    assert first.outputs[0].token_ids == [[ids[500]]] and first.outputs[0].num_output_tokens == [1]
    run(cold)
    assert cold.stats.prompt_tokens == 3500  # what this engine prefilled
    assert cold.stats.prefix_cache_queries == 3500 and cold.stats.generation_tokens == 100

    # a replica that served the prompt before: only the continuation (and the prompt's tail) is computed
    warm = Engine(cfg)
    generate(prompt, engine=warm, max_tokens=1)
    request = new_request(object(), prompt, {"max_tokens": 100, "seed": 1}, True, cfg, 0, cont)
    warm.add(request)
    step = warm.step()
    assert request.num_cached_tokens == 2992
    assert step.num_tokens == 3500 - 2992 and step.duration_s == cfg.step_duration(508, 3500)
    assert step.duration_s < first.duration_s / 5
    _, outs, _, (rest,) = generate(prompt, engine=Engine(cfg), continuation=cont, max_tokens=100, seed=1)
    assert [first.outputs[0].token_ids[0][0]] + [t for o in outputs_of(run(warm), request)
                                                 for t in o.token_ids[0]] == rest == ids[500:600]

    # the replica that produced the tokens: the continuation's blocks are cached too (reported: the prompt's)
    same = Engine(cfg)
    generate(prompt, engine=same, max_tokens=600, seed=1)
    request = new_request(object(), prompt, {"max_tokens": 100, "seed": 1}, True, cfg, 0, cont)
    same.add(request)
    assert same.step().num_tokens == 3500 - 3488  # 218 full blocks within the first 3,499 tokens
    assert request.num_cached_tokens == 3000


def test_a_chunked_continuation_and_the_context_limit():
    cfg = EngineConfig(max_num_batched_tokens=1024, max_model_len=2048, kv_cache_tokens=4096)
    prompt = prompt_of(1000)
    _, _, _, (ids,) = generate(prompt, stream=False, engine=Engine(cfg))  # until the context is full
    assert len(ids) == 1048
    engine = Engine(cfg)
    request = new_request(object(), prompt, {"max_tokens": 1000}, True, cfg, 0, ids[:800])
    assert request.max_tokens == 2048 - 1800  # max_tokens counts new tokens, clamped to what the context holds
    engine.add(request)
    steps = [engine.step(), engine.step()]
    assert [s.num_tokens for s in steps] == [1024, 776]  # prefilled in chunks
    outs = outputs_of(steps + run(engine), request)
    assert ids_of(outs, 1) == [ids[800:]] and outs[-1].finish_reasons == ["length"]


def test_a_stop_sequence_across_the_boundary_is_found():
    prompt = "Stop somewhere."
    _, _, (text,), (ids,) = generate(prompt, stream=False, max_tokens=40, seed=2)
    starts = [len(spelled(ids[:j])) for j in range(40)]
    k = next(k for k in range(10, 40) if text.index(token_text(ids[k - 1]) + token_text(ids[k])) == starts[k - 1])
    stop = token_text(ids[k - 1]) + token_text(ids[k])
    cut = text[: starts[k - 1]]

    # the uninterrupted run: token k-1 is held back, then cut with token k
    _, outs, (stopped,), (stopped_ids,) = generate(prompt, max_tokens=40, seed=2, stop=[stop])
    assert stopped == cut and stopped_ids == ids[: k + 1] and outs[-1].finish_reasons == ["stop"]
    assert outs[-1].token_ids == [ids[k - 1: k + 1]] and outs[-1].texts == [""]
    sent = [t for o in outs[:-1] for t in o.token_ids[0]]
    assert sent == ids[: k - 1]

    # continued from any response before the last: the same text, the same tokens, the same finish
    for j in (1, k - 2, k - 1):
        _, couts, (rest,), (rest_ids,) = generate(prompt, continuation=ids[:j], max_tokens=40 - j, seed=2, stop=[stop])
        assert spelled(ids[:j]) + rest == stopped and ids[:j] + rest_ids == stopped_ids
        assert couts[-1].finish_reasons == ["stop"]
        assert sum(o.num_output_tokens[0] for o in couts) == k + 1 - j

    # continued after the start of the stop (text a model never sent): found, nothing sent again
    for stream in (True, False):
        _, couts, (rest,), (rest_ids,) = generate(
            prompt, stream=stream, continuation=ids[:k], max_tokens=40 - k, seed=2, stop=[stop])
        assert rest == "" and rest_ids == [ids[k]] and couts[-1].finish_reasons == ["stop"]
    # a stop wholly inside the continuation: the first new token finishes the choice
    _, couts, (rest,), (rest_ids,) = generate(prompt, continuation=ids[: k + 3], max_tokens=5, seed=2, stop=[stop])
    assert rest == "" and rest_ids == [ids[k + 3]] and couts[-1].finish_reasons == ["stop"]


@pytest.mark.parametrize(
    ("sampling", "choice_index", "continuation", "message"),
    [
        ({"n": 2}, 0, [1, 2], "continuation_token_ids needs n = 1"),
        ({"n": 2}, 1, None, "choice_index needs n = 1"),
        ({}, -1, None, "choice_index must not be negative"),
        ({}, 0, [3, 64], "64 is not a token id of the engine simulator"),
        ({}, 0, [-1], "-1 is not a token id of the engine simulator"),
        ({"structured_outputs": '{"json": {}}'}, 0, [1], "does not enforce structured output"),
        ({}, 0, [0] * 8190, r"the prompt \(2 tokens\) and continuation_token_ids \(8190 tokens\) are longer than "
         "the maximum model length of 8192 tokens"),
    ],
)
def test_invalid_continuations(sampling, choice_index, continuation, message):
    with pytest.raises(sim.InvalidRequest, match=message):
        new_request(None, "hi you", sampling, True, H200, choice_index, continuation)
    assert new_request(None, "hi you", {"n": 2}, True, H200, 0, []).n == 2  # empty: no continuation
    assert new_request(None, "hi you", {}, True, H200, 0, [0] * 8189).max_tokens == 1


# -- logprobs (simtext.token_logprobs, reported per token of output_token_ids) ----------------------

import simtext  # noqa: E402


def run_with_logprobs(prompt, stream=True, continuation=None, choice_index=0, return_logprobs=True, **sampling):
    """(request, outputs) of one request run alone to the end, asking for logprobs."""
    engine = Engine(H200)
    request = new_request(object(), prompt, sampling, stream, engine.config, choice_index, continuation,
                          return_logprobs=return_logprobs)
    engine.add(request)
    return request, outputs_of(run(engine), request)


def check_step(entries, token, k, greedy=False):
    """One token's logprobs: the chosen token first, then up to k others best first, ranks and sums sound."""
    ids = [int(t) for t in entries]
    assert ids[0] == token and len(ids) in (k, k + 1) if k else ids == [token]
    values = list(entries.values())
    others = values[1:]
    assert [v["rank"] for v in others] == sorted(v["rank"] for v in others)
    assert all(a["logprob"] > b["logprob"] for a, b in zip(others, others[1:]))
    assert sum(math.exp(v["logprob"]) for v in values) < 1
    assert all(v["decoded_token"] == simtext.token_text(int(t)) for t, v in entries.items())
    chosen = values[0]
    assert math.log(0.3) - 1e-12 <= chosen["logprob"] <= math.log(0.95) + 1e-12
    better = sum(1 for v in others if v["logprob"] > chosen["logprob"])
    assert chosen["rank"] == better + 1 or (chosen["rank"] > k and len(ids) == k + 1)
    ranks = sorted([v["rank"] for v in values])
    assert ranks == list(range(1, len(ids) + 1)) or (chosen["rank"] > k and ranks[:-1] == list(range(1, k + 1)))
    if greedy:
        assert chosen["rank"] == 1


@pytest.mark.parametrize("stream", [True, False])
def test_logprobs_line_up_with_the_reported_tokens(stream):
    sampling = {"n": 2, "max_tokens": 30, "seed": 4, "logprobs": 3, "stop": [" the zzzz", " of yy"]}
    request, outs = run_with_logprobs("logprobs prompt", stream=stream, **sampling)
    assert request.logprobs == 3
    ranks = []
    for o in outs:
        assert o.logprobs is not None and len(o.logprobs) == 2
        for i in range(2):
            assert len(o.logprobs[i]) == len(o.token_ids[i]) == o.num_output_tokens[i]
            for token, entries in zip(o.token_ids[i], o.logprobs[i]):
                check_step(entries, token, 3)
                ranks.append(entries[str(token)]["rank"])
    assert len(ranks) == 60 and ranks.count(1) < 60  # sampled: now and then not the most likely word
    # the same values streamed or not, and from run to run
    _, again = run_with_logprobs("logprobs prompt", stream=not stream, **sampling)
    assert [e for o in outs for e in o.logprobs[1]] == [e for o in again for e in o.logprobs[1]]


def test_greedy_tokens_are_rank_1_and_k_0_lists_the_chosen_one():
    for k in (0, 1, 5, 20):
        _, outs = run_with_logprobs("greedy logprobs", stream=True, max_tokens=40, temperature=0, logprobs=k)
        for o in outs:
            for token, entries in zip(o.token_ids[0], o.logprobs[0]):
                check_step(entries, token, k, greedy=True)
                assert len(entries) == max(k, 1)  # the chosen token is among the best k
    # greedy: one distribution per prompt, whatever the seed and choice
    _, a = run_with_logprobs("greedy logprobs", stream=False, n=2, max_tokens=10, temperature=0, logprobs=4, seed=3)
    assert a[0].logprobs[0] == a[0].logprobs[1]


def test_logprobs_are_a_function_of_prompt_seed_choice_and_position():
    digest = simtext.prompt_digest("p")
    one = simtext.token_logprobs(digest, 7, 1, 5, 4)
    assert one == simtext.token_logprobs(digest, 7, 1, 5, 4)
    assert one != simtext.token_logprobs(digest, 7, 1, 6, 4) and one != simtext.token_logprobs(digest, 8, 1, 5, 4)
    assert list(one)[0] == str(simtext.token_id(digest, 7, 1, 5))
    # a smaller k lists a prefix of the same ranking
    assert list(simtext.token_logprobs(digest, 7, 1, 5, 2).items()) == [
        (t, v) for t, v in one.items() if v["rank"] <= 2 or t == list(one)[0]]
    # over many positions, every listed set sums below 1 and sampled tokens are mostly rank 1
    ranks = [simtext.token_logprobs(digest, 7, 0, j, 20)[str(simtext.token_id(digest, 7, 0, j))]["rank"]
             for j in range(500)]
    assert ranks.count(1) > 350 and max(ranks) <= 3
    for j in range(200):
        entries = simtext.token_logprobs(digest, 1, 0, j, 20)
        check_step(entries, simtext.token_id(digest, 1, 0, j), 20)


def test_a_continuation_reports_the_logprobs_of_its_new_tokens():
    sampling = {"max_tokens": 20, "seed": 6, "logprobs": 2}
    _, whole = run_with_logprobs("resume logprobs", stream=False, **sampling)
    ids, lps = whole[-1].token_ids[0], whole[-1].logprobs[0]
    _, rest = run_with_logprobs("resume logprobs", stream=True, continuation=ids[:8], **{**sampling, "max_tokens": 12})
    assert [e for o in rest for e in o.logprobs[0]] == lps[8:]


def test_without_return_logprobs_there_are_none():
    request, outs = run_with_logprobs("no logprobs", return_logprobs=False, max_tokens=5, logprobs=3)
    assert request.logprobs is None and all(o.logprobs is None for o in outs)
    request, outs = run_with_logprobs("no logprobs", max_tokens=5)  # asked for, but no k
    assert request.logprobs is None and all(o.logprobs is None for o in outs)
    for bad in (-1, 21, True, 1.5, "2"):
        with pytest.raises(sim.InvalidRequest, match="logprobs must be an integer from 0 to 20"):
            new_request(None, "hi", {"logprobs": bad}, True, H200)
