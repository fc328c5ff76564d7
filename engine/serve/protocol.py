"""OpenAI request bodies the server accepts (pydantic, as FastAPI validates them) and the mapping
of their sampling fields onto SamplingParams."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import InvalidRequestError
from engine.sequence import SamplingParams


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = 1
    # vLLM's extra parameters
    ignore_eos: bool = False  # generate max_tokens whatever the model's EOS
    stop_token_ids: list[int] = Field(default_factory=list)
    return_token_ids: bool = False  # choices carry the generated `token_ids`
    # vLLM's `structured_outputs`: one of `json` (a JSON schema), `grammar` (EBNF), `structural_tag`
    structured_outputs: dict[str, Any] | None = None


class ChatCompletionRequest(_Request):
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    max_completion_tokens: int | None = None
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)


class CompletionRequest(_Request):
    prompt: str | list[int]
    response_format: dict[str, Any] | None = None


# OpenAI fields the engine does not implement, with the value that asks for nothing: a request that
# sets one to anything else gets a 400 naming it rather than an answer that silently ignored it.
UNSUPPORTED_FIELDS: dict[str, Any] = {"logprobs": False, "top_logprobs": None, "logit_bias": None, "presence_penalty": 0,
                                      "frequency_penalty": 0, "best_of": 1, "echo": False, "suffix": None}
# Names `ChatFormat.render` binds itself; a chat_template_kwargs entry may not override them.
RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "tools", "add_generation_prompt"})
CONTENT_ROLES = frozenset({"system", "developer", "user", "tool"})  # roles whose content is required


def check_unsupported(req: _Request) -> None:
    """Raise InvalidRequestError for an OpenAI field set to a value this server would ignore."""
    extra = req.model_extra or {}
    for name, inert in UNSUPPORTED_FIELDS.items():
        value = extra.get(name, inert)
        if value != inert and not (inert is None and value in ({}, [])):
            raise InvalidRequestError(f"{name}={value!r} is not supported by this server (leave it unset)")


def check_chat_request(messages: list[dict[str, Any]], template_kwargs: dict[str, Any]) -> None:
    """Raise InvalidRequestError for a chat request the model cannot read: no messages, a message
    without a role, required content missing, a content part that is not text (the models served
    here read text only), or template kwargs that would collide with the arguments the server
    passes to `ChatFormat.render` itself (Python rejects those at the call, as a TypeError)."""
    if not messages:
        raise InvalidRequestError("messages must hold at least one message")
    clash = sorted(RESERVED_TEMPLATE_KWARGS & set(template_kwargs))
    if clash:
        raise InvalidRequestError(f"chat_template_kwargs may not set {clash}: the server sets them")
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if not isinstance(role, str):
            raise InvalidRequestError(f"messages[{i}] needs a string 'role', got {role!r}")
        content = msg.get("content")
        if content is None:
            if role in CONTENT_ROLES:
                raise InvalidRequestError(f"messages[{i}] ({role}) needs 'content'")
            continue
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise InvalidRequestError(f"messages[{i}].content must be a string or a list of parts, got {type(content).__name__}")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequestError(f"messages[{i}].content[{j}] of type {kind!r} is not supported: this model reads "
                                          "text parts ({'type': 'text', 'text': ...}) only")


def sampling_params(req: _Request, default_max_tokens: int, json_schema: dict[str, Any] | None = None) -> SamplingParams:
    """Raises InvalidRequestError for values the engine does not accept (n > 1 and the OpenAI fields
    it does not implement included)."""
    if req.n != 1:
        raise InvalidRequestError(f"n must be 1, got {req.n}")
    check_unsupported(req)
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens or default_max_tokens
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    grammars = _structured_outputs(req.structured_outputs)
    if json_schema is not None:
        grammars["json_schema"] = json_schema
    return SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, seed=req.seed,
                          max_tokens=max_tokens, stop=stop, ignore_eos=req.ignore_eos,
                          stop_token_ids=tuple(req.stop_token_ids), **grammars)


def _structured_outputs(spec: dict[str, Any] | None) -> dict[str, Any]:
    """SamplingParams fields for vLLM's `structured_outputs` (json, grammar or structural_tag)."""
    if not spec:
        return {}
    names = {"json": "json_schema", "grammar": "grammar", "structural_tag": "structural_tag"}
    unknown = sorted(k for k, v in spec.items() if k not in names and v is not None)
    if unknown:
        raise InvalidRequestError(f"structured_outputs supports json, grammar and structural_tag, got {unknown}")
    return {names[k]: v for k, v in spec.items() if v is not None}


def response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema a `response_format` asks for (json_object = any JSON object)."""
    kind: Literal["text", "json_object", "json_schema"] | None = (response_format or {}).get("type")
    if response_format is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequestError("response_format json_schema needs a 'json_schema': {'schema': {...}}")
        return schema
    raise InvalidRequestError(f"response_format type must be text, json_object or json_schema, got {kind!r}")
