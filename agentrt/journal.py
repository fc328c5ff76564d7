"""The durable job journal: SQLite in WAL mode, one server per file.

A job is written (committed) before its Accepted reply is sent and its result before its Result
is sent. WAL with synchronous=NORMAL makes a commit durable against the process being killed
(SIGKILL), which is the failure this journal guards; an OS crash may lose the last commits.
Writes are grouped: the server commits every message it drained from its socket in one transaction.

Opening a journal takes an exclusive lock (`flock` on FILE.lock, which holds the owner's pid), so
a second server on the same file refuses to start instead of re-running the same jobs; the kernel
drops the lock when its holder dies, even by SIGKILL. The file is checked at open: a 0-byte
journal (truncated) or one that fails SQLite's quick_check raises JournalCorruptError naming it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from agentrt.errors import JournalCorruptError, JournalLockedError

logger = logging.getLogger(__name__)

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
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    job_id TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    value BLOB,
    PRIMARY KEY (job_id, key)
);
CREATE TABLE IF NOT EXISTS threads (thread_id TEXT PRIMARY KEY, state BLOB NOT NULL, updated REAL NOT NULL);
"""
COLUMNS = "job_id, client, graph, inputs, priority, traceparent, state, result, thread_id"


@dataclass(slots=True)
class JobRecord:
    job_id: str
    client: str  # the owner's identity (see agentrt.identity)
    graph: str
    inputs: dict[str, Any]
    priority: int
    traceparent: str | None
    state: str
    result: bytes | None  # the encoded Result message, once finished
    thread_id: str | None = None  # the conversation it continues (JobSpec.thread_id)


class Journal:
    """Raises JournalLockedError if another process holds the file, JournalCorruptError if it is
    truncated or not a healthy agentrt journal."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd = _lock(self.path)
        try:
            self._db = _open(self.path)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._lock = threading.Lock()

    def accept_many(self, items: list[tuple[str, Any]]) -> list[tuple[str, bool]]:
        """Record submissions (owner identity, Submit) in one transaction; returns (job_id,
        duplicate) per item. An idempotency key repeated by the same owner returns the first job's id;
        keys are scoped per owner, so two clients never collide."""
        out = []
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for owner, sub in items:
                    out.append(self._accept_one(owner, sub, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def _accept_one(self, owner: str, sub: Any, now: float) -> tuple[str, bool]:
        key = None if sub.idempotency_key is None else f"{owner}\x1f{sub.idempotency_key}"
        if key is not None:
            row = self._db.execute("SELECT job_id FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
            if row is not None:
                return row[0], True
        job_id = uuid.uuid4().hex[:16]
        self._db.execute(
            "INSERT INTO jobs (job_id, idempotency_key, client, graph, inputs, priority, traceparent, state, result, created, updated, thread_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'accepted', NULL, ?, ?, ?)",
            (job_id, key, owner.encode(), sub.graph, msgspec.msgpack.encode(sub.inputs), sub.priority, sub.traceparent, now, now,
             getattr(sub, "thread_id", None)),
        )
        return job_id, False

    def finish_many(self, results: list[tuple[str, str, bytes]]) -> None:
        """Store (job_id, state, encoded Result) rows in one transaction; a finished job's task
        records go (an interrupted job keeps them, to be replayed when it is resumed)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("UPDATE jobs SET state = ?, result = ?, updated = ? WHERE job_id = ?",
                                     [(state, res, now, job_id) for job_id, state, res in results])
                self._db.executemany("DELETE FROM tasks WHERE job_id = ?", [(job_id,) for job_id, state, _ in results if state != "interrupted"])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # ---- task records (agentrt.durable.TaskStore) -------------------------------------------
    def load_tasks(self, job_id: str) -> dict[str, tuple[str, bytes | None]]:
        with self._lock:
            rows = self._db.execute("SELECT key, fingerprint, value FROM tasks WHERE job_id = ?", (job_id,)).fetchall()
        return {k: (fp, None if v is None else bytes(v)) for k, fp, v in rows}

    def save_task(self, job_id: str, key: str, fingerprint: str, value: bytes | None) -> None:
        """Record one finished task (committed at once: the task's side effects are done)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?)", (job_id, key, fingerprint, value))

    def resolve_interrupt(self, job_id: str, value: bytes) -> bool:
        """Give an interrupted job's pending interrupt its input and mark the job to run again
        (one transaction). False if the job is not waiting at an interrupt."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                cur = self._db.execute("UPDATE tasks SET value = ? WHERE job_id = ? AND value IS NULL", (value, job_id))
                if cur.rowcount == 0:
                    self._db.execute("ROLLBACK")
                    return False
                self._db.execute("UPDATE jobs SET state = 'accepted', result = NULL, updated = ? WHERE job_id = ?", (time.time(), job_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def load_thread(self, thread_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM threads WHERE thread_id = ?", (thread_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def save_thread(self, thread_id: str, state: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO threads VALUES (?, ?, ?)", (thread_id, state, time.time()))

    def forget_tasks(self, job_id: str) -> None:
        """Nothing to do: finish_many drops a finished job's records with its result, atomically."""

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def unfinished(self) -> list[JobRecord]:
        """Jobs accepted (or running) without a stored result: to be run again at startup. A row
        whose inputs cannot be decoded is logged and returned with empty inputs and state "corrupt"."""
        with self._lock:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM jobs WHERE result IS NULL ORDER BY created").fetchall()
        return [_record(r) for r in rows]

    def secret(self) -> bytes:
        """This journal's 32-byte server secret (made on first use): it signs client tokens, so
        tokens stay valid across restarts of a server on the same journal."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'token_secret'").fetchone()
            if row is not None:
                return bytes(row[0])
            value = secrets.token_bytes(32)
            self._db.execute("INSERT INTO meta VALUES ('token_secret', ?)", (value,))
            return value

    def close(self) -> None:
        with self._lock:
            if self._lock_fd < 0:
                return
            self._db.close()
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1


def _lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise JournalLockedError(f"journal {path} is in use by another server (pid {holder}, lock {lock_path}); "
                                 "stop that server or give this one another --journal") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _open(path: Path) -> sqlite3.Connection:
    wal = path.with_name(path.name + "-wal")
    if path.exists() and path.stat().st_size == 0 and (not wal.exists() or wal.stat().st_size == 0):
        raise JournalCorruptError(f"journal {path} is empty (0 bytes): it was truncated; move it away to start a new journal")
    db = None
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise JournalCorruptError(f"journal {path} fails SQLite's integrity check: {check and check[0]}")
        db.executescript(SCHEMA)
        if "thread_id" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:  # a journal from before threads
            db.execute("ALTER TABLE jobs ADD COLUMN thread_id TEXT")
        db.execute(f"SELECT {COLUMNS}, idempotency_key, created, updated FROM jobs LIMIT 0")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the main file holds the schema: 0 bytes now means truncated
    except BaseException as exc:
        if db is not None:
            db.close()
        if isinstance(exc, sqlite3.DatabaseError):
            raise JournalCorruptError(f"journal {path} is not a usable agentrt journal: {exc}") from exc
        raise
    return db


def _record(row: tuple[Any, ...]) -> JobRecord:
    owner = bytes(row[1] or b"").decode(errors="replace")
    try:
        inputs = msgspec.msgpack.decode(row[3])
        state = row[6]
    except msgspec.DecodeError:
        logger.error("journal row %s has unreadable inputs", row[0])
        inputs, state = {}, "corrupt"
    return JobRecord(row[0], owner, row[2], inputs, row[4], row[5], state, None if row[7] is None else bytes(row[7]), row[8])
