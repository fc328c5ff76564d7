"""`agentrt serve`: the job server (ZeroMQ ROUTER socket, msgspec messages, SQLite journal).

Each loop iteration drains every frame waiting on the socket, journals all new submissions in one
transaction (group commit), then replies. No input can stop the server: every decode, journal write
and encode is guarded, a frame that cannot be handled gets an Error reply (frames that cannot even be
attributed are dropped), and a job whose output cannot be encoded ends `failed` (journaled, so a
restart does not run it again). Jobs run on the Runtime; a finished job's result is journaled before
its Result is sent, then the job leaves memory (fetch and status read the journal). At startup, jobs
accepted but never finished are run again: each replays the tasks it had finished from their
journaled results (agentrt.durable), so only unfinished tasks run again. A job stopped at an
interrupt is journaled "interrupted"; a Resume continues it the same way.

Results, events, status and cancellation reach only a job's owner (agentrt.identity): the CURVE
public key with CURVE on, else the token this server issued. Routing ids are never persisted.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
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
from agentrt.identity import TokenIssuer, UnauthorizedError, curve_identity
from agentrt.journal import Journal
from agentrt.types import JobSpec

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ServerConfig:
    """CURVE fails closed: a secret key needs a folder of allowed client keys and vice versa."""

    bind: str = "tcp://127.0.0.1:5555"
    journal: str | Path = "agentrt-journal.sqlite"
    max_message_bytes: int = 1 << 20
    max_inflight_per_client: int = 1000
    curve_secret_key: bytes | None = None  # z85 server secret key: enables CURVE
    curve_public_key: bytes | None = None
    curve_allowed_clients: str | Path | None = None  # folder of allowed client public-key certificates
    max_clients_remembered: int = 65536  # owner -> latest routing id, least recently heard dropped first

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024 or self.max_inflight_per_client < 1:
            raise ValueError("max_message_bytes must be >= 1024 and max_inflight_per_client >= 1")
        if (self.curve_secret_key is None) != (self.curve_public_key is None):
            raise ValueError("CURVE needs both the server public and secret keys")
        if self.curve_allowed_clients is not None and self.curve_secret_key is None:
            raise ValueError(f"allowed clients {self.curve_allowed_clients} given without a CURVE secret key: "
                             "the server would run in plaintext; give --curve-secret too")
        if self.curve_secret_key is not None and self.curve_allowed_clients is None:
            raise ValueError("CURVE without a folder of allowed client keys (--allowed-clients) would accept any key")


@dataclass(slots=True, eq=False)
class _Job:
    owner: str
    route: bytes | None  # where its events and result go; None after a restart until the owner speaks
    origin: bytes | None = None  # the routing id it was admitted from (its in-flight slot)
    follow: bool = False
    state: str = "running"


class Server:
    def __init__(self, runtime: Runtime, config: ServerConfig) -> None:
        self.runtime, self.config = runtime, config
        self.journal = Journal(config.journal)
        runtime.store = self.journal  # finished tasks are journaled: a recovered job replays them (agentrt.durable)
        self.tokens = TokenIssuer(self.journal.secret())
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
        self.sock.setsockopt(zmq.LINGER, 0)
        self._auth: Any = None
        self.jobs: dict[str, _Job] = {}  # running jobs only: a finished one leaves once journaled
        self.peers: OrderedDict[str, bytes] = OrderedDict()  # owner -> routing id it last used
        self.inflight: dict[str | bytes, int] = {}  # per owner and per routing id
        self._results: list[tuple[str, str, bytes]] = []
        self._result_ready = anyio.Event()
        self.address = ""

    def _setup_curve(self) -> None:
        cfg = self.config
        if cfg.curve_secret_key is None:
            return
        folder = Path(cfg.curve_allowed_clients or "")
        if not folder.is_dir() or not any(folder.glob("*.key")):
            raise ValueError(f"allowed-clients folder {folder} does not exist or holds no .key certificates")
        from zmq.auth.asyncio import AsyncioAuthenticator

        self._auth = AsyncioAuthenticator(self.ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(folder))
        self.sock.curve_secretkey = cfg.curve_secret_key
        self.sock.curve_publickey = cfg.curve_public_key
        self.sock.curve_server = True

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind, recover unfinished jobs, and serve until cancelled."""
        try:
            self._setup_curve()
            self.sock.bind(self.config.bind)
            self.address = bytes(self.sock.getsockopt(zmq.LAST_ENDPOINT)).decode()  # type: ignore[arg-type]
            logger.info("serving on %s", self.address)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._recover()
                tg.start_soon(self._flush_results)
                task_status.started(self.address)
                while True:
                    frames = await self._recv_batch()
                    try:
                        await self._handle_batch(frames)
                    except Exception:  # a server bug: log it and keep serving everyone else
                        logger.exception("unexpected error handling %d frames", len(frames))
        finally:
            self.close()

    def _recover(self) -> None:
        for rec in self.journal.unfinished():
            self.jobs[rec.job_id] = _Job(rec.client, None)
            self.inflight[rec.client] = self.inflight.get(rec.client, 0) + 1
            if rec.state == "corrupt":
                self._finish(rec.job_id, p.Result(job_id=rec.job_id, status="failed", error="the journal's record of this job is unreadable"))
                continue
            spec = JobSpec(graph=rec.graph, inputs=rec.inputs, priority=rec.priority, job_id=rec.job_id, thread_id=_thread(rec.client, rec.thread_id))
            self._tg.start_soon(self._run, rec.job_id, spec, rec.traceparent)

    async def _recv_batch(self) -> list[list[zmq.Frame]]:
        frames = [await self.sock.recv_multipart(copy=False)]
        while len(frames) < 512:
            try:
                frames.append(self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False).result())  # type: ignore[attr-defined]
            except zmq.Again:
                break
        return frames

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self.sock.close(0)
        self.ctx.term()
        self.journal.close()

    async def _send(self, route: bytes | None, msg: p.Message | bytes) -> None:
        """Send one message (or an already-encoded one); never raises."""
        if not route:
            return
        try:
            await self.sock.send_multipart([route, msg if isinstance(msg, bytes) else p.encode(msg)])
        except (p.ProtocolError, zmq.ZMQError) as exc:
            logger.error("could not send %s: %s", type(msg).__name__, exc)

    async def _handle_batch(self, frames: list[list[zmq.Frame]]) -> None:
        submits: list[tuple[bytes, str, str | None, p.Submit]] = []
        for parts in frames:
            route = parts[0].bytes if parts else b""
            try:
                await self._handle_frame(parts, submits)
            except Exception as exc:  # a server bug: this frame fails, the others go on
                logger.exception("unexpected error handling a frame")
                await self._send(route, p.Error(code="internal", message=f"internal error: {type(exc).__name__}"))
        if submits:
            await self._accept(submits)

    async def _handle_frame(self, parts: list[zmq.Frame], submits: list[tuple[bytes, str, str | None, p.Submit]]) -> None:
        if len(parts) != 2:
            if parts:
                await self._send(parts[0].bytes, p.Error(code="bad_frame", message=f"expected 1 payload frame, got {len(parts) - 1}"))
            return
        route, payload = parts[0].bytes, parts[1]
        try:
            msg = p.decode(payload.bytes)
        except p.ProtocolError as exc:
            await self._send(route, p.Error(code="bad_frame", message=f"cannot decode message: {exc}"))
            return
        if msg.v != p.PROTOCOL_VERSION:
            await self._send(route, p.Error(code="bad_version", message=f"protocol version {msg.v} unsupported; this server speaks {p.PROTOCOL_VERSION}"))
            return
        if not isinstance(msg, p.Hello | p.Submit | p.Cancel | p.Status | p.Fetch | p.Resume):
            await self._send(route, p.Error(code="bad_frame", message=f"a client may not send {type(msg).__name__} messages"))
            return
        try:
            owner = self._identify(payload, msg)
        except UnauthorizedError as exc:
            await self._send(route, p.Error(code="unauthorized", message=str(exc), request_id=getattr(msg, "request_id", None)))
            return
        issued = None
        if owner is None and isinstance(msg, p.Hello | p.Submit):
            issued, owner = self.tokens.issue()
        if owner is not None:
            self._remember(owner, route)
        if isinstance(msg, p.Hello):
            await self._send(route, p.Welcome(request_id=msg.request_id, token=issued or self.tokens.issue()[0]))  # unused under CURVE
        elif isinstance(msg, p.Submit):
            assert owner is not None
            error = self._admit(route, owner, msg)
            if error is None:
                submits.append((route, owner, issued, msg))
            else:
                await self._send(route, error)
        else:
            await self._send(route, self._control(route, owner, msg))

    def _identify(self, payload: zmq.Frame, msg: p.Message) -> str | None:
        """The sender's identity: its CURVE key, else the identity of its token (None if it has none)."""
        if self.config.curve_secret_key is not None:
            return curve_identity(str(payload.get("User-Id")))
        token = getattr(msg, "token", None)
        return None if token is None else self.tokens.identity(token)

    def _remember(self, owner: str, route: bytes) -> None:
        self.peers[owner] = route
        self.peers.move_to_end(owner)
        while len(self.peers) > self.config.max_clients_remembered:
            self.peers.popitem(last=False)

    def _admit(self, route: bytes, owner: str, msg: p.Submit) -> p.Error | None:
        if msg.graph not in self.runtime.registry.graphs:
            known = ", ".join(sorted(self.runtime.registry.graphs))
            return p.Error(code="unknown_graph", message=f"unknown graph {msg.graph!r}; registered: {known}", request_id=msg.request_id)
        limit = self.config.max_inflight_per_client
        if self.inflight.get(owner, 0) >= limit or self.inflight.get(route, 0) >= limit:
            return p.Error(code="too_many_inflight", message=f"more than {limit} jobs in flight", request_id=msg.request_id)
        for key in (owner, route):
            self.inflight[key] = self.inflight.get(key, 0) + 1
        return None

    def _release(self, owner: str, route: bytes | None) -> None:
        for key in (owner, route):
            if key is not None and key in self.inflight:
                self.inflight[key] -= 1
                if self.inflight[key] <= 0:
                    del self.inflight[key]

    async def _accept(self, submits: list[tuple[bytes, str, str | None, p.Submit]]) -> None:
        try:
            ids = self.journal.accept_many([(owner, sub) for _, owner, _, sub in submits])  # committed before any Accepted
        except Exception as exc:
            logger.exception("journal write of %d submissions failed", len(submits))
            for route, owner, _, sub in submits:
                self._release(owner, route)
                await self._send(route, p.Error(code="internal", message=f"could not journal the job: {exc}", request_id=sub.request_id))
            return
        for (route, owner, issued, sub), (job_id, duplicate) in zip(submits, ids, strict=True):
            await self._send(route, p.Accepted(request_id=sub.request_id, job_id=job_id, duplicate=duplicate, token=issued))
            if duplicate:
                self._release(owner, route)
                rec = self.journal.get(job_id)
                if rec is not None and rec.result is not None:
                    await self._send(route, rec.result)
                continue
            self.jobs[job_id] = _Job(owner, route, route, sub.follow)
            spec = JobSpec(graph=sub.graph, inputs=sub.inputs, priority=sub.priority, job_id=job_id, thread_id=_thread(owner, sub.thread_id))
            self._tg.start_soon(self._run, job_id, spec, sub.traceparent)

    async def _run(self, job_id: str, spec: JobSpec, traceparent: str | None) -> None:
        job = self.jobs[job_id]
        sends: list[p.Event] = []

        def on_event(event: dict[str, Any]) -> None:
            if job.follow:
                data = {k: v for k, v in event.items() if k not in ("kind", "job_id")}
                try:
                    data = msgspec.to_builtins(data)
                except (TypeError, ValueError, OverflowError) as exc:
                    data = {"error": f"event data not encodable: {exc}"}
                sends.append(p.Event(job_id=job_id, seq=len(sends) + 1, kind=event["kind"], data=data))

        sent = 0

        async def pump() -> None:
            nonlocal sent
            while True:
                while sent < len(sends):
                    sent += 1
                    await self._send(self._route(job), sends[sent - 1])
                await anyio.sleep(0.005)

        try:
            async with anyio.create_task_group() as tg:
                if job.follow:
                    tg.start_soon(pump)
                try:
                    res = await self.runtime.run_job(spec, on_event=on_event, traceparent=traceparent)
                    result = p.Result(job_id=job_id, status=res.status, output=res.output, error=res.error,
                                      usage=msgspec.to_builtins(res.usage), cost_usd=res.usage.cost_usd, interrupt=res.interrupt)
                except Exception as exc:  # a runtime bug: report it, keep serving
                    logger.exception("job %s crashed", job_id)
                    result = p.Result(job_id=job_id, status="failed", error=f"internal error: {type(exc).__name__}: {exc}")
                tg.cancel_scope.cancel()
            for ev in sends[sent:]:
                await self._send(self._route(job), ev)
        finally:
            self._release(job.owner, job.origin)
            self.runtime.jobs.pop(job_id, None)
        self._finish(job_id, result)

    def _finish(self, job_id: str, result: p.Result) -> None:
        """Queue a finished job's encoded result for journaling; an output that cannot be encoded fails the job."""
        try:
            payload = p.encode(result)
        except p.ProtocolError as exc:
            logger.error("job %s: %s", job_id, exc)
            result = p.Result(job_id=job_id, status="failed", error=f"the job's output cannot be sent: {exc}",
                              usage=result.usage, cost_usd=result.cost_usd)
            payload = p.encode(result)
        self.jobs[job_id].state = result.status
        self._results.append((job_id, result.status, payload))
        self._result_ready.set()

    def _resume(self, route: bytes, rec: Any, msg: p.Resume) -> p.Message:
        """Give an interrupted job its input (journaled) and run it again: it replays up to the interrupt."""
        try:
            value = msgspec.msgpack.encode(msg.input)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            return p.Error(code="bad_frame", message=f"cannot encode the resume input: {exc}", job_id=rec.job_id)
        if rec.state != "interrupted" or not self.journal.resolve_interrupt(rec.job_id, value):
            return p.Error(code="not_interrupted", message=f"job {rec.job_id!r} is {rec.state}, not waiting at an interrupt", job_id=rec.job_id)
        self.jobs[rec.job_id] = _Job(rec.client, route, route, msg.follow)
        self.inflight[rec.client] = self.inflight.get(rec.client, 0) + 1
        self.inflight[route] = self.inflight.get(route, 0) + 1
        spec = JobSpec(graph=rec.graph, inputs=rec.inputs, priority=rec.priority, job_id=rec.job_id, thread_id=_thread(rec.client, rec.thread_id))
        self._tg.start_soon(self._run, rec.job_id, spec, rec.traceparent)
        return p.StatusReply(job_id=rec.job_id, state="running")

    def _route(self, job: _Job | None) -> bytes | None:
        if job is None:
            return None
        return job.route if job.route is not None else self.peers.get(job.owner)

    async def _flush_results(self) -> None:
        """Journal finished results in groups, send them, and forget the jobs."""
        while True:
            await self._result_ready.wait()
            self._result_ready = anyio.Event()
            batch, self._results = self._results, []
            if not batch:
                continue
            try:
                self.journal.finish_many(batch)
            except Exception:  # e.g. disk full: still answer; after a restart these jobs run again
                logger.exception("could not journal %d results", len(batch))
            for job_id, _, payload in batch:
                await self._send(self._route(self.jobs.pop(job_id, None)), payload)

    def _control(self, route: bytes, owner: str | None, msg: p.Message) -> p.Message | bytes:
        job_id: str = getattr(msg, "job_id", "")
        job = self.jobs.get(job_id)
        if job is not None and job.owner != owner:
            job = None
        rec = None
        if job is None:
            rec = self.journal.get(job_id)
            if rec is not None and rec.client != owner:
                rec = None
        match msg:
            case p.Status():
                return p.StatusReply(job_id=job_id, state=job.state if job else rec.state if rec else "unknown")
            case p.Cancel() if job is not None:
                running = job.state == "running" and self.runtime.cancel(job_id)
                return p.StatusReply(job_id=job_id, state="cancelling" if running else job.state)
            case p.Cancel() if rec is not None and rec.state == "interrupted":  # it stops waiting: cancelled for good
                cancelled = p.Result(job_id=job_id, status="cancelled", error="cancelled while waiting at an interrupt")
                self.journal.finish_many([(job_id, "cancelled", p.encode(cancelled))])
                return p.StatusReply(job_id=job_id, state="cancelled")
            case p.Cancel() if rec is not None:
                return p.StatusReply(job_id=job_id, state=rec.state)
            case p.Fetch() if job is not None:
                job.route = route  # the owner is waiting here now (e.g. a new socket after a restart)
                return p.StatusReply(job_id=job_id, state=job.state)
            case p.Fetch() if rec is not None:
                return rec.result if rec.result is not None else p.StatusReply(job_id=job_id, state=rec.state)
            case p.Resume() if rec is not None:
                return self._resume(route, rec, msg)
            case p.Resume() if job is not None:
                return p.Error(code="not_interrupted", message=f"job {job_id!r} is {job.state}, not waiting at an interrupt", job_id=job_id)
        return p.Error(code="not_found", message=f"no job {job_id!r} of this client", job_id=job_id)


def _thread(owner: str, thread_id: str | None) -> str | None:
    """Threads are per owner: two clients naming the same thread never share a conversation."""
    if thread_id is None:
        return None
    return f"{hashlib.sha256(owner.encode()).hexdigest()[:16]}/{thread_id}"
