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
