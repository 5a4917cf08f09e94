"""SamplingPlan: the sampling parameters of one generation, frozen.

What the vLLM-backend contract's `sampling_parameters` JSON carries (n, max_tokens, temperature,
stop, logit_bias, seed, logprobs, and a structured-output constraint), built once by the servicer from
the request (servicers' sampling_to_contract) and read by everything after it: the token budget,
the backend, migration. Nothing changes a plan; a step that needs other values (the budget's
clamp, a continuation's remaining tokens) makes a new one with replace().
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any


class SamplingPlan(Mapping[str, Any]):
    """A read-only mapping of the contract's sampling parameters (a dict reads the same way)."""

    __slots__ = ("_params",)

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = MappingProxyType(dict(params))

    def __getitem__(self, name: str) -> Any:
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return f"SamplingPlan({dict(self._params)!r})"

    @property
    def n(self) -> int:
        return int(self._params.get("n", 1))

    def replace(self, **changes: Any) -> SamplingPlan:
        """A new plan with `changes` (None removes a parameter)."""
        params = {**self._params, **changes}
        return SamplingPlan({k: v for k, v in params.items() if v is not None})

    def to_json(self) -> str:
        return json.dumps(dict(self._params))
