"""The CPU text model's token selection and stop handling (pure numpy, no Triton)."""

import json

import numpy as np
import pytest
from sampling import InvalidSampling, Sampler, SamplingConfig, StopMatcher, requested_constraint

VOCAB = 8


def logits(*values):
    return np.array(values, dtype=np.float32)


def counts_of(tokens):
    counts = np.zeros(VOCAB, dtype=np.float32)
    np.add.at(counts, tokens, 1)
    return counts


def test_temperature_zero_is_greedy():
    sampler = Sampler(SamplingConfig(temperature=0.0), VOCAB)
    assert sampler.choose(logits(0, 1, 5, 2, 0, 0, 0, 0)) == 2


def test_logit_bias_minus_100_bans_and_plus_100_forces():
    ban = Sampler(SamplingConfig(temperature=0.0, logit_bias={2: -100}), VOCAB)
    assert ban.choose(logits(0, 1, 5, 2, 0, 0, 0, 0)) == 3
    force = Sampler(SamplingConfig(temperature=1.0, logit_bias={6: 100}, seed=1), VOCAB)
    assert {force.choose(logits(0, 1, 50, 2, 0, 0, -30, 0)) for _ in range(20)} == {6}


def test_small_bias_is_added():
    sampler = Sampler(SamplingConfig(temperature=0.0, logit_bias={1: 4.5}), VOCAB)
    assert sampler.choose(logits(0, 1, 5, 2, 0, 0, 0, 0)) == 1


def test_frequency_and_presence_penalties_apply_to_generated_tokens():
    cfg = SamplingConfig(temperature=0.0, frequency_penalty=1.0, presence_penalty=0.5)
    sampler = Sampler(cfg, VOCAB)
    base = logits(0, 0, 3, 2.5, 0, 0, 0, 0)
    assert sampler.choose(base) == 2  # counts[2] = 1 -> 3 - 1 - 0.5 = 1.5 < 2.5
    assert sampler.choose(base) == 3
    adjusted = sampler.adjusted_logits(base)
    assert adjusted[2] == pytest.approx(1.5) and adjusted[3] == pytest.approx(1.0)


def test_same_seed_same_tokens_and_choices_differ():
    rng = np.random.default_rng(0)
    steps = [rng.normal(size=VOCAB) for _ in range(30)]

    def run(seed, index=0):
        sampler = Sampler(SamplingConfig(temperature=1.0, seed=seed), VOCAB, choice_index=index)
        return [sampler.choose(s) for s in steps]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(7, 0) != run(7, 1)


def test_token_k_depends_only_on_seed_choice_and_position():
    rng = np.random.default_rng(1)
    steps = [rng.normal(size=VOCAB) for _ in range(10)]
    cfg = SamplingConfig(temperature=1.0, top_p=0.9, seed=7, presence_penalty=0.3, frequency_penalty=0.2)
    whole = Sampler(cfg, VOCAB, choice_index=1)
    tokens = [whole.choose(s) for s in steps]
    # resumed at position 5 after replaying the first 5 tokens (as a continuation does)
    resumed = Sampler(cfg, VOCAB, choice_index=1)
    for token in tokens[:5]:
        resumed.replay(token)
    assert resumed.position == 5 and np.array_equal(resumed.counts, counts_of(tokens[:5]))
    assert [resumed.choose(s) for s in steps[5:]] == tokens[5:]
    # the uniform of a draw is a pure function of (seed, choice, position)
    assert Sampler(cfg, VOCAB, choice_index=1).uniform(3) == whole.uniform(3)
    assert whole.uniform(3) != whole.uniform(4) and whole.uniform(3) != Sampler(cfg, VOCAB).uniform(3)


def test_unseeded_sampling_is_random_and_draws_follow_the_probabilities():
    cfg = SamplingConfig(temperature=1.0)
    assert Sampler(cfg, VOCAB).seed != Sampler(cfg, VOCAB).seed
    sampler = Sampler(SamplingConfig(temperature=1.0, seed=5), VOCAB)
    base = logits(2, 1, 0, -np.inf, 0, 0, 0, 0)
    drawn = np.bincount([sampler.choose(base) for _ in range(4000)], minlength=VOCAB) / 4000
    probs = np.exp(base - 2) / np.exp(base - 2).sum()
    assert drawn[3] == 0 and np.abs(drawn - probs).max() < 0.03  # inverse CDF: never a banned token


def test_top_p_keeps_only_the_nucleus():
    sampler = Sampler(SamplingConfig(temperature=1.0, top_p=0.5, seed=3), VOCAB)
    # token 0 holds ~88% of the mass: it alone reaches top_p=0.5
    assert {sampler.choose(logits(4, 2, 0, 0, 0, 0, 0, 0)) for _ in range(50)} == {0}


def test_config_rejects_tokens_outside_the_vocabulary():
    with pytest.raises(InvalidSampling, match="out of vocabulary"):
        SamplingConfig.from_json_dict({"logit_bias": {"99": 1}}, VOCAB)
    cfg = SamplingConfig.from_json_dict({"n": 2, "stop": "x", "seed": 5, "max_tokens": 9}, VOCAB)
    assert (cfg.n, cfg.stop, cfg.seed, cfg.max_tokens) == (2, ["x"], 5, 9)


def test_stop_matcher_finds_earliest_stop_across_pieces():
    stops = StopMatcher(["\n", "END"])
    assert stops.find("hello wor") is None
    assert stops.find("hello EN", start=6) is None
    assert stops.find("hello END", start=8) == 6  # the stop straddles the last piece
    assert stops.find("a\nb END") == 1


def test_stop_matcher_holds_back_possible_stop_prefixes():
    stops = StopMatcher(["END"])
    assert stops.safe_length("hello E") == 6
    assert stops.safe_length("hello EN") == 6
    assert stops.safe_length("hello X") == 7
    assert StopMatcher([]).safe_length("abc") == 3


def test_allowed_mask_limits_the_choice_and_wins_over_logit_bias():
    allowed = np.array([False, True, False, True, False, False, False, False])
    greedy = Sampler(SamplingConfig(temperature=0.0), VOCAB)
    assert greedy.choose(logits(0, 1, 5, 2, 0, 0, 0, 0), allowed) == 3
    sampled = Sampler(SamplingConfig(temperature=1.5, seed=2), VOCAB)
    assert {sampled.choose(logits(9, 0, 9, 0, 9, 9, 9, 9), allowed) for _ in range(40)} == {1, 3}
    # the bias bans every allowed token: the grammar wins, the bias is set aside
    banned = Sampler(SamplingConfig(temperature=0.0, logit_bias={1: -100, 3: -100}), VOCAB)
    assert banned.choose(logits(0, 1, 5, 2, 0, 0, 0, 0), allowed) == 3
    forced = Sampler(SamplingConfig(temperature=0.0, logit_bias={2: 100}), VOCAB)
    assert forced.choose(logits(0, 1, 5, 2, 0, 0, 0, 0), allowed) == 3


def test_structured_outputs_are_read_from_the_vllm_fields():
    schema = {"type": "object"}
    assert requested_constraint({}) is None
    assert requested_constraint({"structured_outputs": json.dumps({"json": schema})}) == {"json": schema}
    assert requested_constraint({"structured_outputs": {"json_object": True, "regex": None}}) == {"json_object": True}
    assert requested_constraint({"guided_decoding": {"choice": ["a", "b"]}}) == {"choice": ["a", "b"]}
    assert requested_constraint({"structured_outputs": {"json_object": False}}) is None
    cfg = SamplingConfig.from_json_dict({"structured_outputs": json.dumps({"regex": "[0-9]+"})}, VOCAB)
    assert cfg.constraint == {"regex": "[0-9]+"}
    with pytest.raises(InvalidSampling, match="one constraint"):
        requested_constraint({"structured_outputs": {"json": schema, "regex": "x"}})
    with pytest.raises(InvalidSampling, match="not valid JSON"):
        requested_constraint({"structured_outputs": "{nope"})


# -- logprobs (sampling.token_logprobs, from what the sampler draws from) --------------------------

from sampling import MAX_LOGPROBS, requested_logprobs, token_logprobs  # noqa: E402


def log_softmax(values):
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return values - (finite.max() + np.log(np.exp(finite - finite.max()).sum()))


def check_entries(entries, token, k):
    """The shape every step's logprobs have: the chosen token first, then up to k others best first."""
    ids = [tid for tid, _, _ in entries]
    assert ids[0] == token and len(set(ids)) == len(ids)
    others = entries[1:]
    assert len(others) <= k and [r for _, _, r in others] == sorted(r for _, _, r in others)
    assert all(a[1] >= b[1] for a, b in zip(others, others[1:]))
    assert sum(np.exp(lp) for _, lp, _ in entries) <= 1 + 1e-9
    assert all(np.isfinite(lp) and lp <= 0 for _, lp, _ in entries)


def test_greedy_tokens_are_rank_1_with_the_log_softmax_of_the_logits():
    base = logits(0, 1, 5, 2, 0, 0, 3, 0)
    sampler = Sampler(SamplingConfig(temperature=0.0), VOCAB)
    token, entries = sampler.choose_with_logprobs(base, None, 3)
    expected = log_softmax(base)
    assert token == 2 and entries[0] == (2, pytest.approx(expected[2], abs=1e-6), 1)
    assert [(t, r) for t, _, r in entries] == [(2, 1), (6, 2), (3, 3)]  # the top 3, the chosen among them
    assert [lp for _, lp, _ in entries] == pytest.approx(list(expected[[2, 6, 3]]), abs=1e-6)
    check_entries(entries, token, 3)
    # without logprobs nothing is computed, and the choice is the same
    assert Sampler(SamplingConfig(temperature=0.0), VOCAB).choose_with_logprobs(base) == (2, None)


def test_a_sampled_token_outside_the_top_k_comes_first_with_its_true_rank():
    base = logits(4, 3, 2, 1, 0, -1, -2, -3)
    entries = token_logprobs(base.astype(np.float64), 6, 2)
    expected = log_softmax(base)
    assert [(t, r) for t, _, r in entries] == [(6, 7), (0, 1), (1, 2)]  # k + 1 entries
    assert entries[0][1] == pytest.approx(expected[6], abs=1e-6)
    check_entries(entries, 6, 2)
    # k = 0: only the chosen token
    assert token_logprobs(base.astype(np.float64), 6, 0) == [(6, pytest.approx(expected[6], abs=1e-6), 7)]
    # k larger than the vocabulary: every token once
    assert len(token_logprobs(base.astype(np.float64), 6, 20)) == VOCAB


def test_sampled_tokens_match_their_own_logprobs_at_any_temperature():
    rng = np.random.default_rng(4)
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9), (1.6, 1.0)):
        sampler = Sampler(SamplingConfig(temperature=temperature, top_p=top_p, seed=9), VOCAB)
        for _ in range(30):
            step = rng.normal(size=VOCAB).astype(np.float32) * 2
            token, entries = sampler.choose_with_logprobs(step, None, 3)
            check_entries(entries, token, 3)
            # before temperature: the log-softmax of the logits themselves
            assert entries[0][1] == pytest.approx(log_softmax(step)[token], abs=1e-6)
            rank = 1 + int(np.sum(step > step[token]))
            assert entries[0][2] == rank and (rank <= 3) == (len(entries) == 3)


def test_bias_and_penalties_are_in_the_logprobs():
    base = logits(0, 1, 5, 2, 0, 0, 0, 0)
    sampler = Sampler(SamplingConfig(temperature=0.0, logit_bias={1: 4.5}, presence_penalty=1.0), VOCAB)
    token, entries = sampler.choose_with_logprobs(base, None, 2)
    expected = log_softmax(logits(0, 5.5, 5, 2, 0, 0, 0, 0))
    assert token == 1 and entries[0] == (1, pytest.approx(expected[1], abs=1e-6), 1)
    token, entries = sampler.choose_with_logprobs(base, None, 2)  # token 1 was generated: 5.5 - 1 < 5
    expected = log_softmax(logits(0, 4.5, 5, 2, 0, 0, 0, 0))
    assert token == 2 and entries[0] == (2, pytest.approx(expected[2], abs=1e-6), 1)
    # a -100 bias bans: the token has no probability and is never listed
    banned = Sampler(SamplingConfig(temperature=0.0, logit_bias={2: -100}), VOCAB)
    token, entries = banned.choose_with_logprobs(base, None, MAX_LOGPROBS)
    assert token == 3 and 2 not in [t for t, _, _ in entries] and len(entries) == VOCAB - 1
    assert sum(np.exp(lp) for _, lp, _ in entries) == pytest.approx(1.0)
    # +100 forces: the forced token alone, logprob 0
    forced = Sampler(SamplingConfig(temperature=1.0, seed=1, logit_bias={6: 100}), VOCAB)
    assert forced.choose_with_logprobs(base, None, 5) == (6, [(6, 0.0, 1)])


def test_masked_tokens_never_appear():
    allowed = np.array([False, True, False, True, False, True, False, False])
    base = logits(9, 0, 9, 2, 9, -1, 9, 9)
    for cfg in (SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.0, seed=4)):
        sampler = Sampler(cfg, VOCAB)
        for _ in range(10):
            token, entries = sampler.choose_with_logprobs(base, allowed, 5)
            assert {t for t, _, _ in entries} == {1, 3, 5} and token in (1, 3, 5)
            assert sum(np.exp(lp) for _, lp, _ in entries) == pytest.approx(1.0)  # all that is allowed
            check_entries(entries, token, 5)
    greedy = Sampler(SamplingConfig(temperature=0.0), VOCAB).choose_with_logprobs(base, allowed, 1)
    expected = log_softmax([-np.inf, 0, -np.inf, 2, -np.inf, -1, -np.inf, -np.inf])
    assert greedy == (3, [(3, pytest.approx(expected[3], abs=1e-6), 1)])


def test_ties_rank_the_greedy_token_first():
    base = logits(1, 3, 0, 3, 3, 0, 0, 0)
    token, entries = Sampler(SamplingConfig(temperature=0.0), VOCAB).choose_with_logprobs(base, None, 2)
    assert token == 1 and [(t, r) for t, _, r in entries] == [(1, 1), (3, 2)]
    # ties at the k-th place go to the lower ids too, on a large vocabulary
    wide = np.zeros(5000)
    wide[[4000, 17, 2500, 3]] = [5.0, 2.0, 2.0, 2.0]
    assert [t for t, _, _ in token_logprobs(wide, 4000, 3)] == [4000, 3, 17]
    assert [t for t, _, _ in token_logprobs(wide, 4999, 4)] == [4999, 4000, 3, 17, 2500]
    assert token_logprobs(wide, 4999, 4)[0][2] == 5  # behind the four better ones


def test_logprobs_parameter_is_checked():
    assert requested_logprobs({}) is None and requested_logprobs({"logprobs": None}) is None
    assert SamplingConfig.from_json_dict({"logprobs": 0}, VOCAB).logprobs == 0
    assert SamplingConfig.from_json_dict({"logprobs": 20}, VOCAB).logprobs == 20
    for bad in (-1, 21, True, 2.5, "3"):
        with pytest.raises(InvalidSampling, match="logprobs must be an integer from 0 to 20"):
            SamplingConfig.from_json_dict({"logprobs": bad}, VOCAB)


def test_logprobs_cost_little_on_the_real_vocabulary():
    """Measured on SmolLM2's 49,152-token vocabulary, each step's logits fresh in the cache as the
    model's are (it copies them from llama.cpp); the figure the report quotes."""
    import time

    rng = np.random.default_rng(0)
    steps = [rng.normal(size=49152).astype(np.float32) * 3 for _ in range(40)]
    timings = {None: [], 0: [], 5: [], 20: []}
    for _ in range(3):  # interleaved, the best of three: the machine is shared
        for k, spent in timings.items():
            sampler = Sampler(SamplingConfig(temperature=0.0), 49152)
            total = 0.0
            for step in steps:
                fresh = step.copy()
                started = time.perf_counter()
                sampler.choose_with_logprobs(fresh, None, k)
                total += time.perf_counter() - started
            spent.append(total / len(steps))
    best = {k: min(v) for k, v in timings.items()}
    extra = {k: (best[k] - best[None]) * 1e6 for k in (0, 5, 20)}
    print(f"per token: greedy choice {best[None] * 1e6:.0f} us; logprobs add k=0 {extra[0]:.0f} us, "
          f"k=5 {extra[5]:.0f} us, k=20 {extra[20]:.0f} us")
    assert extra[20] < 2000  # generous: a shared 2-core machine; ~100 us unloaded
