"""Every JSON body the façade answers, as TypedDicts: OpenAI's shapes, with the nullability and the
optional keys exactly as this server sends them.

A TypedDict is a plain dict at run time, so building one costs nothing on the SSE hot path (one chunk
per token) and orjson serialises it as is; pydantic's TypeAdapter turns the same classes into the
JSON schemas of /openapi.json (facade/openapi.py), so the document cannot drift from what is sent.
The class name is the schema's name in the document; docstrings are its descriptions.

`typing_extensions.TypedDict` rather than `typing.TypedDict`: pydantic reads the latter only on
Python >= 3.12 (this project supports 3.11); both are the same dict at run time.
"""

from typing import Literal, NotRequired

from typing_extensions import TypedDict

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


class ChatCompletionTopLogprob(TypedDict):
    """One of the most likely tokens at a position."""

    token: str
    logprob: float
    bytes: list[int] | None  # the token's UTF-8 bytes


class ChatCompletionTokenLogprob(TypedDict):
    """A generated token: its log probability (-9999.0: the model gave it next to none) and the
    most likely tokens at its position, best first (fewer than top_logprobs where the model
    returned fewer; the sampled token is among them when it is one of the best)."""

    token: str
    logprob: float
    bytes: list[int] | None  # the token's UTF-8 bytes
    top_logprobs: list[ChatCompletionTopLogprob]


class ChatCompletionChoiceLogprobs(TypedDict):
    """With logprobs: true, every generated token of the choice in order (in a stream, those of the
    chunk), the tokens of tool calls included; refusal is always null (this server never refuses)."""

    content: list[ChatCompletionTokenLogprob] | None
    refusal: None


class ChatCompletionChoice(TypedDict):
    index: int
    message: ChatCompletionMessage
    logprobs: ChatCompletionChoiceLogprobs | None  # null unless the request asked (logprobs: true)
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
    logprobs: ChatCompletionChoiceLogprobs | None  # with logprobs: true, on chunks that carry tokens
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


class CompletionLogprobs(TypedDict):
    """The legacy shape, with `logprobs` set: per generated token (in a stream, those of the chunk) its
    text, log probability, the `logprobs` most likely tokens with the sampled one (so up to
    logprobs + 1 entries, keyed by text) and the character offset of the token in the choice's text.
    The prompt's tokens are not included (echo with logprobs is refused: no prompt logprobs here)."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(TypedDict):
    index: int  # prompt number * n + choice number
    text: str
    logprobs: CompletionLogprobs | None  # null unless the request set logprobs
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


# -- responses (the Responses API: facade/api/responses/) ------------------------------------
# Named Response* so that no schema of /openapi.json shares a name with chat's.

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class ResponseInputText(TypedDict):
    type: Literal["input_text"]
    text: str


class ResponseOutputText(TypedDict):
    """Text the model wrote; annotations and logprobs are always empty here."""

    type: Literal["output_text"]
    text: str
    annotations: list[dict]
    logprobs: list[dict]


class ResponseRefusal(TypedDict):
    type: Literal["refusal"]
    refusal: str


class ResponseOutputMessage(TypedDict):
    """An assistant message: in a response's output, or replayed in the input items."""

    type: Literal["message"]
    id: str
    status: ItemStatus
    role: Literal["assistant"]
    content: list[ResponseOutputText | ResponseRefusal]


class ResponseFunctionToolCall(TypedDict):
    """A function call the model made; call_id is what a function_call_output answers."""

    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str  # JSON text that parses and matches the tool's parameters (unless cut short)
    status: ItemStatus


class ResponseInputMessage(TypedDict):
    """A user, system or developer message of the input items."""

    type: Literal["message"]
    id: str
    status: ItemStatus
    role: Literal["user", "system", "developer"]
    content: list[ResponseInputText]


class ResponseFunctionToolCallOutput(TypedDict):
    """The result of a function call, given back by the client."""

    type: Literal["function_call_output"]
    id: str
    call_id: str
    output: str
    status: ItemStatus


ResponseOutputItem = ResponseOutputMessage | ResponseFunctionToolCall
ResponseItem = ResponseInputMessage | ResponseOutputMessage | ResponseFunctionToolCall | ResponseFunctionToolCallOutput


class ResponseInputTokensDetails(TypedDict):
    cached_tokens: int  # prompt tokens the model server's prefix cache served (0 where it does not say)
    cache_write_tokens: int


class ResponseOutputTokensDetails(TypedDict):
    reasoning_tokens: int


class ResponseUsage(TypedDict):
    input_tokens: int
    input_tokens_details: ResponseInputTokensDetails
    output_tokens: int
    output_tokens_details: ResponseOutputTokensDetails
    total_tokens: int


class ResponseError(TypedDict):
    """Why a response failed."""

    code: str
    message: str


class ResponseIncompleteDetails(TypedDict):
    reason: Literal["max_output_tokens"]


class ResponseReasoning(TypedDict):
    effort: None
    summary: None


class ResponseFormatTextConfig(TypedDict):
    type: Literal["text"]


class ResponseFormatJsonObjectConfig(TypedDict):
    type: Literal["json_object"]


class ResponseFormatJsonSchemaConfig(TypedDict):
    type: Literal["json_schema"]
    name: str
    schema: dict
    description: NotRequired[str]
    strict: bool | None


class ResponseTextConfig(TypedDict):
    format: ResponseFormatTextConfig | ResponseFormatJsonObjectConfig | ResponseFormatJsonSchemaConfig


class ResponseFunctionTool(TypedDict):
    type: Literal["function"]
    name: str
    description: str | None
    parameters: dict | None
    strict: bool  # always true here: arguments are held to the parameters either way


class ResponseToolChoiceFunction(TypedDict):
    type: Literal["function"]
    name: str


class Response(TypedDict):
    """OpenAI's Response object. The request's settings are echoed (defaults filled in); usage is
    absent only while the response is in progress (in the first events of a stream)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    completed_at: int | None
    error: ResponseError | None
    incomplete_details: ResponseIncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    max_tool_calls: None
    model: str
    output: list[ResponseOutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: ResponseReasoning
    store: bool
    temperature: float
    text: ResponseTextConfig
    tool_choice: Literal["none", "auto", "required"] | ResponseToolChoiceFunction
    tools: list[ResponseFunctionTool]
    top_p: float
    truncation: Literal["disabled"]
    usage: NotRequired[ResponseUsage]
    user: NotRequired[str]  # absent when the request gave none
    metadata: dict[str, str]
    background: bool


class ResponseDeleted(TypedDict):
    id: str
    object: Literal["response.deleted"]
    deleted: Literal[True]


class ResponseItemList(TypedDict):
    """A page of a response's input items (GET /v1/responses/{id}/input_items); first_id and
    last_id are null on an empty page."""

    object: Literal["list"]
    data: list[ResponseItem]
    first_id: str | None
    last_id: str | None
    has_more: bool


# Stream events: each one `event: <type>` + `data: <the event>`, in order, numbered by sequence_number.


class ResponseLifecycleEvent(TypedDict):
    """response.created and response.in_progress (the response in progress, no output yet), then
    response.completed, response.incomplete (max_output_tokens) or response.failed."""

    type: Literal["response.created", "response.in_progress", "response.completed", "response.incomplete",
                  "response.failed"]
    sequence_number: int
    response: Response


class ResponseOutputItemEvent(TypedDict):
    """response.output_item.added (the item in progress) and response.output_item.done (finished)."""

    type: Literal["response.output_item.added", "response.output_item.done"]
    sequence_number: int
    output_index: int
    item: ResponseOutputItem


class ResponseContentPartEvent(TypedDict):
    """response.content_part.added (empty text) and response.content_part.done (the whole text)."""

    type: Literal["response.content_part.added", "response.content_part.done"]
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: ResponseOutputText


class ResponseTextDeltaEvent(TypedDict):
    type: Literal["response.output_text.delta"]
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[dict]


class ResponseTextDoneEvent(TypedDict):
    type: Literal["response.output_text.done"]
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[dict]


class ResponseFunctionCallArgumentsDeltaEvent(TypedDict):
    type: Literal["response.function_call_arguments.delta"]
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class ResponseFunctionCallArgumentsDoneEvent(TypedDict):
    type: Literal["response.function_call_arguments.done"]
    sequence_number: int
    item_id: str
    output_index: int
    name: str
    arguments: str


class ResponseErrorEvent(TypedDict):
    """A failure after the stream started; response.failed follows it."""

    type: Literal["error"]
    sequence_number: int
    code: str | None
    message: str
    param: str | None


ResponseStreamEventType = (
    ResponseLifecycleEvent | ResponseOutputItemEvent | ResponseContentPartEvent | ResponseTextDeltaEvent
    | ResponseTextDoneEvent | ResponseFunctionCallArgumentsDeltaEvent | ResponseFunctionCallArgumentsDoneEvent
    | ResponseErrorEvent
)


# -- usage (GET /v1/usage: a hubmesh extension, the admin scope's) ----------------------------------


class UsageTotals(TypedDict):
    """One group's totals: the group's values (the names of `group_by`), then its requests' totals."""

    subject: NotRequired[str]  # the verified caller (jwt:<sub>, key:<hash>); "" for refused credentials
    user: NotRequired[str]  # OpenAI's `user` field; "" when requests gave none
    model: NotRequired[str]
    day: NotRequired[str]  # YYYY-MM-DD, UTC
    hour: NotRequired[str]  # YYYY-MM-DDTHH:00Z, UTC
    endpoint: NotRequired[str]  # the route's path, e.g. /v1/chat/completions
    status: NotRequired[int]  # the HTTP status (499: the client went away)
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    total_tokens: int  # prompt_tokens + completion_tokens
    images: int
    errors: int  # requests answered with a status >= 400


class UsageList(TypedDict):
    """Usage totals over [start, end) (unix seconds), one item per group, ordered by the groups."""

    object: Literal["list"]
    data: list[UsageTotals]
    has_more: bool  # more groups than `limit`
    start: float
    end: float


# -- the mesh: each modality service's Triton replicas (a hubmesh extension; facade/api/mesh) ----------


class MeshReplica(TypedDict):
    """One Triton replica as the service that answered sees it."""

    address: str  # host:port of its gRPC endpoint
    state: Literal["ready", "quarantined", "ejected", "not_ready", "unprobed"]
    ready_models: list[str]  # the service's Triton models ready there, as last probed
    in_flight: int  # the answering service process's calls running there now
    engine_running: float  # what its engine last reported (vllm:num_requests_running), 0 where none
    engine_waiting: float  # vllm:num_requests_waiting
    ejections: float  # counters of the answering process
    stalls: float
    canaries: float
    routed: float  # calls routed there


class MeshRouting(TypedDict):
    """The service's routing decisions by reason, and its replicas' prefix-cache hit ratio."""

    decisions: dict[str, float]  # reason ("prefix", "load", "least_request", ...) -> calls
    prompt_tokens: float
    cached_tokens: float
    hit_ratio: float | None  # cached_tokens / prompt_tokens; null before any prompt token


class MeshEvent(TypedDict):
    at: float  # unix seconds
    address: str
    event: str  # ejected, admitted, quarantined, removed; "migration (…)", "stall (phase)" of a generation


class MeshService(TypedDict):
    """One modality service: its answer, or `available: false` and why."""

    service: str  # text, embeddings, images
    available: bool
    error: NotRequired[str]  # why it could not be asked (available: false)
    address: NotRequired[str]  # the process asked, where the service has several (each listed)
    instance: NotRequired[str]  # which service process answered: host, pid, listen address
    uptime_s: NotRequired[float]
    models: NotRequired[list[str]]
    replicas: NotRequired[list[MeshReplica]]
    in_flight: NotRequired[int]  # calls the answering process has running on its replicas now
    queued: NotRequired[int]  # calls waiting for its admission
    routing: NotRequired[MeshRouting]
    migrations: NotRequired[dict[str, float]]  # outcome (moved, failed) -> generations
    stalls: NotRequired[dict[str, float]]  # phase -> generations
    events: NotRequired[list[MeshEvent]]  # the replica set's latest changes of state, newest last


class Mesh(TypedDict):
    """Every modality service's view of its replicas, asked now (GET /v1/mesh)."""

    object: Literal["mesh"]
    services: list[MeshService]
    at: float  # unix seconds


# -- keys the hub issues (a hubmesh extension; facade/api/keys) --------------------------------------


class ApiKeyLimits(TypedDict):
    """The key's own limits; an absent one is the deployment's."""

    rpm: NotRequired[int]
    tpm: NotRequired[int]
    tokens_per_day: NotRequired[int]
    tokens_per_month: NotRequired[int]
    max_parallel_requests: NotRequired[int]
    weight: NotRequired[int]
    priority: NotRequired[int]


class ApiKey(TypedDict):
    """A key the hub issued (never its secret, but on creation and regeneration: `key`)."""

    id: str
    object: Literal["api_key"]
    name: str
    owner: str  # the subject that manages it
    subject: str  # who its calls are for: hubkey:<id>
    created_at: int
    updated_at: int
    expires_at: int | None
    blocked: bool
    scopes: list[str]
    models: list[str] | None  # null: every model
    limits: ApiKeyLimits
    metadata: dict
    previous_key_valid_until: int | None  # after a regeneration with a grace period: the old secret's end
    key: NotRequired[str]  # the secret, shown once


class ApiKeyList(TypedDict):
    object: Literal["list"]
    data: list[ApiKey]


class ApiKeyDeleted(TypedDict):
    id: str
    object: Literal["api_key.deleted"]
    deleted: bool


class ApiKeysDeleted(TypedDict):
    object: Literal["api_key.deleted_many"]
    deleted: int


class IonosToken(TypedDict):
    """IONOS Auth API: a generated token."""

    token: str


class IonosTokenInfo(TypedDict):
    """IONOS Auth API: a token's id and dates (ISO 8601, UTC)."""

    id: str
    createdDate: str
    expirationDate: str | None


class IonosTokenList(TypedDict):
    tokens: list[IonosTokenInfo]


class IonosSuccess(TypedDict):
    success: bool


# -- Anthropic's Messages API (POST /v1/messages; facade/api/messages) -------------------------------


class AnthropicTextBlock(TypedDict):
    type: Literal["text"]
    text: str
    citations: None


class AnthropicToolUseBlock(TypedDict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict


class AnthropicUsage(TypedDict):
    """Tokens of a message; the prompt tokens the model server's prefix cache served are cache reads."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None
    cache_read_input_tokens: int | None
    cache_creation: None
    server_tool_use: None
    service_tier: Literal["standard"] | None
    inference_geo: None
    output_tokens_details: None


AnthropicStopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class AnthropicMessage(TypedDict):
    """Anthropic's Message."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    content: list[AnthropicTextBlock | AnthropicToolUseBlock]
    model: str
    stop_reason: AnthropicStopReason | None
    stop_sequence: str | None
    stop_details: None
    usage: AnthropicUsage
    container: None


class AnthropicError(TypedDict):
    type: Literal["invalid_request_error", "authentication_error", "permission_error", "not_found_error",
                  "request_too_large", "rate_limit_error", "api_error", "overloaded_error", "timeout_error"]
    message: str


class AnthropicErrorResponse(TypedDict):
    """Anthropic's error body, what the routes of its dialect answer on failure."""

    type: Literal["error"]
    error: AnthropicError
    request_id: str | None


class AnthropicTokenCount(TypedDict):
    input_tokens: int


class AnthropicStreamEvent(TypedDict):
    """One event of a streamed message (named by its `event:` line too): message_start, content_block_start,
    ping, content_block_delta (text_delta or input_json_delta), content_block_stop, message_delta,
    message_stop, or error."""

    type: Literal["message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
                  "message_delta", "message_stop", "error"]
    message: NotRequired[AnthropicMessage]
    index: NotRequired[int]
    content_block: NotRequired[AnthropicTextBlock | AnthropicToolUseBlock]
    delta: NotRequired[dict]
    usage: NotRequired[dict]
    error: NotRequired[dict]
