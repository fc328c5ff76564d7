"""The engine's storage pool: KV block I/O off the step thread, and reusable host buffers.

* `HostBuffers`: host memory for KV blocks in reusable slots, allocated a chunk of slots at a time
  (pinned when the device is CUDA) and never freed while the engine lives: offloading a block
  copies into a free slot instead of allocating a fresh (pinned) tensor per block.
* `StorageWorker`: a thread that runs storage jobs (a host block written to the disk tier, a disk
  block read back into a host slot for a prefetch) under a byte budget. `submit` never blocks: a job
  that would exceed the bytes in flight is refused (the caller drops the write or skips the
  prefetch; the block is recomputed if it is needed again), so a slow disk can never stall a step.
  The thread starts on the first job and ends after `idle_seconds` without one.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)


class HostBuffers:
    """Slots of host memory, each holding one block's (k, v). Not thread-safe by itself: the host
    tier calls it under its lock."""

    def __init__(self, chunk_blocks: int = 64) -> None:
        if chunk_blocks < 1:
            raise ValueError(f"chunk_blocks must be >= 1, got {chunk_blocks}")
        self.chunk_blocks = chunk_blocks
        self._k: list[torch.Tensor] = []  # chunks: [chunk_blocks, *block_shape]
        self._v: list[torch.Tensor] = []
        self._free: list[int] = []
        self._spec: tuple[torch.Size, torch.Size, torch.dtype, bool] | None = None

    @property
    def num_allocated(self) -> int:
        return len(self._k) * self.chunk_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def acquire(self, k_like: torch.Tensor, v_like: torch.Tensor, pin: bool) -> int:
        """A free slot for blocks shaped like (k_like, v_like); grows by a chunk when none is free.
        Raises ValueError for a shape or dtype other than the first block's."""
        spec = (k_like.shape, v_like.shape, k_like.dtype, pin)
        if self._spec is None:
            self._spec = spec
        elif spec != self._spec:
            raise ValueError(f"host KV buffers hold {self._spec[:3]} blocks, got {spec[:3]}")
        return self.acquire_another()

    def acquire_another(self) -> int:
        """A free slot shaped like the blocks already held (ValueError before the first `acquire`)."""
        if self._spec is None:
            raise ValueError("no block shape yet: call acquire with a block first")
        if not self._free:
            k_shape, v_shape, dtype, pin = self._spec
            base = self.num_allocated
            self._k.append(torch.empty((self.chunk_blocks, *k_shape), dtype=dtype, pin_memory=pin))
            self._v.append(torch.empty((self.chunk_blocks, *v_shape), dtype=dtype, pin_memory=pin))
            self._free.extend(range(base + self.chunk_blocks - 1, base - 1, -1))
        return self._free.pop()

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def kv(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the slot's (k, v)."""
        chunk, row = divmod(slot, self.chunk_blocks)
        return self._k[chunk][row], self._v[chunk][row]


class StorageWorker:
    """Runs storage jobs on one background thread with at most `budget_bytes` in flight."""

    def __init__(self, budget_bytes: int, idle_seconds: float = 5.0) -> None:
        if budget_bytes < 1:
            raise ValueError(f"budget_bytes must be >= 1, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.idle_seconds = idle_seconds
        self.bytes_in_flight = 0
        self.num_done = self.num_refused = self.num_failed = 0
        self._jobs: queue.SimpleQueue[tuple[int, Callable[[], None]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def submit(self, nbytes: int, job: Callable[[], None]) -> bool:
        """Queue `job` (moving `nbytes`); False, without queueing it, when the budget is used up."""
        with self._lock:
            if self.bytes_in_flight and self.bytes_in_flight + nbytes > self.budget_bytes:
                self.num_refused += 1
                return False
            self.bytes_in_flight += nbytes
            self._jobs.put((nbytes, job))  # under the lock: an idle thread about to end sees it
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="engine-kv-storage", daemon=True)
                self._thread.start()
        return True

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no job is queued or running; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self.bytes_in_flight == 0, timeout)

    def _serve(self) -> None:
        while True:
            try:
                nbytes, job = self._jobs.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            try:
                job()
            except Exception:  # a failed write or read loses that block only (recomputed if needed)
                logger.exception("KV storage job failed")
                self.num_failed += 1
            with self._idle:
                self.bytes_in_flight -= nbytes
                self.num_done += 1
                self._idle.notify_all()
