"""Every URL the façade serves, in one table: the app registers it (facade/app.py), the auth and
admission middlewares and the access log read each request's Route (facade/route_index.py), and
/openapi.json is generated from it (facade/openapi.py)."""

from __future__ import annotations

from facade import console
from facade.api.chat import handler as chat
from facade.api.chat.protocol import ChatCompletionRequest
from facade.api.completions import handler as completions
from facade.api.completions.protocol import CompletionRequest
from facade.api.embeddings import handler as embeddings
from facade.api.embeddings.protocol import EmbeddingRequest
from facade.api.images import handler as images
from facade.api.images.protocol import ImageRequest
from facade.api.keys import handler as keys
from facade.api.keys import ionos
from facade.api.keys.protocol import (
    IonosDeleteQuery,
    IonosGenerateQuery,
    KeyCreate,
    KeyDeleteQuery,
    KeyListQuery,
    KeyRegenerate,
    KeyUpdate,
)
from facade.api.mesh import handler as mesh
from facade.api.messages import handler as messages
from facade.api.messages.protocol import CountTokensRequest, MessagesRequest
from facade.api.models import handler as models
from facade.api.response_bodies import (
    AnthropicMessage,
    AnthropicStreamEvent,
    AnthropicTokenCount,
    ApiKey,
    ApiKeyDeleted,
    ApiKeyList,
    ApiKeysDeleted,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    EmbeddingList,
    ImagesResponse,
    IonosSuccess,
    IonosToken,
    IonosTokenInfo,
    IonosTokenList,
    Mesh,
    Model,
    ModelList,
    Response,
    ResponseDeleted,
    ResponseItemList,
    UsageList,
)
from facade.api.responses import handlers as responses
from facade.api.responses.protocol import ResponseRequest, ResponseStreamEvent
from facade.api.usage import handler as usage
from facade.api.usage.protocol import UsageQuery
from facade.observability import metrics_endpoint
from facade.openapi import openapi
from facade.probes import health, ready
from facade.route_index import Route

# aiohttp matches in this order
ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", health, public=True, admitted=False),
    Route("GET", "/ready", ready, public=True, admitted=False),
    Route("GET", "/metrics", metrics_endpoint, public=True, admitted=False),
    Route("GET", "/openapi.json", openapi, public=True, admitted=False),
    # the web console: static pages, public; every number on them comes from the API with the user's key
    *(Route("GET", path, console.serve, public=True, admitted=False) for path in console.paths()),
    Route("GET", "/v1/models", models.list_models, family="models", operation="list_models",
          summary="List models", response=ModelList),
    # ids may contain '/', e.g. HuggingFaceTB/SmolLM2-135M-Instruct
    Route("GET", "/v1/models/{model:.+}", models.retrieve_model, family="models", operation="list_models",
          summary="Retrieve a model", response=Model),
    Route("POST", "/v1/chat/completions", chat.create_chat_completion, family="chat", operation="chat",
          summary="Create a chat completion", request=ChatCompletionRequest, response=ChatCompletion,
          stream=ChatCompletionChunk),
    Route("POST", "/v1/completions", completions.create_completion, family="completions",
          operation="text_completion", summary="Create a completion", request=CompletionRequest,
          response=Completion, stream=Completion),
    Route("POST", "/v1/embeddings", embeddings.create_embeddings, family="embeddings", operation="embeddings",
          summary="Create embeddings", request=EmbeddingRequest, response=EmbeddingList),
    Route("POST", "/v1/images/generations", images.create_image, family="images", operation="image_generation",
          summary="Create images", request=ImageRequest, response=ImagesResponse),
    # Anthropic's Messages API, on the chat path (its errors in Anthropic's shape)
    Route("POST", "/v1/messages", messages.create_message, family="chat", operation="chat", dialect="anthropic",
          summary="Create a message (Anthropic's Messages API)", request=MessagesRequest, response=AnthropicMessage,
          stream=AnthropicStreamEvent),
    Route("POST", "/v1/messages/count_tokens", messages.count_tokens, family="chat", operation="chat",
          dialect="anthropic", summary="Count the tokens of a message (Anthropic's Messages API)",
          request=CountTokensRequest, response=AnthropicTokenCount),
    # the Responses API: stored state in the façade's database (facade/store), one subject's own
    Route("POST", "/v1/responses", responses.create_response, family="responses", operation="chat",
          summary="Create a model response", request=ResponseRequest, response=Response,
          stream=ResponseStreamEvent),
    Route("GET", "/v1/responses/{response_id}", responses.retrieve_response, family="responses",
          operation="chat", summary="Retrieve a model response", response=Response),
    Route("DELETE", "/v1/responses/{response_id}", responses.delete_response, family="responses",
          operation="chat", summary="Delete a model response", response=ResponseDeleted),
    Route("GET", "/v1/responses/{response_id}/input_items", responses.list_input_items, family="responses",
          operation="chat", summary="List a model response's input items", response=ResponseItemList),
    # the downloads behind `url`: a credential, or a signed link alone (auth_middleware's allow)
    Route("GET", images.FILES_PREFIX + "{image_id}", images.download_image, family="images",
          operation="image_generation"),
    # the usage ledger's totals (a hubmesh extension; no GenAI operation, no scope): an admin reads
    # every subject's, any other caller its own and its keys' (facade/api/usage/handler.py)
    Route("GET", "/v1/usage", usage.get_usage, summary="Usage totals per subject, user, model, day",
          query=UsageQuery, response=UsageList),
    # each modality service's Triton replicas and counters, asked over gRPC (a hubmesh extension)
    Route("GET", "/v1/mesh", mesh.get_mesh, family="admin", summary="The modality services' Triton replicas",
          response=Mesh),
    # keys the hub issues (a hubmesh extension): the keys scope manages the caller's own, the admin
    # scope every owner's too (facade/api/keys/manage.py)
    Route("POST", "/v1/keys", keys.create_key, family="keys", summary="Issue a key", request=KeyCreate, response=ApiKey),
    Route("GET", "/v1/keys", keys.list_keys, family="keys", summary="List keys", query=KeyListQuery, response=ApiKeyList),
    Route("DELETE", "/v1/keys", keys.delete_keys, family="keys", summary="Delete keys (all or expired)", query=KeyDeleteQuery,
          response=ApiKeysDeleted),
    Route("GET", "/v1/keys/{key_id}", keys.retrieve_key, family="keys", summary="Retrieve a key", response=ApiKey),
    Route("PATCH", "/v1/keys/{key_id}", keys.update_key, family="keys", summary="Update a key", request=KeyUpdate, response=ApiKey),
    Route("DELETE", "/v1/keys/{key_id}", keys.delete_key, family="keys", summary="Delete a key", response=ApiKeyDeleted),
    Route("POST", "/v1/keys/{key_id}/block", keys.block_key, family="keys", summary="Block a key", response=ApiKey),
    Route("POST", "/v1/keys/{key_id}/unblock", keys.unblock_key, family="keys", summary="Unblock a key", response=ApiKey),
    Route("POST", "/v1/keys/{key_id}/regenerate", keys.regenerate_key, family="keys", summary="Regenerate a key's secret",
          request=KeyRegenerate, response=ApiKey),
    # the same keys through IONOS's Auth API
    Route("GET", "/auth/v1/tokens/generate", ionos.generate_token, family="keys", summary="Generate a token (IONOS Auth API)",
          query=IonosGenerateQuery, response=IonosToken),
    Route("GET", "/auth/v1/tokens", ionos.list_tokens, family="keys", summary="List tokens (IONOS Auth API)",
          response=IonosTokenList),
    Route("DELETE", "/auth/v1/tokens", ionos.delete_tokens, family="keys", summary="Delete tokens (IONOS Auth API)",
          query=IonosDeleteQuery, response=IonosSuccess),
    Route("GET", "/auth/v1/tokens/{token_id}", ionos.get_token, family="keys", summary="Get a token (IONOS Auth API)",
          response=IonosTokenInfo),
    Route("DELETE", "/auth/v1/tokens/{token_id}", ionos.delete_token, family="keys", summary="Delete a token (IONOS Auth API)",
          response=IonosSuccess),
)
