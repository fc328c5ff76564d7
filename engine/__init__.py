"""agentrt's embedded inference engine: paged KV, radix prefix cache, continuous batching.

The names below that need torch (everything but the errors) are imported on first use, so that
`import engine.tokenizer` (and agentrt's client side) stays light."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError, InvalidRequestError, ModelLoadError, OutOfKVCacheError

if TYPE_CHECKING:
    from engine.config import EngineConfig
    from engine.llm import LLM
    from engine.sequence import FinishReason, RequestOutput, SamplingParams, Usage

_LAZY = {"LLM": "engine.llm", "EngineConfig": "engine.config", "FinishReason": "engine.sequence",
         "RequestOutput": "engine.sequence", "SamplingParams": "engine.sequence", "Usage": "engine.sequence"}

__all__ = [
    "LLM",
    "EngineConfig",
    "EngineError",
    "FinishReason",
    "InvalidRequestError",
    "ModelLoadError",
    "OutOfKVCacheError",
    "RequestOutput",
    "SamplingParams",
    "Usage",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
