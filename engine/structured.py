"""Structured output: xgrammar token masks that force a request's output to follow a grammar.

A request asks for JSON matching a schema (`SamplingParams.json_schema`), for any grammar xgrammar
compiles (`SamplingParams.grammar`, EBNF) or for an xgrammar structural tag
(`SamplingParams.structural_tag`, how chat formats constrain tool calls). Each such request carries
one `GrammarMatcher`; before sampling, the tokens the grammar forbids get -inf logits; after
sampling, the matcher advances.
Grammars compile once per schema per engine (cached).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from engine.errors import InvalidRequestError

NUL_BYTE_LEVEL = chr(256)  # byte 0x00 in the byte-level (GPT-2) alphabet


class GrammarFactory:
    """Compiles and caches grammars for one tokenizer; hands out per-request matchers."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self._stop_token_ids = list(stop_token_ids)
        self.vocab_size = vocab_size
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self._encoded = [""] * vocab_size
        for token, idx in vocab.items():
            if idx < vocab_size:
                self._encoded[idx] = token
        # Special tokens enter xgrammar as empty strings, which it never lets a grammar emit: a
        # special `</tool_call>` (or `<|end|>`) cannot appear inside a JSON string it constrains.
        self._special = {idx: added.content for idx, added in tokenizer.get_added_tokens_decoder().items()
                         if added.special and idx < vocab_size}
        for idx in self._special:
            self._encoded[idx] = ""
        self._compilers: dict[frozenset[int], Any] = {}
        self._cache: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _compiler(self, markers: frozenset[int] = frozenset()) -> Any:
        """The compiler whose vocabulary shows the special tokens `markers` (ids) and no others, so a
        structural tag can match them token by token. Each shows as a NUL byte and its text: no text
        rule matches a NUL (JSON strings exclude control characters), so a marker token can appear
        only where a tag's token format puts it, never inside a JSON string, and a schema's
        `maxLength` still holds (xgrammar drops it from strings that carry `excludes`)."""
        import xgrammar as xgr

        with self._lock:
            compiler = self._compilers.get(markers)
        if compiler is None:
            encoded = list(self._encoded)
            for idx in markers:
                encoded[idx] = NUL_BYTE_LEVEL + self._special[idx]
            info = xgr.TokenizerInfo(encoded, xgr.VocabType.BYTE_LEVEL, vocab_size=self.vocab_size,
                                     stop_token_ids=self._stop_token_ids)
            compiler = xgr.GrammarCompiler(info)
            with self._lock:
                self._compilers[markers] = compiler
        return compiler

    def compile(self, json_schema: str | dict[str, Any] | None, grammar: str | None,
                structural_tag: str | dict[str, Any] | None = None) -> Any:
        """Compile (or fetch) a grammar. Raises InvalidRequestError for an invalid schema, grammar or
        structural tag (a marker token that is not a special token of this tokenizer included)."""
        if json_schema is not None:
            # Never sort_keys: xgrammar generates properties in the order the schema declares them.
            key = ("json", json_schema if isinstance(json_schema, str) else json.dumps(json_schema))
        elif structural_tag is not None:
            key = ("structural_tag", structural_tag if isinstance(structural_tag, str) else json.dumps(structural_tag))
        else:
            key = ("ebnf", str(grammar))
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        try:
            if key[0] == "json":
                compiled = self._compiler().compile_json_schema(key[1], any_whitespace=False, separators=(", ", ": "))
            elif key[0] == "structural_tag":
                tag, markers = self._bind_markers(json.loads(key[1]))
                compiled = self._compiler(markers).compile_structural_tag(json.dumps(tag))
            else:
                compiled = self._compiler().compile_grammar(key[1])
        except InvalidRequestError:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subtypes
            raise InvalidRequestError(f"cannot compile {key[0]} grammar: {exc}") from exc
        with self._lock:
            self._cache[key] = compiled
        return compiled

    def matcher(self, json_schema: str | dict[str, Any] | None, grammar: str | None,
                structural_tag: str | dict[str, Any] | None = None) -> Any:
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compile(json_schema, grammar, structural_tag))

    def _bind_markers(self, node: Any) -> tuple[Any, frozenset[int]]:
        """`node` (a structural tag) with its token formats' special-token names replaced by ids,
        and those ids: `{"type": "token", "token": "<|call|>"}`, `exclude_tokens`, `trigger_tokens`."""
        found: set[int] = set()

        def bind(value: Any, key: str = "") -> Any:
            if key == "json_schema":  # a tool's schema: its keys are property names, not formats
                return value
            if isinstance(value, dict):
                return {k: bind(v, k) for k, v in value.items()}
            if isinstance(value, list):
                return [bind(v, key) for v in value]
            if key in ("token", "exclude_tokens", "trigger_tokens") and isinstance(value, str | int):
                idx = self._tokenizer.token_to_id(value) if isinstance(value, str) else value
                if idx is None or not 0 <= idx < self.vocab_size:
                    raise InvalidRequestError(f"structural tag marker {value!r} is not a token of this tokenizer")
                if idx in self._special:
                    found.add(idx)
                return idx
            return value

        return bind(node), frozenset(found)


def mask_logits(logits: torch.Tensor, matcher: Any, vocab_size: int) -> None:
    """Set to -inf, in place, every logit of `logits` [vocab] that the matcher forbids next."""
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(1, vocab_size)
    matcher.fill_next_token_bitmask(bitmask)
    row = logits.view(1, -1)
    if row.device.type != "cpu":
        bitmask = bitmask.to(row.device)
    xgr.apply_token_bitmask_inplace(row, bitmask, vocab_size=vocab_size)
