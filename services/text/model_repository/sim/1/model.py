"""A GPU-free vLLM engine simulator as a decoupled Triton python-backend model.

It speaks the Triton vLLM-backend tensor contract as ../smollm2 does (text_input, stream,
sampling_parameters, ... in; text_output[n], finish_reason[n], num_input_tokens,
num_output_tokens[n] out) plus `num_cached_tokens`: the prompt tokens served from the prefix cache,
and the extension a generation moved to another replica needs: inputs `choice_index` and
`continuation_token_ids` (resume a choice after the tokens it already produced), output
`output_token_ids[n, k]` (each choice's token ids in this response, -1 padded). With
`return_logprobs` and `sampling_parameters.logprobs` = k, output `logprobs[n]` is, per choice, the JSON
of a list with one {"<id>": {"logprob", "rank", "decoded_token"}, ...} per token of output_token_ids
(simtext.token_logprobs: deterministic, plausible values); otherwise "null" per choice.
It behaves in time like vLLM serving Llama-3-8B on one H200 (engine.py has the scheduler, the KV
cache and the timing model; README.md the arithmetic) and computes nothing: its thread sleeps
through each simulated step, then sends the tokens of that step. Idle, it waits on a condition.

execute() only parses and queues requests. One engine thread owns the engine: it admits what
arrived, runs a step, sleeps its duration, sends one response per request that has something new,
and updates the vllm:* metrics (at most every METRICS_INTERVAL_S). Cancellation is checked for every
live request every CANCEL_CHECK_S, or less often when the checks (each a round trip to the server,
~30 us) would take more than ~5 % of the thread's time; a cancelled request's
sequences stop and free their blocks, and it gets a final CANCELLED error, as vLLM's backend sends.
"""

import json
import os
import sys
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine import Engine, EngineConfig, InvalidRequest, new_request

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
METRICS_INTERVAL_S = 0.1
CANCEL_CHECK_S = 0.05

# (metric name as /metrics shows it, Stats field) — counters, named as vLLM's Prometheus exposition
# names them (prometheus_client adds "_total"; Triton's registry does not, so the name carries it)
COUNTERS = (
    ("vllm:prompt_tokens_total", "prompt_tokens", "Number of prefill tokens processed."),
    ("vllm:generation_tokens_total", "generation_tokens", "Number of generation tokens processed."),
    ("vllm:request_success_total", "request_success", "Count of successfully processed requests."),
    ("vllm:prefix_cache_queries_total", "prefix_cache_queries", "Prefix cache queries, in terms of tokens."),
    ("vllm:prefix_cache_hits_total", "prefix_cache_hits", "Prefix cache hits, in terms of tokens."),
    ("vllm:num_preemptions_total", "num_preemptions", "Cumulative number of preemptions."),
)
GAUGES = (
    ("vllm:num_requests_running", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
    ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
)


def _string(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _ints(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else [int(v) for v in tensor.as_numpy().reshape(-1).tolist()]


def _token_ids(rows):
    """Rows of token ids as one INT32 [n, k] array, padded with -1."""
    array = np.full((len(rows), max((len(r) for r in rows), default=0)), -1, dtype=np.int32)
    for i, row in enumerate(rows):
        array[i, :len(row)] = row
    return array


def _flag(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else bool(tensor.as_numpy().reshape(-1)[0])


def _error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = args["model_name"]
        self.engine = Engine(EngineConfig.from_parameters(params))
        cfg = self.engine.config
        pb_utils.Logger.log_info(
            f"[{self.name}] engine simulator: {cfg.num_blocks} KV blocks of {cfg.block_size} tokens "
            f"({cfg.kv_capacity_tokens} tokens), decode step at batch 1 "
            f"{cfg.step_duration(1, 1) * 1e3:.2f} ms, time_scale {cfg.time_scale}"
        )

        labels = {"model": self.name, "version": args.get("model_version", "1")}
        # families must outlive their metrics, hence kept on self
        self.families = []
        self.counters = []  # (metric, Stats field)
        for name, stat, description in COUNTERS:
            family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
            self.families.append(family)
            self.counters.append((family.Metric(labels=labels), stat))
        self.gauges = []
        for name, description in GAUGES:
            family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.GAUGE)
            self.families.append(family)
            self.gauges.append(family.Metric(labels=labels))
        self.reported_counts = {stat: 0 for _, stat in self.counters}
        # vLLM's engine-configuration gauge: routers size their view of this replica's KV cache from it
        self.cache_family = pb_utils.MetricFamily(
            name="vllm:cache_config_info", description="Information of the LLMEngine CacheConfig",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self.cache_info = self.cache_family.Metric(labels={
            **labels, "block_size": str(cfg.block_size), "num_gpu_blocks": str(cfg.num_blocks),
        })
        self.cache_info.set(1)
        self.late_family = pb_utils.MetricFamily(
            name="hubmesh_sim_late_seconds_total",
            description="Seconds the simulator ran behind its simulated timeline (sending responses took longer "
            "than the steps they belong to)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.late = self.late_family.Metric(labels=labels)
        self.late_s = self.reported_late_s = 0.0
        self.reported_gauges = [None] * len(self.gauges)
        self.metrics_at = 0.0

        self.wake = threading.Condition()
        self.inbox = []
        self.stopping = threading.Event()
        self.worker = threading.Thread(target=self._run, name="sim-engine", daemon=True)
        self.worker.start()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                sampling = json.loads(_string(request, "sampling_parameters") or "{}")
                choice_index = _ints(request, "choice_index") or [0]
                item = new_request(
                    (request, sender), _string(request, "text_input") or "", sampling,
                    _flag(request, "stream", False), self.engine.config,
                    choice_index=choice_index[0], continuation=_ints(request, "continuation_token_ids"),
                    return_logprobs=_flag(request, "return_logprobs", False),
                )
            except (InvalidRequest, ValueError, TypeError, AttributeError) as err:
                sender.send(_error(f"invalid argument: {err}", pb_utils.TritonError.INVALID_ARG), flags=FINAL)
                continue
            with self.wake:
                self.inbox.append(item)
                self.wake.notify()
        return None

    def finalize(self):
        self.stopping.set()
        with self.wake:
            self.wake.notify()
        self.worker.join(timeout=10)

    # -- the engine thread ------------------------------------------------------------------------

    def _run(self):
        deadline = check_at = time.monotonic()
        while not self.stopping.is_set():
            if not self.engine.has_work():
                self._update_metrics(force=True)
            with self.wake:
                while not self.inbox and not self.engine.has_work() and not self.stopping.is_set():
                    self.wake.wait()
                    deadline = time.monotonic()  # the engine was idle: its next step starts now
                arrived, self.inbox = self.inbox, []
            if self.stopping.is_set():
                break
            for item in arrived:
                self.engine.add(item)
            if time.monotonic() >= check_at:
                started = time.monotonic()
                self._drop_cancelled()
                # ~30 us a request: with many requests live, checks are spread so they take <= ~5 % of the thread
                check_at = time.monotonic() + max(CANCEL_CHECK_S, 20 * (time.monotonic() - started))
            if not self.engine.has_work():
                continue
            try:
                result = self.engine.step()
            except Exception as err:  # every request must still get a final response
                pb_utils.Logger.log_error(f"[{self.name}] engine step failed: {err!r}")
                self._fail_all(f"Error generating stream: {err}", pb_utils.TritonError.INTERNAL)
                self.engine = Engine(self.engine.config)
                self.reported_counts = {stat: 0 for _, stat in self.counters}
                continue
            # the step ends `duration` after the previous one did; when sending took longer, it ends now
            # and the simulation runs behind the GPU it models (counted, so a benchmark can tell)
            deadline += result.duration_s
            now = time.monotonic()
            if now > deadline:
                self.late_s += now - deadline
                deadline = now
            stopped = self.stopping.wait(max(0.0, deadline - time.monotonic()))
            for output in result.outputs:  # even when unloading: a request that finished is answered
                self._send(output)
            if stopped:
                break
            self._update_metrics()
        with self.wake:
            arrived, self.inbox = self.inbox, []
        for item in arrived:
            self.engine.add(item)
        self._fail_all("Error generating stream: the model is not ready (it is being unloaded)",
                       pb_utils.TritonError.UNAVAILABLE)

    def _send(self, output):
        request = output.request
        _, sender = request.handle
        if output.logprobs is None:
            logprobs = [b"null"] * len(output.texts)
        else:
            logprobs = [json.dumps(row).encode("utf-8") for row in output.logprobs]
        response = pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("text_output", np.array([t.encode("utf-8") for t in output.texts], dtype=np.object_)),
            pb_utils.Tensor("finish_reason", np.array([r.encode() for r in output.finish_reasons], dtype=np.object_)),
            pb_utils.Tensor("num_input_tokens", np.array([request.num_input_tokens], dtype=np.uint32)),
            pb_utils.Tensor("num_output_tokens", np.array(output.num_output_tokens, dtype=np.uint32)),
            pb_utils.Tensor("num_cached_tokens", np.array([request.num_cached_tokens], dtype=np.uint32)),
            pb_utils.Tensor("output_token_ids", _token_ids(output.token_ids)),
            pb_utils.Tensor("logprobs", np.array(logprobs, dtype=np.object_)),
        ])
        sender.send(response, flags=FINAL if output.finished else 0)

    def _drop_cancelled(self):
        for request in self.engine.requests():
            _, sender = request.handle
            if sender.is_cancelled():
                self.engine.cancel(request)
                sender.send(_error("Request was cancelled", pb_utils.TritonError.CANCELLED), flags=FINAL)

    def _fail_all(self, message, code):
        for request in self.engine.requests():
            self.engine.cancel(request)
            _, sender = request.handle
            try:
                sender.send(_error(message, code), flags=FINAL)
            except Exception as err:  # the others must still be answered
                pb_utils.Logger.log_error(f"[{self.name}] could not fail a request: {err!r}")

    def _update_metrics(self, force=False):
        """Counters by what they grew since the last update, gauges when they changed; each call
        is a round trip to the server, so at most every METRICS_INTERVAL_S (and when going idle)."""
        now = time.monotonic()
        if not force and now - self.metrics_at < METRICS_INTERVAL_S:
            return
        self.metrics_at = now
        stats = self.engine.stats
        for metric, stat in self.counters:
            value = getattr(stats, stat)
            if value > self.reported_counts[stat]:
                metric.increment(value - self.reported_counts[stat])
                self.reported_counts[stat] = value
        if self.late_s - self.reported_late_s > 1e-3:
            self.late.increment(self.late_s - self.reported_late_s)
            self.reported_late_s = self.late_s
        values = (self.engine.num_running, self.engine.num_waiting, self.engine.pool.usage())
        for i, (metric, value) in enumerate(zip(self.gauges, values, strict=True)):
            if value != self.reported_gauges[i]:
                metric.set(value)
                self.reported_gauges[i] = value
