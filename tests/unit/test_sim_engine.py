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
