"""Hypothesis fuzzing: >= 2,000 malformed frames, then the server still answers a valid Submit."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrt import Registry, Runtime
from agentrt.server import Server, ServerConfig

GRAPHS = Path(__file__).parent / "server_graphs"
values = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
maps = st.fixed_dictionaries({"type": st.sampled_from(["submit", "cancel", "status", "fetch", "result", "accepted", "event", "error", "bogus"]),
                              "v": st.one_of(st.just(1), st.integers(-(2**63), 2**63 - 1))}, optional={"request_id": values, "graph": values, "job_id": values, "inputs": values})
frames = st.one_of(st.binary(max_size=64), values.map(msgspec.msgpack.encode), maps.map(msgspec.msgpack.encode),
                   st.lists(st.binary(max_size=8), min_size=2, max_size=3))


async def test_malformed_frames_get_errors_and_the_server_keeps_serving(tmp_path: Path) -> None:
    reg = Registry()
    reg.load_path(GRAPHS)
    srv = Server(Runtime(reg), ServerConfig(bind="tcp://127.0.0.1:*", journal=tmp_path / "j.sqlite", max_message_bytes=4096))
    async with anyio.create_task_group() as tg:
        await tg.start(srv.serve)
        ok = await anyio.to_thread.run_sync(_fuzz, srv.address)
        tg.cancel_scope.cancel()
    assert ok


def _fuzz(address: str) -> bool:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    sent = [0]

    @settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(frames)
    def send(frame: bytes | list[bytes]) -> None:
        sock.send_multipart(frame) if isinstance(frame, list) else sock.send(frame)
        sent[0] += 1
        while sock.poll(0):
            sock.recv()

    send()
    assert sent[0] >= 2000
    sock.send(b"\x00" * 8000)  # oversized: the server drops the connection's frame (MAXMSGSIZE)
    fresh = ctx.socket(zmq.DEALER)
    fresh.setsockopt(zmq.LINGER, 0)
    fresh.connect(address)
    fresh.send(msgspec.msgpack.encode({"type": "submit", "v": 1, "request_id": "after", "graph": "echo", "inputs": {"text": "alive"}}))
    replies = []
    while fresh.poll(5000):
        replies.append(msgspec.msgpack.decode(fresh.recv()))
        if replies[-1]["type"] == "result":
            break
    sock.close(0)
    fresh.close(0)
    return replies[-1].get("output") == "alive"
