"""Checks what the façade sent against the schema its own /openapi.json gives for that operation and
status, with every object schema closed (no key the document does not list): a field sent but not
documented, documented as required but not sent, or of another type or nullability fails."""

from __future__ import annotations

import copy
import json
import re

from jsonschema import Draft202012Validator


def _closed(schema):
    if isinstance(schema, dict):
        schema = {key: _closed(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


def sse_events(raw: bytes) -> list[dict]:
    """The JSON of every `data:` event of an SSE body, which must end with `data: [DONE]`."""
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""], events[-3:]
    payloads = []
    for event in events[:-2]:
        lines = [line for line in event.split("\n") if not line.startswith(":")]  # keep-alive comments
        if lines:
            assert len(lines) == 1 and lines[0].startswith("data: "), event
            payloads.append(json.loads(lines[0].removeprefix("data: ")))
    return payloads


class Conformance:
    """The served document, and validation of responses against it."""

    def __init__(self, document: dict) -> None:
        assert document["openapi"].startswith("3.1.")
        self.document = document
        self._components = _closed(copy.deepcopy(document["components"]))

    def _operation(self, method: str, path: str) -> dict:
        paths = self.document["paths"]
        if path in paths:
            return paths[path][method.lower()]
        for template, item in paths.items():  # {name} matches anything, '/' included (model ids)
            if re.fullmatch(re.sub(r"\\\{\w+\\\}", ".+", re.escape(template)), path):
                return item[method.lower()]
        raise AssertionError(f"{method} {path} is not in /openapi.json")

    def schema(self, method: str, path: str, status: int, content_type: str = "application/json") -> dict:
        responses = self._operation(method, path)["responses"]
        assert str(status) in responses, f"{method} {path} answered {status}, which the document does not list"
        content = responses[str(status)]["content"]
        assert content_type in content, f"{method} {path} {status} sent {content_type}, not in the document"
        return content[content_type]["schema"]

    def validate(self, schema: dict, instance) -> None:
        root = {**_closed(copy.deepcopy(schema)), "components": self._components}
        Draft202012Validator(root).validate(instance)

    def component(self, name: str, instance) -> None:
        """Validates against one component schema (for answers outside any documented path)."""
        self.validate({"$ref": f"#/components/schemas/{name}"}, instance)

    async def check(self, response, method: str, path: str):
        """Validates an aiohttp test-client response (JSON body or every SSE event) against the
        operation's schema for its status; returns the body, or the list of SSE events."""
        content_type = response.content_type
        schema = self.schema(method, path, response.status, content_type)
        if content_type == "text/event-stream":
            events = sse_events(await response.read())
            for event in events:
                self.validate(schema, event)
            return events
        body = await response.json()
        self.validate(schema, body)
        return body
