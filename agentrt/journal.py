"""The durable job journal: SQLite in WAL mode.

A job is written (committed) before its Accepted reply is sent and its result before its Result
is sent. WAL with synchronous=NORMAL makes a commit durable against the process being killed
(SIGKILL), which is the failure this journal guards; an OS crash may lose the last commits.
Writes are grouped: the server commits every message it drained from its socket in one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    client BLOB,
    graph TEXT NOT NULL,
    inputs BLOB NOT NULL,
    priority INTEGER NOT NULL,
    traceparent TEXT,
    state TEXT NOT NULL,
    result BLOB,
    created REAL NOT NULL,
    updated REAL NOT NULL
)
"""


@dataclass(slots=True)
class JobRecord:
    job_id: str
    client: bytes
    graph: str
    inputs: dict[str, Any]
    priority: int
    traceparent: str | None
    state: str
    result: dict[str, Any] | None


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        self._lock = threading.Lock()

    def accept_many(self, items: list[tuple[bytes, Any]]) -> list[tuple[str, bool]]:
        """Record submissions (client identity, Submit) in one transaction; returns (job_id,
        duplicate) per item. A repeated idempotency key returns the first job's id."""
        out = []
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for client, sub in items:
                    out.append(self._accept_one(client, sub, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def _accept_one(self, client: bytes, sub: Any, now: float) -> tuple[str, bool]:
        if sub.idempotency_key is not None:
            row = self._db.execute("SELECT job_id FROM jobs WHERE idempotency_key = ?", (sub.idempotency_key,)).fetchone()
            if row is not None:
                return row[0], True
        job_id = uuid.uuid4().hex[:16]
        self._db.execute(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, 'accepted', NULL, ?, ?)",
            (job_id, sub.idempotency_key, client, sub.graph, msgspec.msgpack.encode(sub.inputs), sub.priority, sub.traceparent, now, now),
        )
        return job_id, False

    def finish_many(self, results: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Store (job_id, state, result map) rows in one transaction."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE jobs SET state = ?, result = ?, updated = ? WHERE job_id = ?",
                                 [(state, msgspec.msgpack.encode(res), now, job_id) for job_id, state, res in results])
            self._db.execute("COMMIT")

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT job_id, client, graph, inputs, priority, traceparent, state, result FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def unfinished(self) -> list[JobRecord]:
        """Jobs accepted (or running) without a stored result: to be run again at startup."""
        with self._lock:
            rows = self._db.execute("SELECT job_id, client, graph, inputs, priority, traceparent, state, result FROM jobs WHERE result IS NULL ORDER BY created").fetchall()
        return [_record(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row: tuple[Any, ...]) -> JobRecord:
    return JobRecord(row[0], row[1] or b"", row[2], msgspec.msgpack.decode(row[3]), row[4], row[5], row[6],
                     None if row[7] is None else msgspec.msgpack.decode(row[7]))
