"""Task-level durable execution: the record of a job's finished tasks, replayed after a restart.

Every task of a job has a *key*, its position in the job: the key of the context that created it,
then its sequence number in that context (`/3/1` is the second task of the agent started as the
root's fourth task). A graph that runs the same code on the same inputs creates the same keys in the
same order (concurrent calls are numbered as they are created), so when a job runs again after a
crash, each finished task's recorded result is returned at once instead of running it again: a tool
call that completed never runs twice. Each record also holds the task's *fingerprint* (its kind,
name and a digest of its arguments); a replay that asks for another fingerprint at a recorded key
raises NonDeterminismError. An interrupt is a record without a value until the job is resumed.

Values are stored as msgpack (tuples come back as lists, Structs as dicts unless a type is given).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Protocol

import msgspec

from agentrt.errors import NonDeterminismError

logger = logging.getLogger(__name__)

Records = dict[str, tuple[str, bytes | None]]  # key -> (fingerprint, encoded value; None: a pending interrupt)
MISSING = object()
INTERRUPT = "interrupt"


class TaskStore(Protocol):
    """Where task records live: the server's Journal, or MemoryStore for an in-process Runtime."""

    def load_tasks(self, job_id: str) -> Records: ...

    def save_task(self, job_id: str, key: str, fingerprint: str, value: bytes | None) -> None: ...

    def resolve_interrupt(self, job_id: str, value: bytes) -> bool: ...

    def forget_tasks(self, job_id: str) -> None: ...

    def load_thread(self, thread_id: str) -> bytes | None: ...

    def save_thread(self, thread_id: str, state: bytes) -> None: ...


class MemoryStore:
    """Task records in memory: replay and interrupts within one process."""

    def __init__(self) -> None:
        self.jobs: dict[str, Records] = {}
        self.threads: dict[str, bytes] = {}

    def load_thread(self, thread_id: str) -> bytes | None:
        return self.threads.get(thread_id)

    def save_thread(self, thread_id: str, state: bytes) -> None:
        self.threads[thread_id] = state

    def load_tasks(self, job_id: str) -> Records:
        return dict(self.jobs.get(job_id, {}))

    def save_task(self, job_id: str, key: str, fingerprint: str, value: bytes | None) -> None:
        self.jobs.setdefault(job_id, {})[key] = (fingerprint, value)

    def resolve_interrupt(self, job_id: str, value: bytes) -> bool:
        records = self.jobs.get(job_id, {})
        pending = [k for k, (_, v) in records.items() if v is None]
        for key in pending:
            records[key] = (records[key][0], value)
        return bool(pending)

    def forget_tasks(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)


def fingerprint(kind: str, name: str, payload: Any = None) -> str:
    """`kind:name` plus a short digest of `payload` (JSON-encoded; omitted when it does not encode)."""
    base = f"{kind}:{name}"
    if payload is None:
        return base
    try:
        data = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
    except (TypeError, msgspec.EncodeError):
        return base
    return f"{base}:{hashlib.sha256(data).hexdigest()[:16]}"


class ThreadState(msgspec.Struct, frozen=True):
    """A thread's conversation between jobs: exactly the session's token ids, messages, the text the
    ids encode and the tool list the chat template renders up front."""

    token_ids: list[int]
    messages: list[dict[str, Any]]
    text: str = ""
    tools: list[dict[str, Any]] | None = None


def load_thread(store: TaskStore, thread_id: str) -> ThreadState | None:
    data = store.load_thread(thread_id)
    return None if data is None else msgspec.msgpack.decode(data, type=ThreadState)


def save_thread(store: TaskStore, thread_id: str, token_ids: list[int], messages: list[dict[str, Any]],
                text: str = "", tools: list[dict[str, Any]] | None = None) -> None:
    store.save_thread(thread_id, msgspec.msgpack.encode(ThreadState(token_ids, messages, text, tools)))


class Replay:
    """One run of one job: looks up recorded results and records new ones."""

    def __init__(self, store: TaskStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id
        self.records = store.load_tasks(job_id)
        self.replayed = 0

    def lookup(self, key: str, fp: str, type: Any = Any) -> Any:
        """The recorded value at `key` (decoded as `type`), or MISSING. Raises NonDeterminismError
        if the record there is of another task."""
        rec = self.records.get(key)
        if rec is None:
            return MISSING
        if rec[0] != fp:
            raise NonDeterminismError(key, rec[0], fp)
        if rec[1] is None:
            return MISSING
        self.replayed += 1
        return msgspec.msgpack.decode(rec[1], type=type)

    def record(self, key: str, fp: str, value: Any) -> None:
        """Store a finished task's result (one that msgpack cannot encode is not recorded: it runs again on replay)."""
        try:
            data = msgspec.msgpack.encode(value)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            logger.debug("job %s: the result of task %s is not recorded (%s)", self.job_id, key, exc)
            return
        self.records[key] = (fp, data)
        self.store.save_task(self.job_id, key, fp, data)

    def suspend(self, key: str) -> None:
        """Record a pending interrupt at `key`."""
        self.records[key] = (INTERRUPT, None)
        self.store.save_task(self.job_id, key, INTERRUPT, None)
