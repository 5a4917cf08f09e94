"""SmolLM2-135M-Instruct (GGUF, llama.cpp) as a decoupled Triton python-backend model.

It speaks the Triton vLLM-backend tensor contract, so the text service cannot tell it from
Triton's official vLLM backend (which takes its place on GPU nodes): text_input, stream,
sampling_parameters (JSON of vLLM SamplingParams), exclude_input_in_output and the return_*
flags in; text_output[n], finish_reason[n], num_input_tokens, num_output_tokens[n] out.

Two optional inputs and an output let a generation move to another replica mid-stream:
`output_token_ids` [n, k] gives, in each response, the ids of the tokens whose text that response
completes (-1 pads the rows): text is emitted only up to the end of a token, so the ids reported
so far always detokenize to the text emitted so far (but for a trailing incomplete UTF-8
character). A request with `continuation_token_ids` (the ids one choice already reported) and
`choice_index` (that choice's index; n must be 1) resumes after them as if it had generated them:
they are evaluated one at a time as they were generated, so the logits are the same; the sampler,
the penalties, the stop sequences, the UTF-8 decoder and the grammar replay them; they are neither
counted nor emitted again, and max_tokens counts only the new tokens. (Triton's vLLM backend
has neither; the text service knows which contract a replica speaks.)

A `structured_outputs` constraint (vLLM's StructuredOutputsParams: a JSON schema, a grammar, a
structural tag, ...) is enforced with llguidance over the model's own llama.cpp vocabulary: each
step samples only among the tokens the grammar allows (constraint.py).

Logprobs, as Triton's vLLM backend carries them: with `return_logprobs` true and
`sampling_parameters.logprobs` = k (0..20), output `logprobs[n]` holds, per response and choice, the
JSON text of a list with one object per token that response reports for the choice (the same
tokens, in the same order, as output_token_ids and num_output_tokens):
`{"<token id>": {"logprob": float, "rank": int, "decoded_token": str}, ...}`, the chosen token
first, then the k most likely tokens of its step but it, best first (k + 1 entries, or k when the
chosen token is among the best k). Otherwise each element is the JSON `null` (the output is always
there, as all the others are). They are the log-softmax of the logits after logit_bias, the
penalties and the grammar mask, before temperature and top_p (sampling.py says why); rank 1 = most
likely; decoded_token is the token's own text (its bytes decoded as UTF-8, errors replaced).
A continuation reports logprobs for its new tokens only.

Requests run one at a time on a worker thread (execute() only queues them), so a request that
is cancelled while it waits never starts, and one that is cancelled while it runs stops at the
next token (`response_sender.is_cancelled()`), answering with a CANCELLED error as vLLM does.
"""

import codecs
import json
import os
import queue
import sys
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_cpp
from constraint import Constraint, tokenizer_from_llama
from sampling import InvalidSampling, Sampler, SamplingConfig, StopMatcher
from weights import packaged_gguf, widened

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class _Cancelled(Exception):
    pass


def _flag(request, name: str, default: bool) -> bool:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else bool(tensor.as_numpy().reshape(-1)[0])


def _ints(request, name: str) -> list[int] | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else [int(v) for v in tensor.as_numpy().reshape(-1)]


def _id_rows(rows: list[list[int]]) -> np.ndarray:
    """output_token_ids: one row per choice, padded with -1 to the longest ([n, 0] when all are empty)."""
    out = np.full((len(rows), max(map(len, rows), default=0)), -1, dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _string(request, name: str) -> str | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = args["model_name"]
        self.llm = llama_cpp.Llama(
            model_path=widened(params.get("gguf_path") or packaged_gguf(), params.get("dtype", "f16")),
            n_ctx=int(params.get("n_ctx", "8192")),
            n_threads=int(params.get("n_threads", "0")) or os.cpu_count(),
            n_gpu_layers=int(params.get("n_gpu_layers", "0")),
            verbose=False,
        )
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.llm.n_vocab()
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.add_bos = self.llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self._primed = None  # (prompt tokens, logits after them) of the prompt in the KV cache
        self._pieces: dict[int, str] = {}  # token id -> its own text, for logprobs' decoded_token
        eog_tokens = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)]
        self.eog = frozenset(eog_tokens)  # end-of-generation tokens, checked for every token
        # llguidance's view of the same vocabulary, for structured output (built once, ~1 s)
        self.grammar_tokenizer = tokenizer_from_llama(self.vocab, self.n_vocab, eog_tokens)

        labels = {"model": self.name}
        # Families must outlive their metrics, hence kept on self.
        self.m_tokens_family = pb_utils.MetricFamily(
            name="hubmesh_text_generated_tokens_total",
            description="Tokens generated by the text model",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.m_tokens = self.m_tokens_family.Metric(labels=labels)
        self.m_requests = pb_utils.MetricFamily(
            name="hubmesh_text_requests_total",
            description="Generation requests finished by the text model, by outcome",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.m_outcome = {
            o: self.m_requests.Metric(labels={**labels, "outcome": o}) for o in ("ok", "cancelled", "error")
        }

        self.requests: queue.Queue = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="smollm2-worker", daemon=True)
        self.worker.start()

    def execute(self, requests):
        for request in requests:
            self.requests.put(request)
        return None

    def finalize(self):
        self.requests.put(None)
        self.worker.join(timeout=30)

    # -- one request at a time -------------------------------------------------------------

    def _work(self):
        while True:
            request = self.requests.get()
            if request is None:
                return
            sender = request.get_response_sender()
            try:
                self._serve(request, sender)
                self.m_outcome["ok"].increment(1)
            except _Cancelled:
                self.m_outcome["cancelled"].increment(1)
                sender.send(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError("Request was cancelled", pb_utils.TritonError.CANCELLED)
                    ),
                    flags=FINAL,
                )
            except InvalidSampling as err:
                self.m_outcome["error"].increment(1)
                self._send_error(sender, f"invalid argument: {err}", pb_utils.TritonError.INVALID_ARG)
            except Exception as err:  # the request must always get a final response
                self.m_outcome["error"].increment(1)
                pb_utils.Logger.log_error(f"[{self.name}] generation failed: {err!r}")
                self._send_error(sender, f"Error generating stream: {err}", pb_utils.TritonError.INTERNAL)

    @staticmethod
    def _send_error(sender, message, code):
        sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)), flags=FINAL)

    def _serve(self, request, sender):
        if sender.is_cancelled():
            raise _Cancelled
        prompt = _string(request, "text_input") or ""
        stream = _flag(request, "stream", False)
        raw = json.loads(_string(request, "sampling_parameters") or "{}")
        cfg = SamplingConfig.from_json_dict(raw, self.n_vocab)  # its limits are the text service's
        continuation = _ints(request, "continuation_token_ids") or []
        first = (_ints(request, "choice_index") or [0])[0]  # the sampler's index of choice 0
        if continuation and cfg.n != 1:
            raise InvalidSampling("continuation_token_ids needs n = 1")
        if first < 0 or (first and cfg.n != 1):
            raise InvalidSampling("choice_index needs n = 1 and must not be negative")
        bad = next((t for t in continuation if not 0 <= t < self.n_vocab), None)
        if bad is not None:
            raise InvalidSampling(f"continuation token id {bad} is out of vocabulary range (0..{self.n_vocab - 1})")
        prompt_tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=self.add_bos, special=True)
        if not prompt_tokens:
            raise InvalidSampling("the prompt is empty")
        room = self.n_ctx - len(prompt_tokens)
        if room < 1:
            raise InvalidSampling(
                f"Prompt length of {len(prompt_tokens)} tokens is longer than the maximum model length "
                f"of {self.n_ctx} tokens"
            )
        room -= len(continuation)  # what the earlier replica generated fills the context too
        budget = room if cfg.max_tokens is None else min(cfg.max_tokens, room)
        n_in = len(prompt_tokens)
        constraint = None if cfg.constraint is None else Constraint(self.grammar_tokenizer, cfg.constraint)
        k = cfg.logprobs if _flag(request, "return_logprobs", False) else None  # None: none computed

        texts, reasons, ids = [""] * cfg.n, ["None"] * cfg.n, [[] for _ in range(cfg.n)]
        lps = [None if k is None else [] for _ in range(cfg.n)]
        for index in range(cfg.n):
            emit = None
            if stream:
                def emit(delta, new_ids, new_lps, reason, index=index, last=index == cfg.n - 1):
                    out_texts = [""] * cfg.n
                    out_texts[index] = delta
                    out_ids = [[] for _ in range(cfg.n)]
                    out_ids[index] = new_ids
                    out_lps = [None if k is None else [] for _ in range(cfg.n)]
                    out_lps[index] = new_lps
                    reasons[index] = reason or "None"
                    final = reason is not None and last
                    sender.send(self._response(out_texts, reasons, n_in, out_ids, out_lps), flags=FINAL if final else 0)

            mask = None if constraint is None else constraint.matcher(self.n_vocab)
            texts[index], reasons[index], ids[index], lps[index] = self._generate(
                prompt_tokens, cfg, first + index, budget, sender, emit, mask, continuation, k
            )
        if not stream:
            sender.send(self._response(texts, reasons, n_in, ids, lps), flags=FINAL)

    def _response(self, texts, reasons, n_in, ids, lps):
        """lps: per choice, None (the JSON null) or the JSON texts of its tokens' logprobs."""
        logprobs = [b"null" if row is None else ("[" + ",".join(row) + "]").encode("utf-8") for row in lps]
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text_output", np.array([t.encode("utf-8") for t in texts], dtype=np.object_)),
                pb_utils.Tensor("finish_reason", np.array([r.encode() for r in reasons], dtype=np.object_)),
                pb_utils.Tensor("num_input_tokens", np.array([n_in], dtype=np.uint32)),
                pb_utils.Tensor("num_output_tokens", np.array([len(row) for row in ids], dtype=np.uint32)),
                pb_utils.Tensor("output_token_ids", _id_rows(ids)),
                pb_utils.Tensor("logprobs", np.array(logprobs, dtype=np.object_)),
            ]
        )

    def _generate(self, prompt_tokens, cfg, index, budget, sender, emit, mask=None, continuation=(), logprobs=None):
        """One choice: returns (new text, finish_reason, new token ids, their logprobs); streams through `emit`.

        With a `mask` (constraint.TokenMask) every token is one its grammar allows, and the choice
        ends as soon as the grammar is complete. `continuation` (tokens this choice produced on
        another replica) is replayed first; `budget` counts only the tokens generated here.
        With `logprobs` (k, not None) each new token's logprobs are a JSON text (`_logprob_json`),
        one per id; else the logprobs are None.
        """
        sampler = Sampler(cfg, self.n_vocab, choice_index=index)
        stops = StopMatcher(cfg.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        logits = self._prime(prompt_tokens)
        text = ""
        for token in continuation:  # one at a time, as they were generated: the same logits
            if sender.is_cancelled():
                raise _Cancelled
            sampler.replay(token)
            if mask is not None:
                mask.replay(token)
            text += decoder.decode(self.llm.detokenize([token]))
            logits = self._step(token)
        start = emitted = len(text)  # the earlier replica emitted exactly the text of these tokens
        pending: list[tuple[int, int, str | None]] = []  # (token, end of its text, logprobs) not yet reported
        generated, lps, reason, cut_at_stop = [], [], None, False
        if mask is not None and mask.finished:
            reason = "stop"  # the continuation completed the grammar
        elif continuation and budget < 1:
            reason = "length"
        try:
            while reason is None:
                if sender.is_cancelled():
                    raise _Cancelled
                token, top = sampler.choose_with_logprobs(logits, None if mask is None else mask.allowed(), logprobs)
                if token in self.eog:
                    reason = "stop"
                    break
                if mask is not None:
                    mask.accept(token)
                generated.append(token)
                lp = None if top is None else self._logprob_json(top)
                lps.append(lp)
                piece = decoder.decode(self.llm.detokenize([token]))
                text += piece
                pending.append((token, len(text), lp))
                stop_at = stops.find(text, start=len(text) - len(piece))
                if stop_at is not None:
                    text, reason, cut_at_stop = text[:stop_at], "stop", True
                    break
                if mask is not None and mask.finished:
                    reason = "stop"  # the grammar is complete: nothing but the end could follow
                    break
                if len(generated) >= budget:
                    reason = "length"
                    break
                logits = self._step(token)
                if emit is not None:
                    # emit up to the end of the last token all of whose text is safe, and report
                    # the tokens up to it: the ids reported so far always give the text emitted
                    safe = stops.safe_length(text)
                    done = sum(1 for _, end, _ in pending if end <= safe)  # ends never decrease
                    if done and pending[done - 1][1] > emitted:
                        emit(text[emitted : pending[done - 1][1]], [t for t, _, _ in pending[:done]],
                             None if logprobs is None else [lp for _, _, lp in pending[:done]], None)
                        emitted = pending[done - 1][1]
                        del pending[:done]
        finally:  # one update per choice: each increment is a round trip to the Triton server
            if generated:
                self.m_tokens.increment(len(generated))
        if not cut_at_stop:
            text += decoder.decode(b"", final=True)
        if emit is not None:
            emit(text[emitted:], [t for t, _, _ in pending], None if logprobs is None else [lp for _, _, lp in pending],
                 reason)
        return text[start:], reason, generated, None if logprobs is None else lps

    def _logprob_json(self, top) -> str:
        """The JSON object of one token's logprobs (sampling.token_logprobs' entries, chosen first)."""
        return json.dumps({
            str(tid): {"logprob": logprob, "rank": rank, "decoded_token": self._piece(tid)}
            for tid, logprob, rank in top
        })

    def _piece(self, token) -> str:
        """A token's own text (cached: the top tokens of a step recur)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.llm.detokenize([token]).decode("utf-8", errors="replace")
        return piece

    # -- llama.cpp state ---------------------------------------------------------------------

    def _logits(self) -> np.ndarray:
        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _prime(self, tokens) -> np.ndarray:
        """Evaluates the prompt; the next choice of the same prompt reuses its KV cache and logits.

        Only an exact prompt is reused: llama.cpp's logits differ slightly (~1e-2) between a
        batched and a token-by-token evaluation, and seeded sampling must not depend on what
        the previous request left in the cache.
        """
        n = len(tokens)
        cached = self._primed is not None and self._primed[0] == tokens and self.llm.n_tokens >= n
        if not cached:
            self.llm.n_tokens = 0
            self.llm.eval(tokens)
            self._primed = (list(tokens), self._logits())
        self.llm.n_tokens = n  # tokens generated after the prompt are dropped by the next eval
        return self._primed[1].copy()

    def _step(self, token) -> np.ndarray:
        self.llm.eval([token])
        return self._logits()
