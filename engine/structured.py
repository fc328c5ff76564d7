"""Structured output: xgrammar token masks that force a request's output to follow a grammar.

A request asks for JSON matching a schema (`SamplingParams.json_schema`) or for any grammar xgrammar
compiles (`SamplingParams.grammar`, EBNF). Each such request carries one `GrammarMatcher`; before
sampling, the tokens the grammar forbids get -inf logits; after sampling, the matcher advances.
Grammars compile once per schema per engine (cached).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from engine.errors import InvalidRequestError


class GrammarFactory:
    """Compiles and caches grammars for one tokenizer; hands out per-request matchers."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        import xgrammar as xgr  # imported lazily: engines without structured output do not need it

        vocab = tokenizer.get_vocab(with_added_tokens=True)
        encoded = [""] * vocab_size
        for token, idx in vocab.items():
            if idx < vocab_size:
                encoded[idx] = token
        # Special tokens enter xgrammar as empty strings, which it never lets a grammar emit: a
        # special `</tool_call>` (or `<|end|>`) cannot appear inside a JSON string it constrains.
        for idx, added in tokenizer.get_added_tokens_decoder().items():
            if added.special and idx < vocab_size:
                encoded[idx] = ""
        info = xgr.TokenizerInfo(
            encoded, xgr.VocabType.BYTE_LEVEL, vocab_size=vocab_size, stop_token_ids=stop_token_ids
        )
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info)
        self._cache: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def compile(self, json_schema: str | dict[str, Any] | None, grammar: str | None) -> Any:
        """Compile (or fetch) a grammar. Raises InvalidRequestError for an invalid schema/grammar."""
        if json_schema is not None:
            # Never sort_keys: xgrammar generates properties in the order the schema declares them.
            key = ("json", json_schema if isinstance(json_schema, str) else json.dumps(json_schema))
        else:
            key = ("ebnf", str(grammar))
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        try:
            compiled = (
                self._compiler.compile_json_schema(key[1], any_whitespace=False, separators=(", ", ": "))
                if key[0] == "json"
                else self._compiler.compile_grammar(key[1])
            )
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subtypes
            raise InvalidRequestError(f"cannot compile {key[0]} grammar: {exc}") from exc
        with self._lock:
            self._cache[key] = compiled
        return compiled

    def matcher(self, json_schema: str | dict[str, Any] | None, grammar: str | None) -> Any:
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compile(json_schema, grammar))


def mask_logits(logits: torch.Tensor, matcher: Any, vocab_size: int) -> None:
    """Set to -inf, in place, every logit of `logits` [vocab] that the matcher forbids next."""
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(1, vocab_size)
    matcher.fill_next_token_bitmask(bitmask)
    row = logits.view(1, -1)
    if row.device.type != "cpu":
        bitmask = bitmask.to(row.device)
    xgr.apply_token_bitmask_inplace(row, bitmask, vocab_size=vocab_size)
