"""The runtime's vocabulary. Wire-visible types are msgspec Structs; live task state is a dataclass."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec


class TaskKind(enum.StrEnum):
    LLM = "llm"
    TOOL = "tool"
    AGENT = "agent"
    IO = "io"


class TaskState(enum.StrEnum):
    PENDING = "pending"  # created, waiting for its pool
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FailurePolicy(enum.StrEnum):
    CANCEL_SIBLINGS = "cancel_siblings"  # a failing task fails its job and cancels everything else
    CONTINUE = "continue"  # failures are returned to the awaiting agent; siblings keep running


class Pool(enum.StrEnum):
    GPU = "gpu"
    CPU = "cpu"
    STORAGE = "storage"
    NONE = "none"  # agents: pure coordination, no resource held


class Usage(msgspec.Struct, kw_only=True, gc=False):
    """Resource use of a task (or, summed, of a job). Numbers only, so never part of a reference
    cycle: `gc=False` keeps one object per task out of the garbage collector's passes."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefill_tokens_computed: int = 0
    generated_tokens: int = 0
    device_seconds: float = 0.0
    cpu_seconds: float = 0.0
    io_bytes: int = 0
    kv_byte_seconds: float = 0.0  # KV cache bytes held x seconds (device tier)
    kv_restored_bytes_host: int = 0  # KV moved host -> device for this work's prefixes
    kv_restored_bytes_disk: int = 0  # KV moved disk -> device
    spec_proposed_tokens: int = 0  # speculative draft tokens proposed / accepted
    spec_accepted_tokens: int = 0
    recomputed_tokens: int = 0  # prompt tokens computed again after the engine preempted the call
    cost_usd: float = 0.0

    def add(self, other: Usage) -> None:
        """Sum `other` into this usage, field by field (spelled out: it runs for every task and
        every ancestor context, and attribute access by name costs 5x more)."""
        self.prompt_tokens += other.prompt_tokens
        self.cached_tokens += other.cached_tokens
        self.prefill_tokens_computed += other.prefill_tokens_computed
        self.generated_tokens += other.generated_tokens
        self.device_seconds += other.device_seconds
        self.cpu_seconds += other.cpu_seconds
        self.io_bytes += other.io_bytes
        self.kv_byte_seconds += other.kv_byte_seconds
        self.kv_restored_bytes_host += other.kv_restored_bytes_host
        self.kv_restored_bytes_disk += other.kv_restored_bytes_disk
        self.spec_proposed_tokens += other.spec_proposed_tokens
        self.spec_accepted_tokens += other.spec_accepted_tokens
        self.recomputed_tokens += other.recomputed_tokens
        self.cost_usd += other.cost_usd


class ToolCall(msgspec.Struct, frozen=True):
    id: str
    name: str
    arguments: dict[str, Any]


class HeldResult(msgspec.Struct, frozen=True, tag=True):
    """A tool result kept where its tool ran (Ray's object store), not in the driver. Passed as an
    argument to another tool it goes to that tool's worker straight from the store (the tool gets
    the value); `ctx.resolve` fetches it into the driver. Journaled as this handle, not the value."""

    object_id: str  # the store's id for it (a Ray ObjectRef's hex)
    nbytes: int  # size of its JSON encoding
    tool: str  # the tool that returned it


class RetryPolicy(msgspec.Struct, frozen=True):
    """`max_attempts` total tries; `backoff` seconds before retry n is backoff * 2**(n-1)."""

    max_attempts: int = 1
    backoff: float = 0.0
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be None or > 0, got {self.timeout}")


class Generation(msgspec.Struct):
    """What `Context.generate` returns."""

    text: str
    token_ids: list[int]
    tool_calls: list[ToolCall]
    finish_reason: str
    usage: Usage
    tool_call_errors: list[str] = []  # malformed calls / unknown tool names, to report to the model


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    graph: str
    inputs: dict[str, Any] = {}
    priority: int = 0
    job_id: str = ""
    idempotency_key: str | None = None
    thread_id: str | None = None  # continue this conversation: the root context's session is the thread's


@dataclass(slots=True, eq=False)
class Task:
    """One node of a job's DAG."""

    id: str
    job_id: str
    name: str
    kind: TaskKind
    pool: Pool
    units: int = 1
    est_tokens: int = 0
    parent: str | None = None
    key: str = ""  # its position in the job, for replay (agentrt.durable)
    deps: tuple[str, ...] = ()
    state: TaskState = TaskState.PENDING
    attempts: int = 0
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    created: float = field(default_factory=time.perf_counter)
    started: float | None = None
    finished: float | None = None

    @property
    def duration(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.perf_counter()) - self.started


class JobResult(msgspec.Struct, kw_only=True):
    job_id: str
    graph: str
    status: str  # succeeded | failed | cancelled | interrupted
    output: Any = None
    error: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    seconds: float = 0.0
    interrupt: Any = None  # the payload of `ctx.interrupt(payload)` when status is "interrupted"
