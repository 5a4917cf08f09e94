"""Every JSON body the façade answers, as TypedDicts: OpenAI's shapes, with the nullability and the
optional keys exactly as this server sends them.

A TypedDict is a plain dict at run time, so building one costs nothing on the SSE hot path (one chunk
per token) and orjson serialises it as is; pydantic's TypeAdapter turns the same classes into the
JSON schemas of /openapi.json (facade/openapi.py), so the document cannot drift from what is sent.
The class name is the schema's name in the document; docstrings are its descriptions.

`typing_extensions.TypedDict` rather than `typing.TypedDict`: pydantic reads the latter only on
Python >= 3.12 (this project supports 3.11); both are the same dict at run time.
"""

from typing import Literal

from typing_extensions import NotRequired, TypedDict

FinishReason = Literal["stop", "length", "tool_calls"]


# -- shared ----------------------------------------------------------------------------------------


class PromptTokensDetails(TypedDict):
    """Prompt tokens the model server's prefix cache served."""

    cached_tokens: int


class Usage(TypedDict):
    """Tokens used by a (chat) completion; total_tokens = prompt_tokens + completion_tokens."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: NotRequired[PromptTokensDetails]


class Error(TypedDict):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(TypedDict):
    """Every error, with any status; in a stream that already started, one `data:` event."""

    error: Error


# -- chat completions ------------------------------------------------------------------------------


class ChatCompletionMessageFunction(TypedDict):
    name: str
    arguments: str  # JSON text that parses and matches the tool's parameters (unless cut short by length)


class ChatCompletionMessageToolCall(TypedDict):
    """A function call the model made."""

    id: str
    type: Literal["function"]
    function: ChatCompletionMessageFunction


class ChatCompletionMessage(TypedDict):
    """The assistant's answer: content is null when the answer is only tool calls."""

    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: NotRequired[list[ChatCompletionMessageToolCall]]


class ChatCompletionChoice(TypedDict):
    index: int
    message: ChatCompletionMessage
    logprobs: None
    finish_reason: FinishReason


class ChatCompletion(TypedDict):
    """OpenAI's CreateChatCompletionResponse."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionChoice]
    usage: Usage


class ChatCompletionToolCallFunctionDelta(TypedDict):
    name: NotRequired[str]  # in the call's first delta only
    arguments: str


class ChatCompletionToolCallDelta(TypedDict):
    """A streamed tool call: the first delta of a call has id, type and name (arguments ""), the
    next ones argument fragments only."""

    index: int
    id: NotRequired[str]
    type: NotRequired[Literal["function"]]
    function: ChatCompletionToolCallFunctionDelta


class ChatCompletionDelta(TypedDict, total=False):
    """What a chunk adds to a choice: the opening chunk has role and content ("", or null when only
    tool calls can follow), then content or tool_calls; the finishing chunk's delta is empty."""

    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ChatCompletionToolCallDelta]


class ChatCompletionChunkChoice(TypedDict):
    index: int
    delta: ChatCompletionDelta
    logprobs: None
    finish_reason: FinishReason | None  # null until the choice's last chunk


class ChatCompletionChunk(TypedDict):
    """OpenAI's CreateChatCompletionStreamResponse: one `data:` event of a chat stream. With
    stream_options.include_usage, usage is null on every chunk but the last, whose choices are empty."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionChunkChoice]
    usage: NotRequired[Usage | None]


# -- completions -----------------------------------------------------------------------------------


class CompletionChoice(TypedDict):
    index: int  # prompt number * n + choice number
    text: str
    logprobs: None
    finish_reason: FinishReason | None  # null in stream chunks until the choice's last one


class Completion(TypedDict):
    """OpenAI's CreateCompletionResponse, also each `data:` event of a completions stream (as
    OpenAI: one shape for both). Stream chunks have no system_fingerprint, and usage only with
    stream_options.include_usage (null but on the last chunk, whose choices are empty)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: NotRequired[str]
    choices: list[CompletionChoice]
    usage: NotRequired[Usage | None]


# -- embeddings ------------------------------------------------------------------------------------


class Embedding(TypedDict):
    """One input's vector: JSON numbers, or with encoding_format "base64" the little-endian float32
    bytes in base64."""

    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsage(TypedDict):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(TypedDict):
    """OpenAI's CreateEmbeddingResponse."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# -- images ----------------------------------------------------------------------------------------


class Image(TypedDict):
    """One picture: b64_json (a PNG) or url (a signed link on this server), as response_format asks."""

    b64_json: NotRequired[str]
    url: NotRequired[str]
    revised_prompt: str


class ImagesResponse(TypedDict):
    created: int
    data: list[Image]


# -- models ----------------------------------------------------------------------------------------


class Model(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    description: NotRequired[str]  # an extension, e.g. that a test pipeline draws noise


class ModelList(TypedDict):
    """OpenAI's ListModelsResponse."""

    object: Literal["list"]
    data: list[Model]


# -- probes (not OpenAI's) -------------------------------------------------------------------------


class Health(TypedDict):
    status: Literal["ok"]


class Readiness(TypedDict):
    status: Literal["ready", "not ready"]
    services: dict[str, str]  # service -> gRPC health status name (SERVING, UNAVAILABLE, ...)
