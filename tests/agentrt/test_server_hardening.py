"""Probes that used to kill the server or leak results, now regression tests (issue 18 items 1-4)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import zmq

from agentrt import Runtime
from agentrt import protocol as p
from agentrt.client import AsyncClient, RemoteError
from agentrt.journal import Journal
from agentrt.server import Server, ServerConfig
from tests.agentrt.servers import registry


def _raw(address: str, frames: list[bytes], replies: int = 1) -> list[dict[str, Any]]:
    """Send raw frames from one DEALER; collect `replies` decoded answers (5 s each at most)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    for f in frames:
        sock.send(f)
    out = []
    while len(out) < replies and sock.poll(5000):
        out.append(msgspec.msgpack.decode(sock.recv()))
    sock.close(0)
    return out


def _submit_frame(**fields: Any) -> bytes:
    return msgspec.msgpack.encode({"type": "submit", "v": 1, "request_id": "r", "graph": "echo", **fields})


HEAD = b"\x84\xa4type\xa6submit\xaarequest_id\xa1r\xa5graph\xa4echo\xa6inputs\x81\xa1a"


@pytest.mark.parametrize(("frame", "reason"), [
    (HEAD + b"\x91" * 1100 + b"\xc0", "nested too deeply"),  # ~1 KB frame that raised RecursionError
    (HEAD + b"\x91" * 100 + b"\xc0", "nests deeper than 64"),  # decodes, but would recurse later
    (_submit_frame(priority=2**63), "priority"),  # raised OverflowError in the journal insert
    (_submit_frame(priority=-(2**63)), "priority"),
    (_submit_frame(request_id="x" * 300), "request_id"),
])
async def test_a_hostile_frame_gets_an_error_and_the_server_keeps_serving(server: Server, frame: bytes, reason: str) -> None:
    [reply] = await anyio.to_thread.run_sync(_raw, server.address, [frame])
    assert reply["type"] == "error" and reply["code"] == "bad_frame" and reason in reply["message"]
    async with AsyncClient(server.address) as c:
        assert (await c.submit("echo", {"text": "alive"})).output == "alive"


async def test_inputs_with_too_many_values_are_refused(server: Server) -> None:
    frame = _submit_frame(inputs={"a": [{}] * (p.MAX_INPUT_ITEMS + 1)})  # ~100 KB of empty maps
    [reply] = await anyio.to_thread.run_sync(_raw, server.address, [frame])
    assert reply["code"] == "bad_frame" and "more than 100000 values" in reply["message"]


@pytest.mark.parametrize("kind", ["object", "bigint"])
async def test_an_unencodable_output_fails_the_job_and_is_journaled_as_failed(tmp_path: Path, kind: str) -> None:
    journal = tmp_path / "j.sqlite"
    for attempt in range(2):  # the second start must neither crash nor run the job again
        srv = Server(Runtime(registry()), ServerConfig(bind="tcp://127.0.0.1:*", journal=journal))
        async with anyio.create_task_group() as tg:
            await tg.start(srv.serve)
            async with AsyncClient(srv.address) as c:
                if attempt == 0:
                    res = await c.submit("unencodable", {"kind": kind})
                    job_id, token = res.job_id, c.token
                    assert res.status == "failed" and "cannot be sent" in (res.error or "")
                assert (await c.submit("echo", {"text": "alive"})).output == "alive"
            tg.cancel_scope.cancel()
    j = Journal(journal)
    rec = j.get(job_id)
    assert j.unfinished() == [] and rec is not None and rec.state == "failed"
    j.close()
    assert token is not None


async def test_only_the_owner_sees_fetches_or_cancels_a_job(server: Server) -> None:
    async with AsyncClient(server.address) as alice, AsyncClient(server.address) as mallory:
        done = await alice.submit("echo", {"text": "alice's"})
        running = await alice.submit("sleepy", {"seconds": 5}, wait=False)
        for job in (done.job_id, running):
            with pytest.raises(RemoteError, match="not_found"):
                await mallory.fetch(job)
            with pytest.raises(RemoteError, match="not_found"):
                await mallory.cancel(job)
            assert await mallory.status(job) == "unknown"
        assert await alice.status(running) == "running"
        assert await alice.cancel(running) == "cancelling"
        assert (await alice.result(running)).status == "cancelled"
        assert await alice.cancel(done.job_id) == "succeeded"  # finished: nothing to cancel


async def test_idempotency_keys_are_scoped_per_client(server: Server) -> None:
    async with AsyncClient(server.address) as a, AsyncClient(server.address) as b:
        first = await a.submit("echo", {"text": "a"}, idempotency_key="k")
        other = await b.submit("echo", {"text": "b"}, idempotency_key="k")
        again = await a.submit("echo", {"text": "ignored"}, idempotency_key="k")
        assert other.job_id != first.job_id and other.output == "b"
        assert again.job_id == first.job_id and again.output == "a"


async def test_a_forged_token_is_refused(server: Server) -> None:
    async with AsyncClient(server.address) as real:
        await real.submit("echo")
        assert real.token is not None
        forged = real.token.split(".")[0] + "." + "0" * 32
    async with AsyncClient(server.address, token=forged) as c:
        with pytest.raises(RemoteError, match="unauthorized"):
            await c.submit("echo")


async def test_finished_jobs_leave_memory_and_are_fetched_from_the_journal(server: Server) -> None:
    async with AsyncClient(server.address) as c:
        results = [await c.submit("echo", {"text": str(i)}) for i in range(20)]
        await anyio.sleep(0.05)
        assert server.jobs == {} and server.runtime.jobs == {} and server.inflight == {}
        fetched = await c.fetch(results[3].job_id)
        assert isinstance(fetched, p.Result) and fetched.output == "3"


def test_curve_fails_closed(tmp_path: Path) -> None:
    from agentrt.keys import generate_keypair, load_keypair

    _, secret = generate_keypair(tmp_path / "server", "server")
    assert secret.stat().st_mode & 0o777 == 0o600
    pub, sec = load_keypair(secret)
    with pytest.raises(ValueError, match="would run in plaintext"):
        ServerConfig(curve_allowed_clients=tmp_path)
    with pytest.raises(ValueError, match="would accept any key"):
        ServerConfig(curve_public_key=pub, curve_secret_key=sec)
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path / "server", "server")


@pytest.mark.parametrize("folder", ["missing", "empty"])
async def test_curve_refuses_to_serve_without_allowed_client_keys(tmp_path: Path, folder: str) -> None:
    from agentrt.keys import generate_keypair, load_keypair

    generate_keypair(tmp_path, "server")
    (tmp_path / "empty").mkdir()
    pub, sec = load_keypair(tmp_path / "server.key_secret")
    cfg = ServerConfig(bind="tcp://127.0.0.1:*", journal=tmp_path / "j.sqlite", curve_public_key=pub, curve_secret_key=sec,
                       curve_allowed_clients=tmp_path / folder)
    with pytest.raises(ValueError, match=f"{folder}.*holds no .key certificates"):
        await Server(Runtime(registry()), cfg).serve()


async def test_a_token_file_keeps_the_identity_across_clients_and_is_renewed_when_refused(tmp_path: Path) -> None:
    from agentrt.client import Client

    tokens = tmp_path / "cfg" / "tokens.json"

    def as_two_processes(address: str) -> tuple[str, str]:
        with Client(address, token_file=tokens) as first:
            job = first.submit("echo", {"text": "mine"}, wait=False)
        with Client(address, token_file=tokens) as second:  # e.g. `agentrt submit` then `agentrt status`
            return second.result(job).output, second.status(job)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    for journal in ("a.sqlite", "b.sqlite"):  # same address; the second server does not know the stored token
        srv = Server(Runtime(registry()), ServerConfig(bind=address, journal=tmp_path / journal))
        async with anyio.create_task_group() as tg:
            await tg.start(srv.serve)
            assert await anyio.to_thread.run_sync(as_two_processes, srv.address) == ("mine", "succeeded")
            tg.cancel_scope.cancel()
        if journal == "a.sqlite":
            first_token = json.loads(tokens.read_text())[address]
    assert json.loads(tokens.read_text())[address] != first_token  # renewed
    assert tokens.stat().st_mode & 0o777 == 0o600 and tokens.parent.stat().st_mode & 0o777 == 0o700
