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
