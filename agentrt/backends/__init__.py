"""EngineClient implementations beyond the embedded engine: any OpenAI-compatible endpoint."""

from agentrt.backends.openai_compat import OpenAIEngine, OpenAIEngineConfig, RemoteEngineError
from agentrt.backends.select import close_engine, make_engine

__all__ = ["OpenAIEngine", "OpenAIEngineConfig", "RemoteEngineError", "close_engine", "make_engine"]
