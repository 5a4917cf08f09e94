"""What every modality's Triton backend shares: replicas, a picker, deadlines, readiness."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry import trace
from tritonclient.grpc import service_pb2

from services.common.call_context import CALL_DEADLINE
from services.common.errors import BackendUnavailable
from services.common.metrics import ROUTE_DECISIONS
from services.common.pickers import Decision, LeastRequest, Picker
from services.common.replicas import Replica, ReplicaSet
from services.common.triton_errors import from_triton_exception


class TritonBackend:
    """What every modality's Triton backend shares: the replicas of its Triton (one channel each, see
    services.common.replicas), a picker choosing one per call, deadlines, readiness, closing.

    A call that fails because its replica is gone (UNAVAILABLE) ejects that replica and, while
    nothing of the call's answer has been used, is made again on another one (at most
    `max_attempts` replicas, never past the caller's deadline)."""

    def __init__(
        self, replicas: ReplicaSet | str, timeout_s: float, picker: Picker | None = None, max_attempts: int = 3
    ) -> None:
        self.replicas = replicas if isinstance(replicas, ReplicaSet) else ReplicaSet.from_url(replicas)
        self.picker = picker or LeastRequest()
        self.replicas.listeners.append(lambda replica, event: self.picker.forget(replica))
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._decisions: dict[tuple[str, str, str], Any] = {}  # the counter's children, looked up once

    def _call_timeout(self) -> float:
        """Seconds a Triton call may take: the service's limit, or less when the caller's deadline is nearer."""
        deadline = CALL_DEADLINE.get()
        if deadline is None:
            return self._timeout_s
        return max(0.001, min(self._timeout_s, deadline - time.monotonic()))

    def pick(
        self, model: str, prompt: str | None = None, tried: Sequence[Replica] = (), reason: str | None = None
    ) -> Decision:
        """A replica for a call of `model` (BackendUnavailable when none can take it), counted and
        put on the current span; `reason` overrides the picker's (a retry's is "retry")."""
        candidates = self.replicas.candidates(model, tried)
        if not candidates:
            raise BackendUnavailable(f"no Triton replica has the model {model!r} ready")
        decision = self.picker.pick(model, candidates, prompt)
        if reason or tried:
            decision.reason = reason or "retry"
        key = (model, decision.replica.address, decision.reason)
        counter = self._decisions.get(key)
        if counter is None:
            counter = self._decisions[key] = ROUTE_DECISIONS.labels(*key)
        counter.inc()
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({"hubmesh.replica": decision.replica.address, "hubmesh.route.reason": decision.reason})
        return decision

    def may_retry(self, decision: Decision, err: grpc.aio.AioRpcError, tried: list[Replica]) -> bool:
        """After `err` on the call `decision` placed: ejects a replica that is gone, and says whether
        the call may be made again elsewhere (then `tried` holds the replica)."""
        if err.code() != grpc.StatusCode.UNAVAILABLE:
            return False
        self.replicas.eject(decision.replica, err.details() or "unavailable")
        tried.append(decision.replica)
        return self.in_time() and len(tried) < self._max_attempts

    @staticmethod
    def in_time() -> bool:
        """Whether the call being served has time left for another Triton call."""
        deadline = CALL_DEADLINE.get()
        return deadline is None or deadline - time.monotonic() > 0.01

    async def _model_infer(self, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        """One unary inference on a replica of the request's model, within the call's deadline;
        failures become domain errors."""
        tried: list[Replica] = []
        while True:
            decision = self.pick(request.model_name, tried=tried)
            try:
                with decision.replica.busy():
                    return await decision.replica.stub.ModelInfer(request, timeout=self._call_timeout())
            except grpc.aio.AioRpcError as err:
                if self.may_retry(decision, err, tried):
                    continue
                raise from_triton_exception(err) from err
            finally:
                self.picker.done(decision)

    async def is_ready(self, model: str) -> bool:
        """True when `model` is loaded and ready on at least one replica."""
        return await self.replicas.is_ready(model)

    async def close(self) -> None:
        await self.replicas.close()


async def all_ready(backend, triton_models) -> bool:
    """Ready when `backend.is_ready` says so for every one of `triton_models` (what gRPC health reports)."""
    for model in triton_models:
        if not await backend.is_ready(model):
            return False
    return True
