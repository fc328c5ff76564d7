"""agentrt: a runtime for agentic AI workloads (dataflow agent graphs over an embedded MoE engine)."""

from agentrt.api import Agent, Context, Graph, Registry, Tool, agent, graph, tool
from agentrt.backends import OpenAIEngine
from agentrt.client import AsyncClient, Client
from agentrt.cost import CostModel
from agentrt.engine_client import EmbeddedEngine, EngineClient
from agentrt.errors import (
    AgentrtError,
    GraphError,
    HeldResultError,
    JobCancelledError,
    SchemaError,
    TaskFailedError,
    TaskTimeoutError,
    ToolError,
    UnknownGraphError,
    UnknownToolError,
)
from agentrt.executor import Runtime
from agentrt.scheduler import PoolLimits, Scheduler
from agentrt.types import (
    FailurePolicy,
    Generation,
    HeldResult,
    JobResult,
    JobSpec,
    RetryPolicy,
    TaskKind,
    TaskState,
    Usage,
)

__all__ = [
    "Agent", "AgentrtError", "AsyncClient", "Client", "Context", "CostModel", "EmbeddedEngine", "EngineClient", "FailurePolicy",
    "Generation", "Graph", "GraphError", "HeldResult", "HeldResultError", "JobCancelledError", "JobResult", "JobSpec", "OpenAIEngine", "PoolLimits", "Registry",
    "RetryPolicy", "Runtime", "SchemaError", "Scheduler", "TaskFailedError", "TaskKind", "TaskState",
    "TaskTimeoutError", "Tool", "ToolError", "UnknownGraphError", "UnknownToolError", "Usage",
    "agent", "graph", "tool",
]
