"""Clients of `agentrt serve`: `Client` (blocking) and `AsyncClient` (asyncio), over a DEALER socket.

    with Client("tcp://127.0.0.1:5555") as c:
        result = c.submit("airline_support", {"request": "..."})   # waits for the Result
        job_id = c.submit("react", {"question": "..."}, wait=False)
        c.status(job_id); c.cancel(job_id); c.fetch(job_id)
        c.resume(job_id, {"approved": True})   # a job whose Result was "interrupted"

A client's identity is its CURVE key pair, or else a token the server issues on first contact
(`client.token`); pass `token=` to act as the same client from another process or after a restart
(results, status and cancellation are the owner's only), or `token_file=` to keep it in a private
JSON file (address -> token; `default_token_file()` is the CLI's), renewed if the server no longer
accepts it. `timeout` is how long to wait for the
server to answer a request: past it, ServerUnavailableError. Waiting for a long job is not bounded by
it: `result()` re-fetches every `timeout` seconds, so a dead server is noticed while a slow job is not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from agentrt import protocol as p
from agentrt.errors import AgentrtError, ClientTimeout, ServerUnavailableError

logger = logging.getLogger(__name__)
__all__ = ["AsyncClient", "Client", "ClientTimeout", "RemoteError", "ServerUnavailableError", "default_token_file"]


def default_token_file() -> Path:
    """Where the CLI keeps its client tokens (one per server address)."""
    return Path.home() / ".config" / "agentrt" / "tokens.json"


def _load_token(path: Path | None, address: str) -> str | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    token = data.get(address) if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def _save_token(path: Path | None, address: str, token: str) -> None:
    """Store `token` for `address` in a 0600 file in a 0700 folder (written whole, then renamed)."""
    if path is None:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data = {**(data if isinstance(data, dict) else {}), address: token}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("could not save the client token in %s: %s", path, exc)


class RemoteError(AgentrtError):
    """The server answered with an Error message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def _configure(sock: zmq.Socket[Any], server_key: bytes | None, keypair: tuple[bytes, bytes] | None) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    if server_key is not None:
        if keypair is None:
            raise ValueError("CURVE needs the client's (public, secret) keypair as well as the server key")
        sock.curve_serverkey = server_key
        sock.curve_publickey, sock.curve_secretkey = keypair


def _check(msg: p.Message) -> p.Message:
    if isinstance(msg, p.Error):
        raise RemoteError(msg.code, msg.message)
    return msg


def _decode(frame: bytes) -> p.Message | None:
    try:
        return p.decode(frame)
    except p.ProtocolError as exc:
        logger.warning("ignoring a frame from the server that does not decode: %s", exc)
        return None


def _state(msg: p.Message) -> str:
    """The state a status/cancel answer reports (a Result arriving for the job may answer too)."""
    if isinstance(msg, p.Result):
        return msg.status
    assert isinstance(msg, p.StatusReply), msg
    return msg.state


def _unavailable(address: str, timeout: float) -> ServerUnavailableError:
    return ServerUnavailableError(f"no answer from the server at {address} within {timeout}s (is it running? are the CURVE keys right?)")


class Client:
    """A blocking client. Args: server address; timeout seconds to wait for the server's answers;
    token (this client's identity from an earlier session); CURVE server public key and client
    (public, secret) keypair when the server uses CURVE."""

    def __init__(self, address: str, *, timeout: float = 10.0, token: str | None = None, token_file: str | Path | None = None,
                 server_key: bytes | None = None, keypair: tuple[bytes, bytes] | None = None) -> None:
        self.address, self.timeout = address, timeout
        self.token_file = None if token_file is None else Path(token_file)
        self.token = token if token is not None else _load_token(self.token_file, address)
        self._ctx: zmq.Context[Any] = zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        _configure(self.sock, server_key, keypair)
        self.sock.connect(address)
        self._buffer: list[p.Message] = []
        self._on_event: dict[str, Callable[[p.Event], None]] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close(0)

    def _send(self, msg: p.Message) -> None:
        self.sock.send(p.encode(msg))

    def _recv_until(self, match: Callable[[p.Message], bool], wait: float | None = None) -> p.Message | None:
        """The first message that matches within `wait` seconds (default: timeout), else None."""
        for i, old in enumerate(self._buffer):
            if match(old):
                return self._buffer.pop(i)
        deadline = time.monotonic() + (self.timeout if wait is None else wait)
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(max(1, int(left * 1000))):
                break
            msg = _decode(self.sock.recv())
            if msg is None:
                continue
            if isinstance(msg, p.Event):
                if (cb := self._on_event.get(msg.job_id)) is not None:
                    cb(msg)
            elif match(msg):
                return msg
            else:
                self._buffer = [*self._buffer[-999:], msg]
        return None

    def _request(self, msg: p.Message, match: Callable[[p.Message], bool], renew: bool = True) -> p.Message:
        self._send(msg)
        reply = self._recv_until(match)
        if reply is None:
            raise _unavailable(self.address, self.timeout)
        if renew and isinstance(reply, p.Error) and reply.code == "unauthorized" and self.token_file is not None and getattr(msg, "token", None):
            logger.warning("the server no longer accepts this client's stored token; getting a new one")
            self.token = None  # e.g. the server's journal was replaced: old jobs are out of reach anyway
            return self._request(msgspec.structs.replace(msg, token=self._ensure_token()), match, renew=False)  # type: ignore[type-var]
        return _check(reply)

    def _ensure_token(self) -> str:
        if self.token is None:
            rid = uuid.uuid4().hex
            reply = self._request(p.Hello(request_id=rid), lambda m: getattr(m, "request_id", None) == rid)
            assert isinstance(reply, p.Welcome)
            self.token = reply.token
            _save_token(self.token_file, self.address, self.token)
        return self.token

    def submit(self, graph: str, inputs: dict[str, Any] | None = None, *, priority: int = 0, idempotency_key: str | None = None,
               wait: bool = True, on_event: Callable[[p.Event], None] | None = None, traceparent: str | None = None,
               thread_id: str | None = None) -> Any:
        """Submit a job; returns the Result (wait=True) or the job id. `thread_id` continues that conversation
        of this client (JobSpec.thread_id). Raises RemoteError, ServerUnavailableError."""
        rid = uuid.uuid4().hex
        msg = p.Submit(request_id=rid, graph=graph, inputs=inputs or {}, priority=priority, idempotency_key=idempotency_key,
                       traceparent=traceparent, follow=on_event is not None, token=self._ensure_token(), thread_id=thread_id)
        acc = self._request(msg, lambda m: getattr(m, "request_id", None) == rid)
        assert isinstance(acc, p.Accepted)
        if on_event is not None:
            self._on_event[acc.job_id] = on_event
        return self.result(acc.job_id) if wait else acc.job_id

    def result(self, job_id: str, on_event: Callable[[p.Event], None] | None = None, timeout: float | None = None) -> p.Result:
        """Wait for a job's Result (as streamed, or fetched when it finished earlier). Raises
        ClientTimeout when `timeout` (None: no limit) passes first, ServerUnavailableError if the server stops answering."""
        if on_event is not None:
            self._on_event[job_id] = on_event
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                msg = self.fetch(job_id)  # also a heartbeat: raises if the server is gone
                if isinstance(msg, p.Result):
                    return msg
                wait = self.timeout if deadline is None else min(self.timeout, deadline - time.monotonic())
                if wait <= 0:
                    raise ClientTimeout(f"job {job_id} has no result after {timeout}s (state {msg.state})")
                res = self._recv_until(lambda m: isinstance(m, p.Result) and m.job_id == job_id, wait)
                if isinstance(res, p.Result):
                    return res
        finally:
            self._on_event.pop(job_id, None)

    def _job_request(self, msg: p.Message, kinds: Any) -> p.Message:
        job_id = getattr(msg, "job_id", None)
        return self._request(msg, lambda m: isinstance(m, kinds) and getattr(m, "job_id", None) == job_id)

    def fetch(self, job_id: str) -> p.Result | p.StatusReply:
        msg = self._job_request(p.Fetch(job_id=job_id, token=self._ensure_token()), p.Result | p.StatusReply | p.Error)
        assert isinstance(msg, p.Result | p.StatusReply)
        return msg

    def resume(self, job_id: str, input: Any = None, *, wait: bool = True, on_event: Callable[[p.Event], None] | None = None) -> Any:
        """Continue a job waiting at `ctx.interrupt(...)`; its interrupt returns `input`. Returns the
        job's next Result (wait=True: it may be "interrupted" again) or its state. Raises RemoteError
        ("not_interrupted" when it is not waiting)."""
        self._buffer = [m for m in self._buffer if not (isinstance(m, p.Result) and m.job_id == job_id)]  # the old Result
        if on_event is not None:
            self._on_event[job_id] = on_event
        msg = self._job_request(p.Resume(job_id=job_id, input=input, follow=on_event is not None, token=self._ensure_token()),
                                p.StatusReply | p.Error)
        assert isinstance(msg, p.StatusReply)
        return self.result(job_id, on_event) if wait else msg.state

    def status(self, job_id: str) -> str:
        msg = self._job_request(p.Status(job_id=job_id, token=self._ensure_token()), p.StatusReply | p.Error)
        assert isinstance(msg, p.StatusReply)
        return msg.state

    def cancel(self, job_id: str) -> str:
        msg = self._job_request(p.Cancel(job_id=job_id, token=self._ensure_token()), p.StatusReply | p.Error)
        assert isinstance(msg, p.StatusReply)
        return msg.state


class AsyncClient:
    """An asyncio client; many requests may be outstanding at once (one receiver task routes replies).
    Same arguments as Client. Use as `async with AsyncClient(address) as c: result = await c.submit(graph, inputs)`."""

    def __init__(self, address: str, *, timeout: float = 10.0, token: str | None = None, token_file: str | Path | None = None,
                 server_key: bytes | None = None, keypair: tuple[bytes, bytes] | None = None) -> None:
        self.address, self.timeout = address, timeout
        self.token_file = None if token_file is None else Path(token_file)
        self.token = token if token is not None else _load_token(self.token_file, address)
        self._ctx = zmq.asyncio.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        _configure(self.sock, server_key, keypair)
        self.sock.connect(address)
        self._waiters: dict[tuple[str, str], asyncio.Future[p.Message]] = {}
        self._results: dict[str, asyncio.Future[p.Message]] = {}
        self._events: dict[str, Callable[[p.Event], None]] = {}
        # Submits that follow their job's events, by request id: the handler is registered as the
        # Accepted is dispatched, before any of the job's events (which may follow it at once).
        self._follow: dict[str, Callable[[p.Event], None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._token_lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncClient:
        self._task = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sock.close(0)

    async def _receive(self) -> None:
        while True:
            msg = _decode(await self.sock.recv())
            if msg is not None:
                self._dispatch(msg)

    def _dispatch(self, msg: p.Message) -> None:
        """Route one message from the server to whoever waits for it."""
        if isinstance(msg, p.Event):
            if (cb := self._events.get(msg.job_id)) is not None:
                cb(msg)
            return
        if isinstance(msg, p.Result) and (res := self._results.get(msg.job_id)) is not None and not res.done():
            res.set_result(msg)
        rid = getattr(msg, "request_id", None)
        if isinstance(msg, p.Accepted) and (follow := self._follow.pop(msg.request_id, None)) is not None:
            self._events[msg.job_id] = follow
        key = ("r", rid) if rid else ("j", getattr(msg, "job_id", "") or "")
        fut = self._waiters.pop(key, None)  # type: ignore[arg-type]
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _request(self, msg: p.Message, key: tuple[str, str]) -> p.Message:
        fut: asyncio.Future[p.Message] = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        await self.sock.send(p.encode(msg))
        try:
            return _check(await asyncio.wait_for(fut, self.timeout))
        except TimeoutError:
            raise _unavailable(self.address, self.timeout) from None
        finally:
            self._waiters.pop(key, None)

    async def _ensure_token(self) -> str:
        async with self._token_lock:  # concurrent first requests share one identity
            if self.token is None:
                rid = uuid.uuid4().hex
                reply = await self._request(p.Hello(request_id=rid), ("r", rid))
                assert isinstance(reply, p.Welcome)
                self.token = reply.token
                _save_token(self.token_file, self.address, self.token)
        return self.token

    async def submit(self, graph: str, inputs: dict[str, Any] | None = None, *, priority: int = 0, idempotency_key: str | None = None,
                     wait: bool = True, on_event: Callable[[p.Event], None] | None = None, traceparent: str | None = None,
                     thread_id: str | None = None) -> Any:
        rid = uuid.uuid4().hex
        msg = p.Submit(request_id=rid, graph=graph, inputs=inputs or {}, priority=priority, idempotency_key=idempotency_key,
                       traceparent=traceparent, follow=on_event is not None, token=await self._ensure_token(), thread_id=thread_id)
        if on_event is not None:
            self._follow[rid] = on_event
        try:
            acc = await self._request(msg, ("r", rid))
        finally:
            self._follow.pop(rid, None)
        assert isinstance(acc, p.Accepted)
        if on_event is not None:
            self._events[acc.job_id] = on_event
        return await self.result(acc.job_id) if wait else acc.job_id

    async def result(self, job_id: str, timeout: float | None = None) -> p.Result:
        """Wait for a job's Result; re-fetches every `timeout` seconds of silence. Raises ClientTimeout
        when `timeout` (None: no limit) passes first, ServerUnavailableError if the server stops answering."""
        fut = self._results.setdefault(job_id, asyncio.get_running_loop().create_future())
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                fetched = await self.fetch(job_id)
                if isinstance(fetched, p.Result):
                    return fetched
                wait = self.timeout if deadline is None else min(self.timeout, deadline - time.monotonic())
                if wait <= 0:
                    raise ClientTimeout(f"job {job_id} has no result after {timeout}s (state {fetched.state})")
                done, _ = await asyncio.wait([fut], timeout=wait)
                if done:
                    res = fut.result()
                    assert isinstance(res, p.Result)
                    return res
        finally:
            self._results.pop(job_id, None)
            self._events.pop(job_id, None)

    async def fetch(self, job_id: str) -> p.Result | p.StatusReply:
        msg = await self._request(p.Fetch(job_id=job_id, token=await self._ensure_token()), ("j", job_id))
        assert isinstance(msg, p.Result | p.StatusReply)
        return msg

    async def resume(self, job_id: str, input: Any = None, *, wait: bool = True,
                     on_event: Callable[[p.Event], None] | None = None) -> Any:
        """Continue a job waiting at `ctx.interrupt(...)` (see Client.resume)."""
        if on_event is not None:
            self._events[job_id] = on_event
        msg = await self._request(p.Resume(job_id=job_id, input=input, follow=on_event is not None, token=await self._ensure_token()),
                                  ("j", job_id))
        assert isinstance(msg, p.StatusReply), msg
        return await self.result(job_id) if wait else msg.state

    async def status(self, job_id: str) -> str:
        msg = await self._request(p.Status(job_id=job_id, token=await self._ensure_token()), ("j", job_id))
        return _state(msg)

    async def cancel(self, job_id: str) -> str:
        msg = await self._request(p.Cancel(job_id=job_id, token=await self._ensure_token()), ("j", job_id))
        return _state(msg)
