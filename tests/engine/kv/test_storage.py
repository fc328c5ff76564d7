"""The engine's storage pool: reusable host buffers, disk writes and prefetch reads on the storage
worker (a slow disk never blocks the caller), bit-exact round trips, the byte budget."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from engine import LLM, SamplingParams
from engine.kv import tiers
from engine.kv.storage import StorageWorker
from engine.kv.tiers import DiskKVTier, HostKVTier

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
SHAPE = (2, 4, 2, 8)


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Disk writes wait until the returned event is set (or 30 s)."""
    gate = threading.Event()
    real = tiers._write_private

    def slow(path: Path, data: bytes) -> None:
        gate.wait(30)
        real(path, data)

    monkeypatch.setattr(tiers, "_write_private", slow)
    yield gate
    gate.set()


def blocks(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*SHAPE, generator=g).to(torch.bfloat16) for _ in range(n)]


def restored(host: HostKVTier, key: bytes) -> tuple[str | None, torch.Tensor, torch.Tensor]:
    k, v = torch.empty(SHAPE, dtype=torch.bfloat16), torch.empty(SHAPE, dtype=torch.bfloat16)
    return host.restore(key, k, v), k, v


def test_offloads_reuse_host_buffers_instead_of_allocating_per_block() -> None:
    host = HostKVTier(4)
    for i, blk in enumerate(blocks(50)):
        host.offload(bytes([i]), blk, -blk)
    assert len(host) == 4 and host.num_offloaded == 50 and host.buffers.num_allocated == 4


def test_a_slow_disk_write_runs_on_the_worker_and_the_block_round_trips_bit_exact(tmp_path: Path, slow_disk: threading.Event) -> None:
    disk = DiskKVTier(tmp_path, 8)
    host = HostKVTier(1, disk, disk_min_hits=0, storage=StorageWorker(1 << 20))
    b = blocks(3)
    host.offload(b"a", b[0], -b[0])
    host.offload(b"b", b[1], -b[1])  # pushes "a" out of host memory: its disk write blocks on the gate
    assert disk.num_written == 0 and host.storage is not None and host.storage.bytes_in_flight > 0  # we did not wait
    source, k, v = restored(host, b"a")  # still readable from its write-back buffer
    assert source == "host" and torch.equal(k, b[0]) and torch.equal(v, -b[0])
    slow_disk.set()
    assert host.storage.drain(10) and b"a" in disk and not host.writeback
    host.offload(b"c", b[2], -b[2])
    assert host.storage.drain(10)
    source, k, v = restored(host, b"a")
    assert source == "disk" and torch.equal(k, b[0]) and torch.equal(v, -b[0])


def test_the_byte_budget_refuses_writes_rather_than_waiting(tmp_path: Path, slow_disk: threading.Event) -> None:
    disk = DiskKVTier(tmp_path, 8)
    one_block = 2 * torch.empty(SHAPE, dtype=torch.bfloat16).nbytes
    host = HostKVTier(1, disk, disk_min_hits=0, storage=StorageWorker(one_block))
    for i, blk in enumerate(blocks(3)):
        host.offload(bytes([i]), blk, blk)  # the 2nd pushes block 0 (in flight), the 3rd block 1 (over budget)
    assert host.num_write_refused == 1 and bytes([1]) not in host
    slow_disk.set()
    assert host.storage is not None and host.storage.drain(10) and bytes([0]) in disk


def test_prefetch_reads_disk_blocks_into_host_memory_off_the_caller(tmp_path: Path) -> None:
    disk = DiskKVTier(tmp_path, 8)
    host = HostKVTier(1, disk, disk_min_hits=0, storage=StorageWorker(1 << 20))
    b = blocks(2)
    host.offload(b"a", b[0], -b[0])
    host.offload(b"b", b[1], -b[1])
    assert host.storage is not None and host.storage.drain(10)
    assert not host.resident(b"a") and b"a" in disk
    assert host.prefetch([b"a", b"b"]) == 1  # "b" is already in host memory
    assert host.storage.drain(10) and host.collect() == 1 and host.resident(b"a")
    source, k, v = restored(host, b"a")
    assert source == "host" and torch.equal(k, b[0]) and torch.equal(v, -b[0])


def test_engine_steps_go_on_while_disk_writes_wait(tiny_qwen: Path, tmp_path: Path, slow_disk: threading.Event) -> None:
    g = torch.Generator().manual_seed(5)
    shared = torch.randint(2, 128, (40,), generator=g).tolist()
    others = [torch.randint(2, 128, (40,), generator=g).tolist() for _ in range(4)]
    opts: dict[str, Any] = dict(device="cpu", dtype="float32", block_size=4)
    ref = LLM(tiny_qwen, num_kv_blocks=512, **opts).generate([shared + [7, 7]], GREEDY)[0].token_ids
    llm = LLM(tiny_qwen, num_kv_blocks=24, host_kv_blocks=4, disk_kv_dir=tmp_path / "kv", disk_kv_blocks=64,
              disk_kv_min_hits=0, **opts)
    llm.generate([shared + [1]], GREEDY)
    for o in others:  # evictions push blocks through the 4-block host tier toward the (stalled) disk
        llm.generate([o], GREEDY)
    host = llm.core.host_tier
    assert host is not None and host.disk is not None and host.storage is not None
    assert host.disk.num_written == 0 and host.storage.bytes_in_flight > 0  # every step ran meanwhile
    slow_disk.set()
    assert host.storage.drain(30) and host.disk.num_written > 0
    out = llm.generate([shared + [7, 7]], GREEDY)[0]
    assert out.usage.kv_restored_bytes_disk > 0 and out.token_ids == ref
