"""Agent-callable tools, one module per tool family (loaded by path by `agentrt serve --tools tools/`)."""
