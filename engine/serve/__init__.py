"""The OpenAI-compatible HTTP server for the engine (`agentrt llm serve`)."""

from engine.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
