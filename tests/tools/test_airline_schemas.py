"""The airline tools describe themselves exactly as the recorded tau-bench runs did."""

from __future__ import annotations

import pytest

from engine.config import data_dir
from engine.tokenizer import render_chat
from engine.train.data import airline_tools
from tools.airline import TOOLS

HAS_DATA = (data_dir() / "tau-bench-airline" / "tools.json").exists()


@pytest.mark.skipif(not HAS_DATA, reason="needs ../shared/data/tau-bench-airline")
def test_the_system_turn_the_model_reads_equals_the_recorded_runs_system_turn() -> None:
    system = [{"role": "system", "content": "policy"}]
    assert render_chat(system, [t.schema() for t in TOOLS]) == render_chat(system, airline_tools())


def test_literal_arguments_are_typed_strings_with_their_choices() -> None:
    book = next(t for t in TOOLS if t.name == "book_reservation").schema()["function"]["parameters"]["properties"]
    assert book["cabin"] == {"type": "string", "enum": ["basic_economy", "business", "economy"]}
