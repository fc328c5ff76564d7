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


def sampling_params(req: _Request, default_max_tokens: int, json_schema: dict[str, Any] | None = None) -> SamplingParams:
    """Raises InvalidRequestError for values the engine does not accept (n > 1 included)."""
    if req.n != 1:
        raise InvalidRequestError(f"n must be 1, got {req.n}")
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
