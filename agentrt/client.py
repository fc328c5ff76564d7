"""Clients of `agentrt serve`: `Client` (blocking) and `AsyncClient` (asyncio), over a DEALER socket.

    with Client("tcp://127.0.0.1:5555") as c:
        result = c.submit("airline_support", {"request": "..."})   # waits for the Result
        job_id = c.submit("react", {"question": "..."}, wait=False)
        c.status(job_id); c.cancel(job_id); c.fetch(job_id)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from agentrt import protocol as p
from agentrt.errors import AgentrtError


class RemoteError(AgentrtError):
    """The server answered with an Error message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ClientTimeout(AgentrtError, TimeoutError):
    """No answer from the server in time."""


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


class Client:
    """A blocking client. Args: server address; timeout seconds per wait; CURVE server public key
    and client (public, secret) keypair when the server uses CURVE."""

    def __init__(self, address: str, *, timeout: float = 60.0, server_key: bytes | None = None, keypair: tuple[bytes, bytes] | None = None) -> None:
        self.timeout = timeout
        self._ctx: zmq.Context[Any] = zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        _configure(self.sock, server_key, keypair)
        self.sock.connect(address)
        self._buffer: list[p.Message] = []

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close(0)

    def _send(self, msg: p.Message) -> None:
        self.sock.send(p.encode(msg))

    def _recv_until(self, match: Callable[[p.Message], bool], on_event: Callable[[p.Event], None] | None = None) -> p.Message:
        for i, msg in enumerate(self._buffer):
            if match(msg):
                return self._buffer.pop(i)
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000)):
                break
            msg = p.decode(self.sock.recv())
            if isinstance(msg, p.Event) and on_event is not None:
                on_event(msg)
            elif match(msg):
                return msg
            elif not isinstance(msg, p.Event):
                self._buffer.append(msg)
        raise ClientTimeout(f"no answer from the server within {self.timeout}s")

    def submit(self, graph: str, inputs: dict[str, Any] | None = None, *, priority: int = 0, idempotency_key: str | None = None,
               wait: bool = True, on_event: Callable[[p.Event], None] | None = None, traceparent: str | None = None) -> Any:
        """Submit a job; returns the Result (wait=True) or the job id. Raises RemoteError."""
        rid = uuid.uuid4().hex
        self._send(p.Submit(request_id=rid, graph=graph, inputs=inputs or {}, priority=priority,
                            idempotency_key=idempotency_key, traceparent=traceparent, follow=on_event is not None))
        acc = _check(self._recv_until(lambda m: getattr(m, "request_id", None) == rid))
        assert isinstance(acc, p.Accepted)
        return self.result(acc.job_id, on_event) if wait else acc.job_id

    def result(self, job_id: str, on_event: Callable[[p.Event], None] | None = None) -> p.Result:
        """Wait for a job's Result (as streamed, or fetched when it finished earlier)."""
        msg = self.fetch(job_id)
        if isinstance(msg, p.Result):
            return msg
        res = self._recv_until(lambda m: isinstance(m, p.Result) and m.job_id == job_id, on_event)
        assert isinstance(res, p.Result)
        return res

    def fetch(self, job_id: str) -> p.Result | p.StatusReply:
        self._send(p.Fetch(job_id=job_id))
        msg = _check(self._recv_until(lambda m: isinstance(m, p.Result | p.StatusReply | p.Error) and getattr(m, "job_id", None) == job_id))
        assert isinstance(msg, p.Result | p.StatusReply)
        return msg

    def status(self, job_id: str) -> str:
        self._send(p.Status(job_id=job_id))
        msg = _check(self._recv_until(lambda m: isinstance(m, p.StatusReply | p.Error) and getattr(m, "job_id", None) == job_id))
        assert isinstance(msg, p.StatusReply)
        return msg.state

    def cancel(self, job_id: str) -> str:
        self._send(p.Cancel(job_id=job_id))
        msg = _check(self._recv_until(lambda m: isinstance(m, p.StatusReply | p.Error) and getattr(m, "job_id", None) == job_id))
        assert isinstance(msg, p.StatusReply)
        return msg.state


class AsyncClient:
    """An asyncio client; many requests may be outstanding at once (one receiver task routes replies).

    Use as `async with AsyncClient(address) as c: result = await c.submit(graph, inputs)`."""

    def __init__(self, address: str, *, timeout: float = 60.0, server_key: bytes | None = None, keypair: tuple[bytes, bytes] | None = None) -> None:
        self.timeout = timeout
        self._ctx = zmq.asyncio.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        _configure(self.sock, server_key, keypair)
        self.sock.connect(address)
        self._waiters: dict[tuple[str, str], asyncio.Future[p.Message]] = {}
        self._results: dict[str, asyncio.Future[p.Message]] = {}
        self._events: dict[str, Callable[[p.Event], None]] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncClient:
        self._task = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sock.close(0)

    async def _receive(self) -> None:
        while True:
            msg = p.decode(await self.sock.recv())
            if isinstance(msg, p.Event):
                if (cb := self._events.get(msg.job_id)) is not None:
                    cb(msg)
            elif isinstance(msg, p.Result):
                fut = self._future(self._results, msg.job_id)
                if not fut.done():
                    fut.set_result(msg)
            else:
                rid = getattr(msg, "request_id", None)
                key = ("r", rid) if rid else ("j", getattr(msg, "job_id", "") or "")
                fut = self._waiters.pop(key, None)  # type: ignore[arg-type]
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    @staticmethod
    def _future(table: dict[str, asyncio.Future[p.Message]], key: str) -> asyncio.Future[p.Message]:
        if key not in table:
            table[key] = asyncio.get_running_loop().create_future()
        return table[key]

    async def _request(self, msg: p.Message, key: tuple[str, str]) -> p.Message:
        fut: asyncio.Future[p.Message] = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        await self.sock.send(p.encode(msg))
        try:
            return _check(await asyncio.wait_for(fut, self.timeout))
        except TimeoutError as exc:
            raise ClientTimeout(f"no answer from the server within {self.timeout}s") from exc

    async def submit(self, graph: str, inputs: dict[str, Any] | None = None, *, priority: int = 0, idempotency_key: str | None = None,
                     wait: bool = True, on_event: Callable[[p.Event], None] | None = None, traceparent: str | None = None) -> Any:
        rid = uuid.uuid4().hex
        msg = p.Submit(request_id=rid, graph=graph, inputs=inputs or {}, priority=priority, idempotency_key=idempotency_key,
                       traceparent=traceparent, follow=on_event is not None)
        acc = await self._request(msg, ("r", rid))
        assert isinstance(acc, p.Accepted)
        if on_event is not None:
            self._events[acc.job_id] = on_event
        return await self.result(acc.job_id) if wait else acc.job_id

    async def result(self, job_id: str) -> p.Result:
        fut = self._future(self._results, job_id)
        try:
            res = await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except TimeoutError:
            fetched = await self.fetch(job_id)
            if not isinstance(fetched, p.Result):
                raise ClientTimeout(f"job {job_id} has no result after {self.timeout}s (state {fetched.state})") from None
            res = fetched
        self._results.pop(job_id, None)
        self._events.pop(job_id, None)
        assert isinstance(res, p.Result)
        return res

    async def fetch(self, job_id: str) -> p.Result | p.StatusReply:
        fut = self._future(self._results, job_id)
        await self.sock.send(p.encode(p.Fetch(job_id=job_id)))
        reply_key = ("j", job_id)
        reply = asyncio.get_running_loop().create_future()
        self._waiters[reply_key] = reply
        done, _ = await asyncio.wait([fut, reply], timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise ClientTimeout(f"no answer from the server within {self.timeout}s")
        msg = _check(done.pop().result())
        assert isinstance(msg, p.Result | p.StatusReply)
        return msg

    async def status(self, job_id: str) -> str:
        msg = await self._request(p.Status(job_id=job_id), ("j", job_id))
        assert isinstance(msg, p.StatusReply)
        return msg.state

    async def cancel(self, job_id: str) -> str:
        msg = await self._request(p.Cancel(job_id=job_id), ("j", job_id))
        assert isinstance(msg, p.StatusReply)
        return msg.state
