"""The OpenAPI document of /v1 (`GET /v1/openapi.json`), written from the models that check its requests.

The request body's schema is ChatBody's, with the `conductor` object as ConductorOptions: the same models
that parse_request validates with. Model names are the live registry's, as GET /v1/models lists them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import __version__
from .openai_chat import ChatBody, ConductorOptions, model_list

if TYPE_CHECKING:
    from ..workers.registry import Registry

REF = "#/components/schemas/{model}"

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
MODEL = {"type": "object", "required": ["id", "object", "created", "owned_by"],
         "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                        "owned_by": {"type": "string"}, "description": {"type": "string"}}}
USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
         "properties": {k: {"type": "integer", "minimum": 0}
                        for k in ("prompt_tokens", "completion_tokens", "total_tokens")}}
COMPLETION = {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
              "properties": {"id": {"type": "string"}, "object": {"const": "chat.completion"},
                             "created": {"type": "integer"}, "model": {"type": "string"},
                             "choices": {"type": "array", "items": {
                                 "type": "object", "required": ["index", "message", "finish_reason"],
                                 "properties": {"index": {"type": "integer"},
                                                "finish_reason": {"enum": ["stop", "length"]},
                                                "message": {"type": "object", "required": ["role", "content"],
                                                            "properties": {"role": {"const": "assistant"},
                                                                           "content": {"type": "string"}}}}}},
                             "usage": {"$ref": "#/components/schemas/Usage"}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": "an error in OpenAI's envelope",
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for s in statuses}


def openapi_document(registry: Registry) -> dict[str, Any]:
    body = ChatBody.model_json_schema(ref_template=REF)
    options = ConductorOptions.model_json_schema(ref_template=REF)
    defs = {**body.pop("$defs", {}), **options.pop("$defs", {})}
    body["properties"]["conductor"] = {"anyOf": [{"$ref": "#/components/schemas/ConductorOptions"},
                                                 {"type": "null"}]}
    models = [m["id"] for m in model_list(registry)]
    body["properties"]["model"] = {"enum": models,
                                   "description": "a model GET /v1/models lists"}
    body["properties"]["messages"] = {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["role", "content"],
        "properties": {"role": {"enum": ["system", "developer", "user", "assistant"]},
                       "content": {"type": "string"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "conductor-mcp OpenAI-compatible API", "version": __version__},
        "paths": {
            "/v1/models": {"get": {"operationId": "listModels", "responses": {
                "200": {"description": "the models a request can name now", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["object", "data"],
                               "properties": {"object": {"const": "list"},
                                              "data": {"type": "array", "items": {
                                                  "$ref": "#/components/schemas/Model"}}}}}}},
                **_errors(401)}}},
            "/v1/models/{model}": {"get": {
                "operationId": "getModel",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "one model", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Model"}}}}, **_errors(401, 404)}}},
            "/v1/chat/completions": {"post": {
                "operationId": "createChatCompletion",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ChatBody"},
                    "example": {"model": models[0] if models else "conductor",
                                "messages": [{"role": "user", "content": "Name a colour of the sky."}]}}}},
                "responses": {
                    "200": {"description": "the run's answer (`stream: true`: server-sent chunks)", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
                        # one server-sent event: `data:` a chat.completion.chunk's JSON, or `[DONE]` last
                        "text/event-stream": {"schema": {"type": "object", "required": ["data"],
                                                         "properties": {"data": {"type": "string"},
                                                                        "event": {"type": "string"}}}}}},
                    **_errors(400, 401, 404, 409, 413, 502, 503)}}},
        },
        "components": {"schemas": {**defs, "ChatBody": body, "ConductorOptions": options, "Error": ERROR,
                                   "Model": MODEL, "ChatCompletion": COMPLETION, "Usage": USAGE}},
    }
