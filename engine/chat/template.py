"""A model's own chat template (jinja, from tokenizer_config.json) rendered the way transformers'
`apply_chat_template` renders it: an immutable sandbox, `trim_blocks`/`lstrip_blocks`, loop controls,
a `tojson` that does not HTML-escape, `raise_exception`, `strftime_now`, the tokenizer's special
tokens as variables, messages with None-valued keys dropped and reasoning aliased under the names
templates read (`reasoning_content`, `thinking`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.errors import InvalidRequestError, ModelLoadError

Message = dict[str, Any]
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplate:
    """One jinja chat template and the special tokens it may reference.

    `render` raises InvalidRequestError when the template rejects the conversation
    (`raise_exception`) or fails on it.
    """

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None) -> None:
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self._compiled = _compile(source)

    @classmethod
    def from_model_dir(cls, path: str | Path) -> ChatTemplate | None:
        """The template in `path`'s tokenizer_config.json (or chat_template.jinja); None when absent."""
        config = read_tokenizer_config(path)
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: the "default" one
            source = next((t["template"] for t in source if t.get("name") == "default"), None)
        jinja_file = Path(path) / "chat_template.jinja"
        if source is None and jinja_file.exists():
            source = jinja_file.read_text()
        if source is None:
            return None
        return cls(source, special_tokens_of(config))

    def render(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None, *,
               add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text for `messages` (OpenAI format) and `tools` (OpenAI function schemas)."""
        import jinja2

        chat = [_prepare_message(m) for m in messages]
        variables = {**self.special_tokens, **_plain(kwargs)}
        try:
            return str(self._compiled.render(messages=chat, tools=_plain(list(tools)) if tools is not None else None,
                                             documents=None, add_generation_prompt=add_generation_prompt, **variables))
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"the chat template rejected the conversation: {exc}") from exc


def read_tokenizer_config(path: str | Path) -> dict[str, Any]:
    file = Path(path) / "tokenizer_config.json"
    if not file.exists():
        return {}
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{file} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def special_tokens_of(config: Mapping[str, Any]) -> dict[str, str]:
    """`bos_token`, `eos_token`, ... as strings (an AddedToken dict gives its `content`)."""
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def _prepare_message(message: Any) -> Message:
    if not isinstance(message, Mapping):
        raise InvalidRequestError(f"a chat message is a dict with a 'role', got {message!r}")
    out = {k: v for k, v in _plain(dict(message)).items() if v is not None}
    reasoning = next((out[k] for k in REASONING_KEYS if out.get(k) is not None), None)
    if reasoning is not None:
        out = {"thinking": reasoning, **out, "reasoning_content": reasoning}
    return out


def _plain(value: Any) -> Any:
    """Rebuild template inputs from plain JSON types, so the sandbox never sees rich objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    for base in (str, int, float):  # subclasses (enums, numpy scalars) lose their extra methods
        if isinstance(value, base):
            return base(value) if base is not str else str.__str__(value)
    return f"<{type(value).__name__}>"


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _make_dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
    """`dict(...)` inside templates, without exposing the dict type itself."""
    return dict(*args, **kwargs)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (assistant-mask markers) renders its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    class Namespace(jinja2.utils.Namespace):
        def __setitem__(self, name: str, value: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set attribute {name!r}")
            super().__setitem__(name, value)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=Namespace,
                       dict=_make_dict)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ModelLoadError(f"the chat template does not compile: {exc}") from exc


def parse_tool_call_arguments(messages: Sequence[Message]) -> list[Message]:
    """Messages whose assistant tool calls carry `arguments` as objects, not JSON strings (as vLLM
    passes them to templates, most of which `tojson` the arguments). Raises InvalidRequestError
    for arguments that are not a JSON object."""
    out = []
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, Mapping) else None
        if calls:
            message = {**message, "tool_calls": [_call_with_object_arguments(c) for c in calls]}
        out.append(message)
    return out


def _call_with_object_arguments(call: Mapping[str, Any]) -> dict[str, Any]:
    fn = call.get("function", call)
    args = fn.get("arguments")
    if not isinstance(args, str):
        return dict(call)
    try:
        parsed = json.loads(args) if args.strip() else {}
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"tool call arguments are not valid JSON: {args[:80]!r}") from exc
    if not isinstance(parsed, dict):
        raise InvalidRequestError(f"tool call arguments must be a JSON object, got {args[:80]!r}")
    fn = {**fn, "arguments": parsed}
    return {**call, "function": fn} if "function" in call else fn
