"""Which waiting task runs next on which pool. Pure and synchronous (no event loop, no I/O).

Policies: "las" (program-level least-attained-service, as in Autellix: the job that has received
the least service so far goes first, so short programs are not stuck behind long ones), "gittins"
(the Gittins index of the job's attained service under the distribution of finished jobs' service,
learned online; the default) and "fcfs" (job arrival order). An explicit job priority dominates.

Why Gittins: among policies that do not know a job's size, it minimises mean completion time in a
single-server queue for the job-size distribution at hand (Gittins 1989; Scully & Harchol-Balter,
SIGMETRICS 2018, for M/G/1). Where sizes are heavy-tailed (the longer a job has run, the longer it
will run, the programs Autellix measured) its order is LAS's; where they are not, it serves the jobs
closest to done first, and LAS's processor sharing among equals is what it avoids. On the agent-serving
benchmark's tau-bench jobs (sizes within ~3x of each other) engine-level LAS made every job finish
late and its preempted requests lose their KV: mean job time 1.39x the baseline's, 154k tokens
recomputed (docs/benchmarks.md). Until `GITTINS_MIN_JOBS` jobs have finished, "gittins" puts every
job in one level (first come first served by program).

Each pool has its own queue and capacity, so a task that does not fit its pool never blocks tasks of
other pools.

Service is engine work, not wall time: the runtime credits each finished task with the tokens the
engine computed and decoded for it (0 for tools and sub-agent coordination), so a job that waited
long in queues or on tools but consumed little keeps its priority. For parallel sub-agents the job's
service is its critical path (Autellix's ATLAS): a task's cumulative service is the largest of its
dependencies' plus its own, and the job's service is the largest cumulative service of any task,
so k siblings each doing s count s, not k*s.

Cost: per pool, a heap of jobs that have queued tasks (entries go stale lazily when a job's service
changes), and per job and pool a FIFO of its tasks. `enqueue`, `cancel` and `release` are O(log J)
(J = jobs with queued tasks); `pick` is O(log J) per task started and stops at once when its pool
is full. Nothing is re-heapified.
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from agentrt.types import Pool, Task

# An explicit job priority outranks any amount of attained service in the engine's priority.
PRIORITY_STRIDE = 1 << 40


LAS_QUANTUM = 2048  # tokens of engine work in the first LAS level; each further level doubles
LAS_LEVELS = 8
POLICIES = ("gittins", "las", "fcfs")
GITTINS_MIN_JOBS = 16  # finished jobs before the index is used (before: one level, FCFS by program)
GITTINS_JOBS = 512  # finished jobs' service remembered (the most recent)
GITTINS_MID = 8  # the level of a job that has attained nothing; each level is half an octave of index


def las_level(service: float) -> int:
    """0 below LAS_QUANTUM tokens of service, then 1 + floor(log2(service / LAS_QUANTUM)), capped."""
    if service < LAS_QUANTUM:
        return 0
    return min(LAS_LEVELS - 1, 1 + int(math.log2(service / LAS_QUANTUM)))


class ServiceDistribution:
    """The total service of the last `capacity` finished jobs, and the Gittins index of a job that
    has attained `a`: the best, over horizons d, of P(it finishes within d more) / E[service it uses
    in those d] under that empirical distribution. O(n) per index, O(n) per added job (n <= capacity)."""

    def __init__(self, capacity: int = GITTINS_JOBS) -> None:
        self._recent: deque[float] = deque(maxlen=capacity)
        self._sorted: list[float] = []
        self._g0: float | None = None  # index(0), cached until the next add

    def __len__(self) -> int:
        return len(self._recent)

    def add(self, service: float) -> None:
        if len(self._recent) == self._recent.maxlen:
            del self._sorted[bisect_left(self._sorted, self._recent[0])]
        self._recent.append(service)
        insort(self._sorted, service)
        self._g0 = None

    def index(self, attained: float) -> float | None:
        """The Gittins index at `attained` (None: longer than every finished job). The best horizon
        is always one of the remaining sizes, so only those are tried."""
        sizes, first = self._sorted, bisect_right(self._sorted, attained)
        m = len(sizes) - first  # the survivors
        if m == 0:
            return None
        best = used = 0.0
        for k in range(1, m + 1):
            r = sizes[first + k - 1] - attained
            used += r  # sum of min(remaining, r) over the survivors: the first k in full, the rest r each
            best = max(best, k / (used + (m - k) * r))
        return best

    def level(self, attained: float) -> int:
        """0 (most urgent) .. 2 * GITTINS_MID: GITTINS_MID minus twice log2 of the index relative to a
        fresh job's. GITTINS_MID until GITTINS_MIN_JOBS have finished, and for a job past every
        finished one: the sample says nothing about it (short jobs finish first, so early samples are
        biased short), and ranking it last starved the long jobs until their KV was gone (agent
        serving: 148k tokens recomputed)."""
        if len(self) < GITTINS_MIN_JOBS:
            return GITTINS_MID
        if self._g0 is None:
            self._g0 = self.index(0.0)
        g, g0 = self.index(attained), self._g0
        if g is None or g0 is None:  # g0 is set: every sample is > 0 (finish_job adds only served jobs)
            return GITTINS_MID
        return max(0, min(2 * GITTINS_MID, GITTINS_MID - math.floor(2 * math.log2(g / g0))))


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
        if pool is Pool.GPU:
            return self.gpu
        if pool is Pool.CPU:
            return self.cpu
        return self.storage if pool is Pool.STORAGE else 1 << 30


@dataclass(slots=True)
class ServingPolicy:
    """Which program-aware mechanisms the runtime applies on top of its pool scheduling (all off is a
    plain request-level serving stack, the agent-serving benchmark's "vllm-like" row; all on is its
    "agentrt" row, the full stack).

    Defaults follow that benchmark (docs/benchmarks.md, 3 repeats at saturation): graph hints are off,
    because on a CPU they cost step-thread time (walks, prefetches, pausing's host copies) that their
    cache savings did not repay (+graph 0.84x the baseline's mean job time); engine priority, pins and
    parallel tool calls are on (no measurable change there; they are what saves recompute where it is
    dear, a GPU under KV pressure). Turn `graph_hints` on where a restore or recompute costs more than
    the bookkeeping."""

    engine_priority: bool = True  # LLM requests carry the job's priority (Gittins or LAS) into the engine (Autellix)
    tool_pins: bool = True  # pin a turn's KV at its tool calls, TTL learned per tool (Continuum)
    graph_hints: bool = False  # steps-to-execution hints and host prefetch from the job's graph (KVFlow)
    parallel_tools: bool = True  # a turn's independent tool calls run concurrently


@dataclass(slots=True)
class _Job:
    job_id: str
    priority: int
    arrival: int
    service: float = 0.0
    version: int = 0  # bumped when the job's rank changes; older heap entries are stale
    queues: dict[Pool, deque[Task]] = field(default_factory=dict)
    in_heap: set[Pool] = field(default_factory=set)  # pools holding a live entry for this job
    base: dict[str, float] = field(default_factory=dict)  # task -> cumulative service of its deps at enqueue
    path: dict[str, float] = field(default_factory=dict)  # task -> cumulative service when it finished


@dataclass(slots=True)
class Scheduler:
    policy: str = "gittins"
    limits: PoolLimits = field(default_factory=PoolLimits)
    in_use: dict[Pool, int] = field(default_factory=dict)
    tokens_in_use: int = 0
    num_heap_ops: int = 0  # heap pushes and pops so far (the cost model's unit, checked by tests)
    _jobs: dict[str, _Job] = field(default_factory=dict)
    _heaps: dict[Pool, list[tuple[tuple[float, ...], int, str]]] = field(default_factory=dict)
    _queued: set[str] = field(default_factory=set)  # ids of queued (not cancelled) tasks
    _num_queued: dict[Pool, int] = field(default_factory=dict)
    _counter: itertools.count = field(default_factory=itertools.count)
    sizes: ServiceDistribution = field(default_factory=ServiceDistribution)  # finished jobs' service ("gittins")

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {self.policy!r}")

    # ---- jobs ----------------------------------------------------------------------------
    def submit_job(self, job_id: str, priority: int = 0) -> None:
        self._jobs[job_id] = _Job(job_id, priority, next(self._counter))

    def finish_job(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            if job.service > 0:
                self.sizes.add(job.service)
            for pool, queue in job.queues.items():
                for t in queue:
                    if t.id in self._queued:
                        self._queued.discard(t.id)
                        self._num_queued[pool] -= 1

    def attained_service(self, job_id: str) -> float:
        return self._jobs[job_id].service

    def engine_priority(self, job_id: str) -> int:
        """The priority the job's LLM requests get in the engine (lower is more urgent): under "las"
        its attained service's level (`las_level`), under "gittins" its index's level
        (`ServiceDistribution.level`), 0 under "fcfs"; an explicit job priority dominates.

        Levels, not raw tokens: in the engine a priority inversion preempts a running request (its
        KV is recomputed), so jobs of similar service share a level and are served first come first
        served within it, as in Autellix's discretised PLAS queues."""
        job = self._jobs.get(job_id)
        if job is None:
            return 0
        return -job.priority * PRIORITY_STRIDE + self._level(job)

    def _level(self, job: _Job) -> int:
        if self.policy == "las":
            return las_level(job.service)
        return self.sizes.level(job.service) if self.policy == "gittins" else 0

    def _key(self, job: _Job) -> tuple[float, ...]:
        if self.policy == "las":
            return (-job.priority, job.service, job.arrival)
        return (-job.priority, float(self._level(job)), job.arrival)

    def _push(self, job: _Job, pool: Pool) -> None:
        job.in_heap.add(pool)
        self.num_heap_ops += 1
        heapq.heappush(self._heaps.setdefault(pool, []), (self._key(job), job.version, job.job_id))

    # ---- tasks ---------------------------------------------------------------------------
    def try_start(self, task: Task) -> bool:
        """Start `task` at once when nothing of its pool waits and it fits (what `enqueue` then
        `pick` would do, in O(1)); False: it must be enqueued. Its job must be submitted."""
        if self._num_queued.get(task.pool, 0) or not self.fits(task):
            return False
        self._note_base(self._jobs[task.job_id], task)
        self._acquire(task)
        return True

    def _note_base(self, job: _Job, task: Task) -> None:
        if task.deps:
            job.base[task.id] = max(job.path.get(d, job.base.get(d, 0.0)) for d in task.deps)

    def enqueue(self, task: Task) -> None:
        """Queue a task that is ready to run (its job must be submitted; `task.deps` set)."""
        job = self._jobs[task.job_id]
        self._note_base(job, task)
        job.queues.setdefault(task.pool, deque()).append(task)
        self._queued.add(task.id)
        self._num_queued[task.pool] = self._num_queued.get(task.pool, 0) + 1
        if task.pool not in job.in_heap:
            self._push(job, task.pool)

    def cancel(self, task: Task) -> bool:
        """Drop a queued task (lazily: it is skipped when it surfaces); False if it was not queued."""
        if task.id not in self._queued:
            return False
        self._queued.discard(task.id)
        self._num_queued[task.pool] -= 1
        return True

    def fits(self, task: Task) -> bool:
        if self.in_use.get(task.pool, 0) + task.units > self.limits.capacity(task.pool):
            return False
        budget = self.limits.gpu_tokens
        if task.pool is Pool.GPU and budget is not None and self.tokens_in_use > 0:
            return self.tokens_in_use + task.est_tokens <= budget
        return True

    def pick(self) -> list[Task]:
        """Tasks to start now, best job first per pool, never exceeding any pool's capacity."""
        started: list[Task] = []
        for pool, heap in self._heaps.items():
            skipped = []
            while heap and self.in_use.get(pool, 0) < self.limits.capacity(pool):
                entry = heapq.heappop(heap)
                self.num_heap_ops += 1
                job = self._jobs.get(entry[2])
                if job is None or entry[1] != job.version or pool not in job.in_heap:
                    continue  # stale: the job finished or was re-ranked
                job.in_heap.discard(pool)
                task = self._take_fitting(job.queues[pool])
                if task is None:
                    if job.queues[pool]:
                        skipped.append(job)  # nothing of it fits what is left; a smaller one may
                    continue
                self._acquire(task)
                started.append(task)
                if job.queues[pool]:
                    self._push(job, pool)
            for job in skipped:
                self._push(job, pool)
        return started

    def _take_fitting(self, queue: deque[Task]) -> Task | None:
        """Remove and return the first live task of `queue` that fits its pool now (cancelled
        tasks at the head are dropped on the way)."""
        while queue and queue[0].id not in self._queued:
            queue.popleft()
        for i, task in enumerate(queue):
            if task.id in self._queued and self.fits(task):
                del queue[i]  # i == 0 unless tasks ahead of it are too big for what is left
                self._queued.discard(task.id)
                self._num_queued[task.pool] -= 1
                return task
        return None

    def _acquire(self, task: Task) -> None:
        self.in_use[task.pool] = self.in_use.get(task.pool, 0) + task.units
        if task.pool is Pool.GPU:
            self.tokens_in_use += task.est_tokens

    def release(self, task: Task, service: float) -> None:
        """Return a started task's capacity and credit `service` (engine work, e.g. tokens computed
        and decoded) to its job along the critical path (see the module docstring)."""
        self.in_use[task.pool] -= task.units
        if task.pool is Pool.GPU:
            self.tokens_in_use -= task.est_tokens
        job = self._jobs.get(task.job_id)
        if job is None:
            return
        cum = max(job.base.pop(task.id, 0.0), job.path.get(task.id, 0.0)) + service
        job.path[task.id] = cum
        if task.parent is not None:  # a sub-agent's service is the longest chain under it
            job.path[task.parent] = max(job.path.get(task.parent, 0.0), cum)
        if cum > job.service:
            job.service = cum
            if self.policy != "fcfs":
                job.version += 1  # re-rank: fresh entries, the old ones go stale
                for pool in list(job.in_heap):
                    self._push(job, pool)

    # ---- introspection -------------------------------------------------------------------
    @property
    def has_queued(self) -> bool:
        return any(self._num_queued.values())

    @property
    def num_queued(self) -> int:
        return sum(self._num_queued.values())

    def num_queued_in(self, pool: Pool) -> int:
        """Tasks waiting for `pool` (an arriving task's steps-to-execution estimate)."""
        return self._num_queued.get(pool, 0)

    def queued(self, pool: Pool) -> Iterator[Task]:
        """Every queued task of `pool`, in no particular order."""
        for job in self._jobs.values():
            yield from (t for t in job.queues.get(pool, ()) if t.id in self._queued)

    def peek(self, pool: Pool, n: int) -> list[Task]:
        """The next `n` tasks `pick` would consider for `pool`, in order (O(n log J): the best
        live entries are popped and pushed back; stale ones met on the way are dropped)."""
        heap = self._heaps.get(pool, [])
        live: list[tuple[tuple[float, ...], int, str]] = []
        out: list[Task] = []
        while heap and len(out) < n:
            entry = heapq.heappop(heap)
            job = self._jobs.get(entry[2])
            if job is None or entry[1] != job.version or pool not in job.in_heap:
                continue
            live.append(entry)
            out += [t for t in itertools.islice(job.queues[pool], n + 8) if t.id in self._queued][: n - len(out)]
        for entry in live:
            heapq.heappush(heap, entry)
        return out
