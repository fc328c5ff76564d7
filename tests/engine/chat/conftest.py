"""Real tokenizer fixtures (fetched by the set-up with npm). A missing fixture FAILS the test with
the command that fetches it: these tests must not pass silently in CI without the real templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.chat.fixtures import FixtureMissingError, tokenizer_dir


def real_tokenizer(name: str) -> Path:
    try:
        return tokenizer_dir(name)
    except FixtureMissingError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def qwen3_dir() -> Path:
    return real_tokenizer("qwen3")


@pytest.fixture(scope="session")
def deepseek_dir() -> Path:
    return real_tokenizer("deepseek_v3")


@pytest.fixture(scope="session")
def gptoss_dir() -> Path:
    return real_tokenizer("gptoss")
