"""The host-memory KV tier: blocks evicted from the device pool are kept in host memory and
restored (copied back) when a later request's prefix needs them, instead of being recomputed.

Blocks are keyed by a chained hash of the token path up to and including the block (two blocks
with the same key hold the KV of the same tokens at the same positions). LRU within a bounded
number of blocks. Pinned host memory when CUDA is present. Pure bookkeeping plus tensor copies; the
engine core wires it to the radix cache's eviction hook and the scheduler's prefix extension.
"""

from __future__ import annotations

import array
import hashlib
import hmac
import json
import logging
import math
import os
import stat
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from pathlib import Path

import torch

from engine.errors import KVTierError
from engine.kv.storage import HostBuffers, StorageWorker

logger = logging.getLogger(__name__)
_MAGIC = b"AGENTRT-KV2\n"


def block_keys(token_ids: Sequence[int], block_size: int, start_block: int = 0, parent: bytes = b"") -> list[bytes]:
    """Chained keys of the whole blocks of `token_ids` from `start_block` on; `parent` is the key of
    block start_block - 1 (empty at the start). Each key hashes its parent's key and the block's token
    ids as little-endian uint32 (3.7x faster than hashing their decimal text, which cost agent
    serving's step thread 15% of its time: evictions hash the evicted leaf's whole path)."""
    end = len(token_ids) // block_size * block_size
    ids = array.array("I", token_ids[start_block * block_size : end])
    if sys.byteorder == "big":
        ids.byteswap()
    raw, width, blake = ids.tobytes(), 4 * block_size, hashlib.blake2b
    keys, key = [], parent
    for off in range(0, len(raw), width):
        key = blake(key + raw[off : off + width], digest_size=16).digest()
        keys.append(key)
    return keys


class DiskKVTier:
    """Up to `capacity_blocks` KV blocks as files in `directory` (one file per block).

    The folder is private (0700, created so or tightened; one owned by another user is refused with
    KVTierError), files are 0600, written to a fresh temporary name (O_EXCL|O_NOFOLLOW) then renamed,
    and opened with O_NOFOLLOW: a planted symlink is never written through or read. Each file's
    checksum covers the block's key, its header and its payload, so a missing, truncated, corrupt or
    well-formed-but-other block reads as absent (logged) and is recomputed, never used."""

    def __init__(self, directory: str | Path, capacity_blocks: int) -> None:
        if capacity_blocks < 1:
            raise ValueError(f"capacity_blocks must be >= 1, got {capacity_blocks}")
        self.dir = _private_dir(Path(directory))
        self.capacity = capacity_blocks
        self.keys: OrderedDict[bytes, None] = OrderedDict()
        self.num_written = self.num_read = self.num_corrupt = 0
        self.bytes_moved = 0
        self._lock = threading.Lock()  # `keys`: the storage worker writes while the step thread reads

    def __contains__(self, key: bytes) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def path(self, key: bytes) -> Path:
        return self.dir / f"{key.hex()}.kv"

    def store(self, key: bytes, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one block; an I/O error is logged and the block is simply not kept on disk.
        Thread-safe (the engine's storage worker calls it)."""
        with self._lock:
            if key in self.keys:
                self.keys.move_to_end(key)
                return
        payload = b"".join(t.contiguous().cpu().view(torch.uint8).numpy().tobytes() for t in (k, v))
        header = json.dumps({"shape": list(k.shape), "dtype": str(k.dtype).removeprefix("torch.")}).encode()
        try:
            _write_private(self.path(key), _MAGIC + header + b"\n" + _digest(key, header, payload) + payload)
        except OSError as exc:
            logger.warning("could not write KV block %s to disk: %s", key.hex(), exc)
            return
        with self._lock:
            while len(self.keys) >= self.capacity:
                old, _ = self.keys.popitem(last=False)
                self.path(old).unlink(missing_ok=True)
            self.keys[key] = None
            self.num_written += 1
            self.bytes_moved += len(payload)

    def forget(self, key: bytes) -> None:
        with self._lock:
            self.keys.pop(key, None)

    def load(self, key: bytes) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The block's (k, v), or None (and the entry dropped) when the file is missing or unusable."""
        try:
            k, v, size = _parse(key, _read_private(self.path(key)))
        except Exception as exc:  # any malformed file is a miss: the block is recomputed
            logger.warning("KV block %s on disk is unusable (%s: %s); it will be recomputed", key.hex(), type(exc).__name__, exc)
            with self._lock:
                self.keys.pop(key, None)
                self.path(key).unlink(missing_ok=True)
                self.num_corrupt += 1
            return None
        with self._lock:
            if key in self.keys:
                self.keys.move_to_end(key)
            self.num_read += 1
            self.bytes_moved += size
        return k, v


_DTYPES = {name: getattr(torch, name) for name in ("bfloat16", "float16", "float32", "float64", "float8_e4m3fn", "float8_e5m2", "uint8", "int8")
           if hasattr(torch, name)}


def _digest(key: bytes, header: bytes, payload: bytes) -> bytes:
    return hashlib.blake2b(key + b"|" + header + b"|" + payload, digest_size=16).digest()


def _private_dir(directory: Path) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise KVTierError(f"disk KV folder {directory} is not a folder (a symlink?)")
    if st.st_uid != os.getuid():
        raise KVTierError(f"disk KV folder {directory} belongs to uid {st.st_uid}, not this user (uid {os.getuid()}); "
                          "refusing to use KV blocks someone else can write")
    if st.st_mode & 0o077:
        os.chmod(directory, 0o700)
    return directory


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a stale file or a planted link: removed, never followed
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # rename replaces a link at `path` itself, never its target


def _read_private(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise ValueError("not a regular file of this user")
        return f.read()


def _parse(key: bytes, raw: bytes) -> tuple[torch.Tensor, torch.Tensor, int]:
    if not raw.startswith(_MAGIC):
        raise ValueError("bad magic")
    header, rest = raw[len(_MAGIC) :].split(b"\n", 1)
    digest, payload = rest[:16], rest[16:]
    if not hmac.compare_digest(digest, _digest(key, header, payload)):
        raise ValueError("checksum mismatch (corrupt, or the block of another key)")
    meta = json.loads(header)
    shape, dtype = meta["shape"], _DTYPES[meta["dtype"]]
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
        raise ValueError(f"bad shape {shape!r}")
    if 2 * math.prod(shape) * dtype.itemsize != len(payload):
        raise ValueError(f"payload of {len(payload)} bytes does not hold two {shape} {meta['dtype']} tensors")
    flat = torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(dtype)
    k, v = flat.view(2, *shape).unbind(0)
    return k, v, len(payload)


class HostKVTier:
    """Up to `capacity_blocks` KV blocks in host memory: key -> a slot of reusable host buffers
    (`HostBuffers`) holding (k, v), each [layers, block, heads, dim].

    Blocks dropped from host memory go to the `disk` tier when there is one, but only those used at
    least `disk_min_hits` times (prefix-cache hits on the device plus restores from this tier):
    a block nobody reused is unlikely to be reused, and disk writes are the expensive ones.

    With a `storage` worker (the engine's), disk writes and prefetch reads run on its thread under
    its byte budget: a block on its way to disk stays readable from its slot until written
    ("write-back"), and prefetched blocks wait in `_fetched` until the step thread `collect`s them.
    Without one, disk I/O is synchronous (the simple twin). Only the step thread calls the public
    methods; the worker touches the write-back map, the buffers and `_fetched`, under `_lock`."""

    def __init__(self, capacity_blocks: int, disk: DiskKVTier | None = None, disk_min_hits: int = 2,
                 storage: StorageWorker | None = None) -> None:
        if capacity_blocks < 1:
            raise ValueError(f"capacity_blocks must be >= 1, got {capacity_blocks}")
        self.disk = disk
        self.storage = storage
        self.capacity = capacity_blocks
        self.disk_min_hits = disk_min_hits
        self.buffers = HostBuffers(min(64, capacity_blocks))
        self.blocks: OrderedDict[bytes, int] = OrderedDict()  # key -> slot, least recently used first
        self.writeback: dict[bytes, int] = {}  # key -> slot being written to disk
        self.hits: dict[bytes, int] = {}  # uses of each host block (device hits before offload + restores)
        self.num_offloaded = self.num_restored = self.num_dropped = self.num_not_admitted = 0
        self.num_write_refused = self.num_prefetched = 0
        self.bytes_moved = 0
        self.restore_seconds = 0.0  # time spent copying restored blocks (the resume cost of a paused agent)
        self.offload_seconds = 0.0  # time spent copying blocks to the host (a same-size copy the other way)
        self._prefetching: set[bytes] = set()
        self._fetched: deque[tuple[bytes, int]] = deque()
        self._copied: dict[int, torch.cuda.Event] = {}  # slot -> its device-to-host copy (CUDA only)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.blocks)

    def __contains__(self, key: bytes) -> bool:
        return key in self.blocks or key in self.writeback or (self.disk is not None and key in self.disk)

    def resident(self, key: bytes) -> bool:
        """In host memory (restorable without reading the disk)."""
        return key in self.blocks or key in self.writeback

    def touch(self, key: bytes) -> None:
        """Mark a block most recently used (it is about to be restored)."""
        if key in self.blocks:
            self.blocks.move_to_end(key)

    def offload(self, key: bytes, k: torch.Tensor, v: torch.Tensor, hits: int = 0) -> None:
        """Copy one block's KV (device views) into a host slot, evicting the LRU block if full.
        `hits` is how often the block was used while on the device."""
        self.hits[key] = self.hits.get(key, 0) + hits
        if key in self.blocks:
            self.blocks.move_to_end(key)
            return
        while len(self.blocks) >= self.capacity:
            self._drop_lru()
        pin = torch.cuda.is_available() and k.device.type == "cuda"
        with self._lock:
            slot = self.buffers.acquire(k, v, pin)
        hk, hv = self.buffers.kv(slot)
        start = time.perf_counter()
        hk.copy_(k, non_blocking=pin)
        hv.copy_(v, non_blocking=pin)
        self.offload_seconds += time.perf_counter() - start  # on CUDA the copy's launch only: a lower bound
        if pin:  # a worker thread reading this slot waits for the copy first
            event = torch.cuda.Event()
            event.record()
            with self._lock:
                self._copied[slot] = event
        self.blocks[key] = slot
        self.num_offloaded += 1
        self.bytes_moved += 2 * k.numel() * k.element_size()

    def _drop_lru(self) -> None:
        old, slot = self.blocks.popitem(last=False)
        self.num_dropped += 1
        if self.disk is not None and self.hits.pop(old, 0) >= self.disk_min_hits:
            self._write_to_disk(old, slot)
            return
        if self.disk is not None:
            self.num_not_admitted += 1
        self.hits.pop(old, None)
        with self._lock:
            self.buffers.release(slot)

    def _write_to_disk(self, key: bytes, slot: int) -> None:
        assert self.disk is not None
        if self.storage is None:
            self._write_back(key, slot)
            return
        with self._lock:
            self.writeback[key] = slot
        hk, hv = self.buffers.kv(slot)
        nbytes = hk.numel() * hk.element_size() + hv.numel() * hv.element_size()
        if not self.storage.submit(nbytes, lambda: self._write_back(key, slot)):
            self.num_write_refused += 1  # the disk is behind: this block is not kept
            with self._lock:
                if self.writeback.get(key) == slot:
                    del self.writeback[key]
                self.buffers.release(slot)

    def _write_back(self, key: bytes, slot: int) -> None:
        """Write a slot to disk, then free it (storage thread, or the caller's without a worker)."""
        assert self.disk is not None
        with self._lock:
            event = self._copied.pop(slot, None)
        if event is not None:
            event.synchronize()
        try:
            self.disk.store(key, *self.buffers.kv(slot))
        finally:
            with self._lock:
                if self.writeback.get(key) == slot:
                    del self.writeback[key]
                self.buffers.release(slot)

    def prefetch(self, keys: list[bytes]) -> int:
        """Start reading the blocks of `keys` that are only on disk into host slots, on the storage
        worker (no-op without one); `collect` admits them. Returns how many reads were started."""
        if self.storage is None or self.disk is None or self.buffers.num_allocated == 0:
            return 0
        started = 0
        for key in keys:
            if key in self.blocks or key in self.writeback or key in self._prefetching or key not in self.disk:
                continue
            with self._lock:
                slot = self.buffers.acquire_another()
            hk, hv = self.buffers.kv(slot)
            nbytes = hk.numel() * hk.element_size() + hv.numel() * hv.element_size()
            self._prefetching.add(key)
            if not self.storage.submit(nbytes, lambda key=key, slot=slot: self._read_back(key, slot)):  # type: ignore[misc]
                self._prefetching.discard(key)
                with self._lock:
                    self.buffers.release(slot)
                break
            started += 1
        return started

    def _read_back(self, key: bytes, slot: int) -> None:
        """Read a disk block into `slot` (storage thread); a miss frees the slot."""
        assert self.disk is not None
        loaded = self.disk.load(key)
        hk, hv = self.buffers.kv(slot)
        ok = loaded is not None and loaded[0].shape == hk.shape and loaded[0].dtype == hk.dtype
        if ok:
            hk.copy_(loaded[0])  # type: ignore[index]
            hv.copy_(loaded[1])  # type: ignore[index]
        with self._lock:
            if ok:
                self._fetched.append((key, slot))
            else:
                self._prefetching.discard(key)
                self.buffers.release(slot)

    def collect(self) -> int:
        """Admit the blocks prefetched since the last call (step thread). Returns how many."""
        admitted = 0
        while self._fetched:
            with self._lock:
                key, slot = self._fetched.popleft()
            self._prefetching.discard(key)
            if key in self.blocks:
                with self._lock:
                    self.buffers.release(slot)
                continue
            while len(self.blocks) >= self.capacity:
                self._drop_lru()
            self.blocks[key] = slot
            admitted += 1
        self.num_prefetched += admitted
        return admitted

    def restore(self, key: bytes, k_dst: torch.Tensor, v_dst: torch.Tensor) -> str | None:
        """Copy a stored block (host, else disk) into device views; returns the tier that served it
        ("host" or "disk"), or None when it cannot be read (a corrupt or missing disk block): the
        caller recomputes it."""
        source = "host"
        with self._lock:
            slot = self.blocks.get(key, self.writeback.get(key))
        if slot is not None:
            if key in self.blocks:
                self.hits[key] = self.hits.get(key, 0) + 1
                self.blocks.move_to_end(key)
            hk, hv = self.buffers.kv(slot)
        else:
            loaded = self.disk.load(key) if self.disk is not None else None
            if loaded is None:
                return None
            hk, hv = loaded
            source = "disk"
            if hk.shape != k_dst.shape or hk.dtype != k_dst.dtype:  # from another model or config: a miss
                logger.warning("KV block %s on disk has shape %s %s, expected %s %s", key.hex(), tuple(hk.shape), hk.dtype,
                               tuple(k_dst.shape), k_dst.dtype)
                self.disk.num_corrupt += 1  # type: ignore[union-attr]
                self.disk.forget(key)  # type: ignore[union-attr]
                return None
        start = time.perf_counter()
        k_dst.copy_(hk, non_blocking=True)
        v_dst.copy_(hv, non_blocking=True)
        self.restore_seconds += time.perf_counter() - start  # on CUDA the copy's launch only: a lower bound
        self.num_restored += 1
        self.bytes_moved += 2 * hk.numel() * hk.element_size()
        return source
