"""The job server over real loopback sockets: submit/stream/cancel/fetch, limits, CURVE, crash recovery."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import zmq

from agentrt import Runtime
from agentrt import protocol as p
from agentrt.client import AsyncClient, Client, ClientTimeout, RemoteError
from agentrt.server import Server, ServerConfig
from tests.agentrt.servers import GRAPHS, registry


async def test_submit_stream_and_fetch_over_loopback(server: Server) -> None:
    events: list[Any] = []
    async with AsyncClient(server.address, timeout=10) as c:
        res = await c.submit("sleepy", {"seconds": 0.01, "tag": "x"}, on_event=events.append)
        assert res.status == "succeeded" and res.output == "slept 0.01 x"
        assert [e.kind for e in events][:1] == ["task_started"] and "task_finished" in [e.kind for e in events]
        assert (await c.fetch(res.job_id)).output == "slept 0.01 x"  # type: ignore[union-attr]
        assert await c.status(res.job_id) == "succeeded"
        failed = await c.submit("fail")
        assert failed.status == "failed" and "always fails" in failed.error


async def test_bad_requests_get_typed_errors_and_the_server_keeps_serving(server: Server) -> None:
    async with AsyncClient(server.address, timeout=10) as c:
        with pytest.raises(RemoteError, match="unknown_graph.*'nope'.*echo"):
            await c.submit("nope")
        with pytest.raises(RemoteError, match="not_found"):
            await c.cancel("no-such-job")
        assert await c.status("no-such-job") == "unknown"
        assert (await c.submit("echo", {"text": "still here"})).output == "still here"


async def test_idempotency_key_deduplicates_and_cancel_stops_a_job(server: Server) -> None:
    async with AsyncClient(server.address, timeout=10) as c:
        a = await c.submit("echo", {"text": "once"}, idempotency_key="k1")
        b = await c.submit("echo", {"text": "twice"}, idempotency_key="k1")
        assert a.job_id == b.job_id and b.output == "once"
        job = await c.submit("sleepy", {"seconds": 30}, wait=False)
        await anyio.sleep(0.1)
        assert await c.cancel(job) == "cancelling"
        res = await c.result(job)
        assert res.status == "cancelled"


async def test_a_raw_client_written_from_the_protocol_doc_gets_a_result(server: Server) -> None:
    def raw() -> list[dict]:
        import msgspec  # the doc's wire format: one msgpack map per frame, no agentrt imports

        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.DEALER)
        s.connect(server.address)
        s.send(msgspec.msgpack.encode({"type": "submit", "v": 1, "request_id": "r-1", "graph": "echo", "inputs": {"text": "raw"}}))
        out = []
        while len(out) < 2 and s.poll(5000):
            out.append(msgspec.msgpack.decode(s.recv()))
        s.close(0)
        return out

    accepted, result = await anyio.to_thread.run_sync(raw)
    assert accepted["type"] == "accepted" and accepted["request_id"] == "r-1"
    assert result["type"] == "result" and result["job_id"] == accepted["job_id"] and result["output"] == "raw"


async def test_too_many_inflight_jobs_are_refused(server: Server) -> None:
    async with AsyncClient(server.address, timeout=10) as c:
        ids = [await c.submit("sleepy", {"seconds": 5}, wait=False) for _ in range(50)]
        with pytest.raises(RemoteError, match="too_many_inflight"):
            await c.submit("echo")
        for j in ids:
            await c.cancel(j)


async def test_curve_refuses_clients_without_an_allowed_key(tmp_path: Path) -> None:
    from agentrt.keys import generate_keypair, load_keypair, load_public_key

    generate_keypair(tmp_path / "server", "server")
    generate_keypair(tmp_path / "allowed", "client")
    generate_keypair(tmp_path / "other", "intruder")
    spub, ssec = load_keypair(tmp_path / "server" / "server.key_secret")
    cfg = ServerConfig(bind="tcp://127.0.0.1:*", journal=tmp_path / "j.sqlite", curve_public_key=spub, curve_secret_key=ssec,
                       curve_allowed_clients=tmp_path / "allowed")
    srv = Server(Runtime(registry()), cfg)
    async with anyio.create_task_group() as tg:
        await tg.start(srv.serve)
        good = load_keypair(tmp_path / "allowed" / "client.key_secret")
        bad = load_keypair(tmp_path / "other" / "intruder.key_secret")
        server_key = load_public_key(tmp_path / "server" / "server.key")

        def use(keypair: tuple[bytes, bytes]) -> str:
            with Client(srv.address, timeout=1.5, server_key=server_key, keypair=keypair) as c:
                return c.submit("echo", {"text": "secret"}).output

        assert await anyio.to_thread.run_sync(use, good) == "secret"
        with pytest.raises(ClientTimeout):
            await anyio.to_thread.run_sync(use, bad)
        tg.cancel_scope.cancel()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(address: str, journal: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "agentrt.cli", "serve", "--no-engine", "--graphs", str(GRAPHS), "--tools", str(GRAPHS),
           "--bind", address, "--journal", str(journal)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120  # start-up imports take seconds, more on a busy machine
    while True:
        try:
            with Client(address, timeout=2) as c:
                c.status("warm-up")
            return proc
        except ClientTimeout:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise


def test_every_accepted_job_survives_a_sigkill_of_the_server(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    proc = _start_server(address, tmp_path / "j.sqlite")
    try:
        with Client(address, timeout=20) as c:
            ids = [c.submit("sleepy", {"seconds": 1.0, "tag": str(i)}, wait=False) for i in range(6)]
            token = c.token
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # jobs are in flight
        proc.wait(10)
        proc = _start_server(address, tmp_path / "j.sqlite")
        with Client(address, timeout=20, token=token) as c:
            results = [c.result(j) for j in ids]
        assert [r.status for r in results] == ["succeeded"] * 6
        assert [r.output for r in results] == [f"slept 1.0 {i}" for i in range(6)]
    finally:
        proc.kill()
        proc.wait(10)


def test_after_a_restart_a_new_client_never_receives_another_clients_result(tmp_path: Path) -> None:
    """libzmq hands out the same routing ids in every process: results must follow the owner, not the id."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    proc = _start_server(address, tmp_path / "j.sqlite")
    try:
        with Client(address, timeout=20) as alice:
            ids = [alice.submit("sleepy", {"seconds": 0.5, "tag": f"alice{i}"}, wait=False) for i in range(3)]
            token = alice.token
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = _start_server(address, tmp_path / "j.sqlite")
        with Client(address, timeout=20) as bob:  # first socket of the new process: alice's old routing id
            mine = bob.submit("echo", {"text": "bob"})
            time.sleep(1.5)  # alice's recovered jobs finish meanwhile
            seen = [*bob._buffer]
            while bob.sock.poll(200):
                seen.append(p.decode(bob.sock.recv()))
            assert not [m for m in seen if getattr(m, "job_id", None) in ids]  # nothing of alice's reached bob
            assert all(getattr(m, "job_id", None) == mine.job_id for m in seen)  # at most a copy of bob's own result
            assert mine.output == "bob" and bob.status(ids[0]) == "unknown"
            with pytest.raises(RemoteError, match="not_found"):
                bob.fetch(ids[0])
        with Client(address, timeout=20, token=token) as alice:
            assert [alice.result(j).output for j in ids] == [f"slept 0.5 alice{i}" for i in range(3)]
    finally:
        proc.kill()
        proc.wait(10)


async def test_a_second_server_on_the_same_journal_refuses_to_start(server: Server) -> None:
    from agentrt.errors import JournalLockedError

    with pytest.raises(JournalLockedError, match=f"pid {os.getpid()}"):
        Server(Runtime(registry()), ServerConfig(bind="tcp://127.0.0.1:*", journal=server.config.journal))
