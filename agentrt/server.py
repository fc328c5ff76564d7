"""`agentrt serve`: the job server (ZeroMQ ROUTER socket, msgspec messages, SQLite journal).

Each loop iteration drains every frame waiting on the socket, journals all new submissions in one
transaction (group commit), then replies. A malformed, oversized or unknown message gets an Error
reply (frames that cannot even be attributed are dropped) and the server keeps serving. Jobs run
on the Runtime; a finished job's result is journaled before its Result is sent. At startup, jobs
accepted but never finished are run again (at-least-once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import zmq
import zmq.asyncio
import zmq.auth

from agentrt import protocol as p
from agentrt.executor import Runtime
from agentrt.journal import JobRecord, Journal
from agentrt.types import JobSpec

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    journal: str | Path = "agentrt-journal.sqlite"
    max_message_bytes: int = 1 << 20
    max_inflight_per_client: int = 1000
    curve_secret_key: bytes | None = None  # z85 server secret key: enables CURVE
    curve_public_key: bytes | None = None
    curve_allowed_clients: str | Path | None = None  # folder of allowed client public-key certificates

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024 or self.max_inflight_per_client < 1:
            raise ValueError("max_message_bytes must be >= 1024 and max_inflight_per_client >= 1")
        if (self.curve_secret_key is None) != (self.curve_public_key is None):
            raise ValueError("CURVE needs both the server public and secret keys")


class Server:
    def __init__(self, runtime: Runtime, config: ServerConfig) -> None:
        self.runtime, self.config = runtime, config
        self.journal = Journal(config.journal)
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
        self.sock.setsockopt(zmq.LINGER, 0)
        self._auth: Any = None
        self.inflight: dict[bytes, int] = {}
        self.state: dict[str, str] = {}
        self.owner: dict[str, bytes] = {}
        self.follow: set[str] = set()
        self._results: list[tuple[str, str, dict[str, Any]]] = []
        self._result_ready = anyio.Event()
        self.address = ""

    def _setup_curve(self) -> None:
        cfg = self.config
        if cfg.curve_secret_key is None:
            return
        from zmq.auth.asyncio import AsyncioAuthenticator

        self._auth = AsyncioAuthenticator(self.ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(cfg.curve_allowed_clients) if cfg.curve_allowed_clients else zmq.auth.CURVE_ALLOW_ANY)
        self.sock.curve_secretkey = cfg.curve_secret_key
        self.sock.curve_publickey = cfg.curve_public_key
        self.sock.curve_server = True

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind, recover unfinished jobs, and serve until cancelled."""
        self._setup_curve()
        self.sock.bind(self.config.bind)
        self.address = bytes(self.sock.getsockopt(zmq.LAST_ENDPOINT)).decode()  # type: ignore[arg-type]
        logger.info("serving on %s", self.address)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for rec in self.journal.unfinished():
                    self._start(rec.client, rec.job_id, _spec(rec), rec.traceparent)
                tg.start_soon(self._flush_results)
                task_status.started(self.address)
                while True:
                    frames = [await self.sock.recv_multipart(copy=True)]
                    while len(frames) < 512:
                        try:
                            frames.append(self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=True).result())  # type: ignore[attr-defined]
                        except zmq.Again:
                            break
                    await self._handle_batch(frames)
        finally:
            self.close()

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self.sock.close(0)
        self.ctx.term()
        self.journal.close()

    async def _send(self, client: bytes, msg: p.Message) -> None:
        await self.sock.send_multipart([client, p.encode(msg)])

    async def _handle_batch(self, frames: list[list[bytes]]) -> None:
        submits: list[tuple[bytes, p.Submit]] = []
        for parts in frames:
            if len(parts) != 2:
                if parts:
                    await self._send(parts[0], p.Error(code="bad_frame", message=f"expected 1 payload frame, got {len(parts) - 1}"))
                continue
            client, payload = parts
            try:
                msg = p.decode(payload)
            except p.ProtocolError as exc:
                await self._send(client, p.Error(code="bad_frame", message=f"cannot decode message: {exc}"))
                continue
            if msg.v != p.PROTOCOL_VERSION:
                await self._send(client, p.Error(code="bad_version", message=f"protocol version {msg.v} unsupported; this server speaks {p.PROTOCOL_VERSION}"))
                continue
            reply = self._admit(client, msg) if isinstance(msg, p.Submit) else await self._control(client, msg)
            if reply is True:
                submits.append((client, msg))  # type: ignore[arg-type]
            elif reply is not None:
                await self._send(client, reply)  # type: ignore[arg-type]
        if submits:
            await self._accept(submits)

    def _admit(self, client: bytes, msg: p.Submit) -> p.Error | bool:
        if msg.graph not in self.runtime.registry.graphs:
            known = ", ".join(sorted(self.runtime.registry.graphs))
            return p.Error(code="unknown_graph", message=f"unknown graph {msg.graph!r}; registered: {known}", request_id=msg.request_id)
        if self.inflight.get(client, 0) >= self.config.max_inflight_per_client:
            return p.Error(code="too_many_inflight", message=f"more than {self.config.max_inflight_per_client} jobs in flight", request_id=msg.request_id)
        self.inflight[client] = self.inflight.get(client, 0) + 1
        return True

    async def _accept(self, submits: list[tuple[bytes, p.Submit]]) -> None:
        ids = self.journal.accept_many(submits)  # committed before any Accepted is sent
        for (client, sub), (job_id, duplicate) in zip(submits, ids, strict=True):
            await self._send(client, p.Accepted(request_id=sub.request_id, job_id=job_id, duplicate=duplicate))
            if duplicate:
                self.inflight[client] -= 1
                rec = self.journal.get(job_id)
                if rec is not None and rec.result is not None:
                    await self._send(client, msgspec.convert(rec.result, p.Result))
                continue
            if sub.follow:
                self.follow.add(job_id)
            spec = JobSpec(graph=sub.graph, inputs=sub.inputs, priority=sub.priority, job_id=job_id)
            self._start(client, job_id, spec, sub.traceparent)

    def _start(self, client: bytes, job_id: str, spec: JobSpec, traceparent: str | None) -> None:
        self.state[job_id], self.owner[job_id] = "running", client
        self._tg.start_soon(self._run, client, job_id, spec, traceparent)

    async def _run(self, client: bytes, job_id: str, spec: JobSpec, traceparent: str | None) -> None:
        seq = 0
        sends: list[p.Event] = []

        def on_event(event: dict[str, Any]) -> None:
            nonlocal seq
            if job_id in self.follow:
                seq += 1
                data = {k: v for k, v in event.items() if k not in ("kind", "job_id")}
                sends.append(p.Event(job_id=job_id, seq=seq, kind=event["kind"], data=msgspec.to_builtins(data)))

        async def pump() -> None:
            while True:
                while sends:
                    await self._send(client, sends.pop(0))
                await anyio.sleep(0.005)

        try:
            async with anyio.create_task_group() as tg:
                if job_id in self.follow:
                    tg.start_soon(pump)
                try:
                    res = await self.runtime.run_job(spec, on_event=on_event, traceparent=traceparent)
                    result = p.Result(job_id=job_id, status=res.status, output=res.output, error=res.error,
                                      usage=msgspec.to_builtins(res.usage), cost_usd=res.usage.cost_usd)
                except Exception as exc:  # a runtime bug: report it, keep serving
                    logger.exception("job %s crashed", job_id)
                    result = p.Result(job_id=job_id, status="failed", error=f"internal error: {exc}")
                for ev in sends:
                    await self._send(client, ev)
                sends.clear()
                tg.cancel_scope.cancel()
        finally:
            self.inflight[client] = max(0, self.inflight.get(client, 1) - 1)
            self.follow.discard(job_id)
        self._results.append((job_id, result.status, msgspec.to_builtins(result)))
        self._result_ready.set()

    async def _flush_results(self) -> None:
        """Journal finished results in groups, then send them."""
        while True:
            await self._result_ready.wait()
            self._result_ready = anyio.Event()
            batch, self._results = self._results, []
            if not batch:
                continue
            self.journal.finish_many(batch)
            for job_id, state, res in batch:
                self.state[job_id] = state
                await self._send(self.owner.get(job_id, b""), msgspec.convert(res, p.Result))

    async def _control(self, client: bytes, msg: p.Message) -> p.Message | None:
        match msg:
            case p.Cancel(job_id=job_id):
                if self.runtime.cancel(job_id):
                    return p.StatusReply(job_id=job_id, state="cancelling")
                return p.Error(code="not_found", message=f"no running job {job_id!r}", job_id=job_id)
            case p.Status(job_id=job_id):
                state = self.state.get(job_id)
                if state is None:
                    rec = self.journal.get(job_id)
                    state = rec.state if rec else "unknown"
                return p.StatusReply(job_id=job_id, state=state)
            case p.Fetch(job_id=job_id):
                rec = self.journal.get(job_id)
                if rec is None:
                    return p.Error(code="not_found", message=f"no job {job_id!r}", job_id=job_id)
                if rec.result is None:
                    return p.StatusReply(job_id=job_id, state=self.state.get(job_id, rec.state))
                return msgspec.convert(rec.result, p.Result)
            case _:
                return p.Error(code="bad_frame", message=f"a client may not send {type(msg).__name__} messages")


def _spec(rec: JobRecord) -> JobSpec:
    return JobSpec(graph=rec.graph, inputs=rec.inputs, priority=rec.priority, job_id=rec.job_id)
