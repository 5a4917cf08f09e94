"""services/text/budget.py: a request's token budget, prompt and every choice together."""

from __future__ import annotations

import pytest

from services.common.errors import TokenBudgetExceeded
from services.text.budget import clamp_sampling, shares, within_budget
from services.text.contract import GenerationChunk
from services.text.sampling_plan import SamplingPlan


class Model:
    """One token per choice per response, as vLLM streams; remembers whether it was closed."""

    def __init__(self, prompt: int, n: int, tokens: int) -> None:
        self.prompt, self.n, self.tokens, self.closed, self.sent = prompt, n, tokens, False, 0

    async def stream(self):
        try:
            for step in range(self.tokens):
                last = step == self.tokens - 1
                self.sent += 1
                yield GenerationChunk(texts=[f"t{step} "] * self.n, finish_reasons=["stop" if last else None] * self.n,
                                      num_input_tokens=self.prompt, num_output_tokens=[1] * self.n)
        finally:
            self.closed = True


async def collect(chunks):
    texts, reasons, used = None, None, None
    async for chunk in chunks:
        if texts is None:
            texts, reasons, used = [""] * len(chunk.texts), [None] * len(chunk.texts), [0] * len(chunk.texts)
        for i, text in enumerate(chunk.texts):
            texts[i] += text
            reasons[i] = chunk.finish_reasons[i] or reasons[i]
            used[i] += chunk.num_output_tokens[i]
    return texts, reasons, used


async def test_a_choice_stops_at_the_budget_with_length_and_the_model_is_closed():
    model = Model(prompt=10, n=1, tokens=100)
    texts, reasons, used = await collect(within_budget(model.stream(), budget=15, n=1))
    assert (reasons, used) == (["length"], [5]) and texts[0].count("t") == 5
    assert model.closed and model.sent == 5


async def test_choices_share_what_the_prompt_leaves():
    model = Model(prompt=10, n=3, tokens=100)
    texts, reasons, used = await collect(within_budget(model.stream(), budget=18, n=3))
    assert used == [3, 3, 2] and reasons == ["length"] * 3
    assert sum(used) + 10 == 18


async def test_a_generation_within_its_budget_is_untouched():
    model = Model(prompt=10, n=2, tokens=4)
    _, reasons, used = await collect(within_budget(model.stream(), budget=1000, n=2))
    assert (reasons, used) == (["stop", "stop"], [4, 4])


async def test_a_prompt_that_fills_the_budget_fails_before_any_output():
    model = Model(prompt=50, n=1, tokens=10)
    with pytest.raises(TokenBudgetExceeded, match="50 tokens"):
        await collect(within_budget(model.stream(), budget=50, n=1))
    assert model.closed


def test_clamp_and_shares():
    sampling = SamplingPlan({"n": 2, "max_tokens": 4096})
    clamped = clamp_sampling(sampling, 100)
    assert clamped["max_tokens"] == 99 and clamped.n == 2
    assert sampling["max_tokens"] == 4096  # a plan never changes: the clamp is a new one
    assert clamp_sampling(clamped, 1)["max_tokens"] == 1
    with pytest.raises(TypeError):
        sampling["max_tokens"] = 1  # type: ignore[index]
    assert shares(10, 3) == [4, 3, 3] and shares(1, 2) == [1, 0]
