"""Echo: streams the prompt's words back, one "token" per response, for benchmarks of the mesh.

Speaks the vLLM-backend tensor contract (see ../smollm2/1/model.py): `max_tokens` responses per
choice (default 16), `n` choices, finish_reason "length". Requests run concurrently on threads, and
a cancelled request stops at its next response.
"""

import json
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _tensor(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            thread = threading.Thread(target=self._serve, args=(request,), daemon=True)
            thread.start()
        return None

    def _response(self, texts, reasons, n_in, counts):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("text_output", np.array([t.encode() for t in texts], dtype=np.object_)),
            pb_utils.Tensor("finish_reason", np.array([r.encode() for r in reasons], dtype=np.object_)),
            pb_utils.Tensor("num_input_tokens", np.array([n_in], dtype=np.uint32)),
            pb_utils.Tensor("num_output_tokens", np.array(counts, dtype=np.uint32)),
        ])

    def _serve(self, request):
        sender = request.get_response_sender()
        try:
            prompt = _tensor(request, "text_input")
            prompt = prompt.decode() if isinstance(prompt, bytes) else str(prompt)
            stream = bool(_tensor(request, "stream") or False)
            raw = _tensor(request, "sampling_parameters")
            params = json.loads(raw.decode() if isinstance(raw, bytes) else (raw or "{}"))
            n, max_tokens = int(params.get("n", 1)), int(params.get("max_tokens") or 16)
            words = prompt.split() or ["echo"]
            n_in = len(words)
            if not stream:
                text = " ".join(words[i % len(words)] for i in range(max_tokens))
                sender.send(self._response([text] * n, ["length"] * n, n_in, [max_tokens] * n), flags=FINAL)
                return
            for choice in range(n):
                for i in range(max_tokens):
                    if sender.is_cancelled():
                        sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                            "Request was cancelled", pb_utils.TritonError.CANCELLED)), flags=FINAL)
                        return
                    last = i == max_tokens - 1
                    texts, reasons, counts = [""] * n, ["None"] * n, [0] * n
                    texts[choice], counts[choice] = " " + words[i % len(words)], 1
                    if last:
                        reasons[choice] = "length"
                    final = last and choice == n - 1
                    sender.send(self._response(texts, reasons, n_in, counts), flags=FINAL if final else 0)
        except Exception as err:  # always a final response
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"Error generating stream: {err}")),
                        flags=FINAL)
