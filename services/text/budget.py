"""A request's token budget (GenerateRequest.token_budget, from the façade's limits): the prompt
and every choice's completion together stay within it.

The prompt's size is known from the model's first response (num_input_tokens); what it leaves is
shared out between the choices, and each choice ends with finish reason `length` at its share —
exactly, where the model streams a token per response, as vLLM does (a response carrying several
tokens of a choice that has fewer left is let through: text cannot be cut between tokens it does
not delimit). When every choice has ended, the model's call is closed (and with it the request on
the engine). A prompt that alone fills the budget fails with TokenBudgetExceeded before any
output.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from services.common.errors import TokenBudgetExceeded
from services.text.contract import GenerationChunk
from services.text.sampling_plan import SamplingPlan


def clamp_sampling(sampling: SamplingPlan, budget: int) -> SamplingPlan:
    """The plan with no choice allowed more than the budget less one prompt token: the engine
    stops early too."""
    return sampling.replace(max_tokens=max(1, min(sampling["max_tokens"], budget - 1)))


def shares(left: int, n: int) -> list[int]:
    """`left` completion tokens split between n choices as evenly as integers allow."""
    return [left // n + (1 if i < left % n else 0) for i in range(n)]


async def within_budget(
    chunks: AsyncGenerator[GenerationChunk, None], budget: int, n: int
) -> AsyncGenerator[GenerationChunk, None]:
    allowed: list[int] | None = None
    used = [0] * n
    done = [False] * n
    try:
        async for chunk in chunks:
            if allowed is None and chunk.num_input_tokens is not None:
                if chunk.num_input_tokens >= budget:
                    raise TokenBudgetExceeded(
                        f"The prompt is {chunk.num_input_tokens} tokens, but the caller's limits leave this "
                        f"request {budget} tokens in all."
                    )
                allowed = shares(budget - chunk.num_input_tokens, n)
            if allowed is not None:
                _apply(chunk, allowed, used, done)
            yield chunk
            if all(done):
                return
    finally:
        await chunks.aclose()


def _apply(chunk: GenerationChunk, allowed: list[int], used: list[int], done: list[bool]) -> None:
    for i in range(min(len(chunk.texts), len(done))):
        tokens = chunk.num_output_tokens[i] if i < len(chunk.num_output_tokens) else 0
        if done[i]:  # past its share (or finished): nothing more of this choice goes out
            chunk.texts[i] = ""
            chunk.finish_reasons[i] = None
            if i < len(chunk.num_output_tokens):
                chunk.num_output_tokens[i] = 0
            if chunk.logprobs is not None and i < len(chunk.logprobs):
                chunk.logprobs[i] = None
            continue
        if tokens and used[i] >= allowed[i]:  # a share of zero: drop what came
            chunk.texts[i] = ""
            chunk.num_output_tokens[i] = 0
            if chunk.logprobs is not None and i < len(chunk.logprobs):
                chunk.logprobs[i] = None
            tokens = 0
        used[i] += tokens
        if chunk.finish_reasons[i]:
            done[i] = True
        elif used[i] >= allowed[i]:
            chunk.finish_reasons[i] = "length"
            done[i] = True
