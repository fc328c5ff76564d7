"""agentrt's embedded inference engine: paged KV, radix prefix cache, continuous batching."""

from engine.config import EngineConfig
from engine.errors import EngineError, InvalidRequestError, ModelLoadError, OutOfKVCacheError
from engine.llm import LLM
from engine.sequence import FinishReason, RequestOutput, SamplingParams, Usage

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
