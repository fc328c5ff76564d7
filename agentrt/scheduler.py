"""Which waiting task runs next on which pool. Pure and synchronous (no event loop, no I/O).

Policies: "las" (program-level least-attained-service, as in Autellix: the job that has received
the least service so far goes first, so short programs are not stuck behind long ones) and "fcfs"
(job arrival order). An explicit job priority dominates either. Each pool has its own queue and
capacity, so a task that does not fit its pool never blocks tasks of other pools.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from agentrt.types import Pool, Task


@dataclass(slots=True)
class PoolLimits:
    """Capacity per pool in units (concurrent tasks); the GPU pool is also bounded by tokens (KV)."""

    gpu: int = 64
    cpu: int = 8
    storage: int = 4
    gpu_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("gpu", "cpu", "storage"):
            if getattr(self, name) < 1:
                raise ValueError(f"pool capacity {name} must be >= 1, got {getattr(self, name)}")

    def capacity(self, pool: Pool) -> int:
        return {Pool.GPU: self.gpu, Pool.CPU: self.cpu, Pool.STORAGE: self.storage}.get(pool, 1 << 30)


@dataclass(slots=True)
class _Job:
    priority: int
    arrival: int
    service: float = 0.0


@dataclass(slots=True)
class Scheduler:
    policy: str = "las"
    limits: PoolLimits = field(default_factory=PoolLimits)
    in_use: dict[Pool, int] = field(default_factory=dict)
    tokens_in_use: int = 0
    _jobs: dict[str, _Job] = field(default_factory=dict)
    _queues: dict[Pool, list[tuple[tuple[float, ...], int, Task]]] = field(default_factory=dict)
    _counter: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        if self.policy not in ("las", "fcfs"):
            raise ValueError(f"policy must be 'las' or 'fcfs', got {self.policy!r}")

    def submit_job(self, job_id: str, priority: int = 0) -> None:
        self._jobs[job_id] = _Job(priority, next(self._counter))

    def finish_job(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def attained_service(self, job_id: str) -> float:
        return self._jobs[job_id].service

    def enqueue(self, task: Task) -> None:
        """Queue a task that is ready to run (its job must be submitted)."""
        self._queues.setdefault(task.pool, []).append((self._key(task.job_id), next(self._counter), task))

    def _key(self, job_id: str) -> tuple[float, ...]:
        job = self._jobs[job_id]
        service = job.service if self.policy == "las" else 0.0
        return (-job.priority, service, job.arrival)

    def cancel(self, task: Task) -> bool:
        """Drop a queued task; False if it was not queued."""
        queue = self._queues.get(task.pool, [])
        for i, (_, _, t) in enumerate(queue):
            if t is task:
                queue.pop(i)
                return True
        return False

    def fits(self, task: Task) -> bool:
        if self.in_use.get(task.pool, 0) + task.units > self.limits.capacity(task.pool):
            return False
        budget = self.limits.gpu_tokens
        if task.pool is Pool.GPU and budget is not None and self.tokens_in_use > 0:
            return self.tokens_in_use + task.est_tokens <= budget
        return True

    def pick(self) -> list[Task]:
        """Tasks to start now, best first per pool, never exceeding any pool's capacity."""
        started = []
        for pool, queue in self._queues.items():
            # Keys are refreshed so LAS sees service attained since enqueue.
            queue[:] = [(self._key(t.job_id) if t.job_id in self._jobs else k, n, t) for k, n, t in queue]
            heapq.heapify(queue)
            skipped = []
            while queue:
                item = heapq.heappop(queue)
                if self.fits(item[2]):
                    self._acquire(item[2])
                    started.append(item[2])
                elif self.in_use.get(pool, 0) >= self.limits.capacity(pool):
                    skipped.append(item)
                    break
                else:
                    skipped.append(item)  # too big for what is left (tokens); a smaller one may fit
            for item in skipped:
                heapq.heappush(queue, item)
        return started

    def _acquire(self, task: Task) -> None:
        self.in_use[task.pool] = self.in_use.get(task.pool, 0) + task.units
        if task.pool is Pool.GPU:
            self.tokens_in_use += task.est_tokens

    def release(self, task: Task, service: float) -> None:
        """Return a started task's capacity and credit `service` (e.g. seconds) to its job."""
        self.in_use[task.pool] -= task.units
        if task.pool is Pool.GPU:
            self.tokens_in_use -= task.est_tokens
        if task.job_id in self._jobs:
            self._jobs[task.job_id].service += service

    @property
    def num_queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def peek(self, pool: Pool, n: int) -> list[Task]:
        """The next `n` tasks `pick` would consider for `pool`, in order (nothing changes)."""
        return [t for _, _, t in heapq.nsmallest(n, self._queues.get(pool, []))]

    def num_queued_in(self, pool: Pool) -> int:
        """Tasks waiting for `pool` (an arriving task's steps-to-execution estimate)."""
        return len(self._queues.get(pool, []))
