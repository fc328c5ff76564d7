"""Which EngineClient a command uses: a remote OpenAI-compatible endpoint when a URL is given
(`--llm-url` or AGENTRT_LLM_URL), else the embedded engine over a local model."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_engine(model: str | Path | None = None, llm_url: str | None = None, llm_model: str | None = None) -> Any:
    """The EngineClient for the CLI's `run`/`serve`. With a URL, `model` (if given) is the local
    directory whose tokenizer and chat template the remote model shares."""
    from agentrt.backends.openai_compat import OpenAIEngine, OpenAIEngineConfig

    config = OpenAIEngineConfig.from_env(llm_url, llm_model, tokenizer=model)
    if config is not None:
        return OpenAIEngine(config)
    from agentrt.engine_client import EmbeddedEngine
    from engine import LLM

    return EmbeddedEngine(LLM(model))


def close_engine(engine: Any) -> None:
    """Stop the embedded engine's driver thread (a remote engine's client closes with its event loop)."""
    if hasattr(engine, "llm"):
        engine.llm.close()


def chat_format_of(engine: Any) -> Any:
    """The chat format (engine.chat.ChatFormat) of the model behind an EngineClient."""
    fmt = getattr(engine, "chat_format", None)
    if fmt is None and hasattr(engine, "llm"):
        fmt = engine.llm.chat_format
    if fmt is None:
        raise ValueError(f"{type(engine).__name__} exposes no chat format (a model with a chat_template is needed)")
    return fmt
