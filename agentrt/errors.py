"""agentrt's typed errors, raised at the boundary with the offending value named."""

from __future__ import annotations


class AgentrtError(Exception):
    """Base class of every error agentrt raises on purpose."""


class GraphError(AgentrtError):
    """A graph, agent or tool definition is invalid (or a DAG edit would break the DAG)."""


class UnknownGraphError(AgentrtError, KeyError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown graph {name!r}; registered graphs: {', '.join(sorted(known)) or '(none)'}")
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownToolError(AgentrtError, KeyError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown tool {name!r}; known tools: {', '.join(sorted(known)) or '(none)'}")
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


class SchemaError(AgentrtError, ValueError):
    """Arguments or structured output do not match their schema."""


class ToolError(AgentrtError):
    """A tool raised, timed out, or returned something that is not JSON-serialisable."""

    def __init__(self, tool: str, message: str) -> None:
        super().__init__(f"tool {tool!r}: {message}")
        self.tool = tool


class HeldResultError(AgentrtError):
    """A held tool result (agentrt.types.HeldResult) that this runtime cannot reach: released, made
    by another driver, or given to an executor that keeps no results outside the driver."""


class TaskTimeoutError(AgentrtError, TimeoutError):
    """A task ran past its timeout."""


class TaskFailedError(AgentrtError):
    """A task failed after its retries; names the task and carries the cause."""

    def __init__(self, task: str, cause: BaseException) -> None:
        super().__init__(f"task {task!r} failed: {type(cause).__name__}: {cause}")
        self.task = task
        self.cause = cause


class JobCancelledError(AgentrtError):
    """The job was cancelled."""


class ClientTimeout(AgentrtError, TimeoutError):
    """A client waited longer than it was told to (e.g. for a job's result)."""


class ServerUnavailableError(ClientTimeout):
    """No server answered within the client's `timeout` (it is down, unreachable, or refused the
    CURVE handshake)."""


class JournalError(AgentrtError):
    """The job journal cannot be used; the message names the file."""


class JournalLockedError(JournalError):
    """Another server process holds the journal's lock; the message names its pid."""


class JournalCorruptError(JournalError):
    """The journal file is truncated, not a database, or fails SQLite's integrity check."""


class LLMTimeoutError(AgentrtError):
    """An LLM call ran past the engine client's timeout and was aborted."""


class NonDeterminismError(AgentrtError):
    """On replay, a graph asked for a different task than the journal recorded at the same position
    (the graph's code or inputs changed, or it branches on something not recorded)."""

    def __init__(self, key: str, recorded: str, now: str) -> None:
        super().__init__(f"non-deterministic replay at task {key}: the journal recorded {recorded!r} there, "
                         f"the graph now asks for {now!r}; a graph must take the same path when replayed")
        self.key, self.recorded, self.now = key, recorded, now


class JobInterrupted(AgentrtError):
    """Raised by `ctx.interrupt(payload)` to suspend the job until it is resumed with an input.
    Let it propagate (re-raise it if you catch Exception around an interrupt)."""

    def __init__(self, key: str, payload: object) -> None:
        super().__init__(f"job interrupted at {key}, waiting for input")
        self.key, self.payload = key, payload


class NotInterruptedError(AgentrtError):
    """`resume` was asked for a job that is not waiting at an interrupt."""
