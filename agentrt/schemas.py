"""The schemas an LLM call is constrained by: tool calls (as a JSON schema or a chat format's
structural tag) and structured output, bounded so a constrained generation always closes; and the
decoding of a structured generation."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from agentrt.api import Tool
from agentrt.errors import SchemaError
from agentrt.types import Generation

__all__ = ["bound_schema", "call_grammar", "json_schema_of", "parse_json_output", "tool_call_schema"]


def call_grammar(fmt: Any, tools: list[Tool]) -> dict[str, Any] | None:
    """The chat format's tool-call structural tag over `tools` (schemas bounded as in tool_call_schema);
    None for a format without one."""
    described = [{"type": "function", "function": {"name": t.name, "parameters": bound_schema(t.parameters)}} for t in tools]
    tag: dict[str, Any] | None = fmt.structural_tag(described)
    return tag


def tool_call_schema(tools: list[Tool]) -> dict[str, Any]:
    """JSON schema of `{"name": <tool>, "arguments": <its parameters>}` over the given tools."""
    variants = [
        {"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
         "required": ["name", "arguments"], "additionalProperties": False}
        for t in tools
    ]
    return bound_schema(variants[0] if len(variants) == 1 else {"anyOf": variants})


MAX_STRING_CHARS = 64
MAX_ARRAY_ITEMS = 16
MAX_INTEGER = 10**9


def bound_schema(node: Any) -> Any:
    """Give unbounded strings/arrays a maximum length (and integers a range), so a grammar-constrained output always
    closes within a few hundred tokens (a small model can otherwise ramble inside a string)."""
    if isinstance(node, list):
        return [bound_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: bound_schema(v) for k, v in node.items()}
    if out.get("type") == "string" and "maxLength" not in out and "enum" not in out:
        out["maxLength"] = MAX_STRING_CHARS
    if out.get("type") == "array" and "maxItems" not in out:
        out["maxItems"] = MAX_ARRAY_ITEMS
    if out.get("type") == "integer" and "maximum" not in out and "exclusiveMaximum" not in out:
        out["maximum"] = MAX_INTEGER  # without it a sampled integer can run on digit after digit
        out.setdefault("minimum", -MAX_INTEGER)
    return out


def json_schema_of(schema: Any) -> dict[str, Any] | None:
    """The bounded JSON schema of an LLM call's `schema` (a msgspec Struct type or a JSON schema dict; None: none)."""
    if schema is None:
        return None
    if isinstance(schema, dict):
        return bound_schema(schema)
    if isinstance(schema, type) and issubclass(schema, msgspec.Struct):
        from agentrt.api import _schema_of

        return bound_schema(_schema_of(schema))
    raise SchemaError(f"schema must be a msgspec Struct type or a JSON schema dict, got {schema!r}")


def parse_json_output(gen: Generation, schema: Any) -> Any:
    """Decode a schema-constrained generation (into the Struct type when one was given)."""
    if isinstance(schema, type) and issubclass(schema, msgspec.Struct):
        return msgspec.json.decode(gen.text, type=schema)
    return json.loads(gen.text)
