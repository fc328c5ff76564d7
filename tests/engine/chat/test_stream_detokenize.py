"""Streamed text is decoded incrementally (engine.llm._StreamText): at every step it is a prefix of
the whole output's decode (the reference), and it catches up with it whenever the output does not end
inside a character, for the shipped tokenizer and the real Qwen3, DeepSeek-V3 and gpt-oss ones."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from engine.config import DEFAULT_MODEL_DIR
from engine.llm import _StreamText

TEXT = ("Your booking HAT123 is confirmed: 2 seats, $1,234.50 total. 東京から大阪へ — ça coûte 12 €; "
        "señor Müller 🙂✈️ {\"id\": \"mia_li_1000\", \"ok\": true}\n\tnext line ünïcödé 한국어 😀👍🏽 ")


@pytest.mark.parametrize("name", ["default", "qwen3", "deepseek_v3", "gptoss"])
def test_incremental_stream_text_is_a_prefix_of_the_full_decode_and_catches_up(name: str, request: pytest.FixtureRequest) -> None:
    path = Path(DEFAULT_MODEL_DIR) if name == "default" else request.getfixturevalue(f"{name.split('_')[0]}_dir")
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))

    def decode(ids: list[int]) -> str:
        return str(tok.decode(list(ids), skip_special_tokens=False))

    rng = random.Random(0)
    base = tok.encode(TEXT * 3, add_special_tokens=False).ids
    # the text itself, and token soups that split characters across tokens anywhere
    outputs = [base] + [[rng.choice(base) for _ in range(120)] for _ in range(3)] + [[rng.randrange(tok.get_vocab_size()) for _ in range(80)]]
    for ids in outputs:
        state, n = _StreamText(), 0
        while n < len(ids):
            n = min(len(ids), n + rng.randint(1, 5))  # a step's tokens (speculation: several)
            text = state.advance(decode, ids[:n])
            full = decode(ids[:n])
            assert full.startswith(text), (name, n)
            if not full.endswith("\ufffd"):
                assert text == full, (name, n)  # nothing withheld but an incomplete last character
