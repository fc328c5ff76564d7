"""The pure scheduling policy: LAS, Gittins, priorities, FCFS, capacity limits (no event loop)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt.scheduler import (
    GITTINS_MID,
    GITTINS_MIN_JOBS,
    PoolLimits,
    Scheduler,
    ServiceDistribution,
    las_level,
)
from agentrt.types import Pool, Task, TaskKind

_n = iter(range(10**9))


def task(job: str, pool: Pool = Pool.CPU, units: int = 1, tokens: int = 0) -> Task:
    return Task(f"t{next(_n)}", job, "x", TaskKind.TOOL, pool, units=units, est_tokens=tokens)


def test_las_runs_the_job_with_least_attained_service_first() -> None:
    s = Scheduler("las", PoolLimits(cpu=1))
    for j in ("old", "new"):
        s.submit_job(j)
    first = task("old")
    s.enqueue(first)
    assert s.pick() == [first]
    s.release(first, service=5.0)
    a, b = task("old"), task("new")
    s.enqueue(a)
    s.enqueue(b)
    assert s.pick() == [b]  # "new" has attained 0 < 5


def test_fcfs_runs_by_job_arrival_and_priority_dominates() -> None:
    s = Scheduler("fcfs", PoolLimits(cpu=1))
    s.submit_job("a")
    s.submit_job("b")
    s.submit_job("vip", priority=10)
    ta, tb, tv = task("a"), task("b"), task("vip")
    for t in (tb, ta, tv):
        s.enqueue(t)
    order = []
    for _ in range(3):
        (t,) = s.pick()
        order.append(t.job_id)
        s.release(t, 100.0)
    assert order == ["vip", "a", "b"]


def test_a_full_pool_does_not_block_other_pools() -> None:
    s = Scheduler("las", PoolLimits(cpu=1, storage=1))
    s.submit_job("j")
    c1, c2, io = task("j"), task("j"), task("j", Pool.STORAGE)
    for t in (c1, c2, io):
        s.enqueue(t)
    assert set(s.pick()) == {c1, io}


def test_gpu_token_budget_admits_what_fits() -> None:
    s = Scheduler("las", PoolLimits(gpu=8, gpu_tokens=1000))
    s.submit_job("j")
    big, big2, small = task("j", Pool.GPU, tokens=800), task("j", Pool.GPU, tokens=800), task("j", Pool.GPU, tokens=150)
    for t in (big, big2, small):
        s.enqueue(t)
    assert s.pick() == [big, small]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["enq", "pick", "rel"]), st.integers(0, 2), st.integers(1, 3)), max_size=60))
def test_capacity_is_never_exceeded_and_fitting_work_is_never_left_waiting(ops: list[tuple[str, int, int]]) -> None:
    limits = PoolLimits(cpu=3, storage=2)
    s = Scheduler("las", limits)
    for j in range(3):
        s.submit_job(f"j{j}")
    running: list[Task] = []
    for op, j, units in ops:
        if op == "enq":
            s.enqueue(task(f"j{j}", Pool.CPU if units != 3 else Pool.STORAGE, units=min(units, 2)))
        elif op == "pick":
            running += s.pick()
        elif running:
            s.release(running.pop(0), service=units)
        for pool in (Pool.CPU, Pool.STORAGE):
            assert s.in_use.get(pool, 0) <= limits.capacity(pool)
    running += s.pick()
    # After a pick, nothing left in a queue could have fitted.
    for pool in (Pool.CPU, Pool.STORAGE):
        free = limits.capacity(pool) - s.in_use.get(pool, 0)
        assert all(t.units > free for t in s.queued(pool))


def test_a_job_that_waited_long_but_consumed_little_keeps_its_priority() -> None:
    """Service is engine work credited at release, not time spent queued or on tools."""
    s = Scheduler("las", PoolLimits(gpu=1))
    s.submit_job("patient")
    s.submit_job("heavy")
    waited = task("patient", Pool.GPU)
    s.enqueue(waited)
    hog = task("heavy", Pool.GPU)
    s.enqueue(hog)
    (first,) = s.pick()  # patient first (earlier arrival, both at 0 service) ...
    waited.created -= 3600.0  # ... it has been around for an hour of wall time,
    s.release(first, service=10)  # but the engine did 10 tokens of work for it
    (second,) = s.pick()
    s.release(second, service=5000)  # the heavy job's call computed 5000 tokens
    a, b = task("heavy", Pool.GPU), task("patient", Pool.GPU)
    s.enqueue(a)
    s.enqueue(b)
    assert s.pick() == [b]
    assert s.engine_priority("patient") < s.engine_priority("heavy")


def test_parallel_sub_agents_count_their_critical_path_not_their_sum() -> None:
    s = Scheduler("las", PoolLimits(gpu=8))
    s.submit_job("fan")
    s.submit_job("chain")
    agents = [Task(f"agent{i}", "fan", "sub", TaskKind.AGENT, Pool.NONE) for i in range(4)]
    for a in agents:
        s.enqueue(a)
    s.pick()
    calls = [Task(f"llm{i}", "fan", "llm", TaskKind.LLM, Pool.GPU, parent=a.id, deps=(a.id,)) for i, a in enumerate(agents)]
    for c in calls:
        s.enqueue(c)
    s.pick()
    for c in calls:
        s.release(c, service=100)
    for a in agents:
        s.release(a, service=0)
    prev: tuple[str, ...] = ()
    for i in range(4):  # the same work, one call after another
        c = Task(f"seq{i}", "chain", "llm", TaskKind.LLM, Pool.GPU, deps=prev)
        s.enqueue(c)
        (c,) = s.pick()
        s.release(c, service=100)
        prev = (c.id,)
    assert s.attained_service("fan") == 100
    assert s.attained_service("chain") == 400


def test_a_saturated_pool_costs_a_bounded_number_of_heap_operations_per_task() -> None:
    """100k tasks through a pool of 8: O(log n) per admit/release means a constant number of heap
    operations per task (the old pick re-heapified the whole queue on every call)."""
    s = Scheduler("las", PoolLimits(cpu=8))
    num_jobs, per_job = 100, 1000
    for j in range(num_jobs):
        s.submit_job(f"j{j}")
    for i in range(per_job):
        for j in range(num_jobs):
            s.enqueue(Task(f"t{j}-{i}", f"j{j}", "x", TaskKind.TOOL, Pool.CPU))
    running = s.pick()
    done = 0
    while running:
        t = running.pop()
        s.release(t, service=1.0)
        done += 1
        running += s.pick()
    assert done == num_jobs * per_job and s.num_queued == 0
    assert s.num_heap_ops <= 6 * done  # a push and a pop per start, a re-rank push per release


def test_engine_priority_is_the_las_level_and_job_priority_dominates() -> None:
    s = Scheduler("las", PoolLimits(gpu=4))
    s.submit_job("light")
    s.submit_job("vip", priority=1)
    for job, work in (("light", 10.0), ("vip", 1e6)):
        t = task(job, Pool.GPU)
        s.enqueue(t)
        s.pick()
        s.release(t, service=work)
    assert las_level(10.0) == las_level(2047.0) == 0 < las_level(2048.0) == 1 < las_level(8192.0) == 3
    assert s.engine_priority("light") == 0
    assert s.engine_priority("vip") < s.engine_priority("light")  # explicit priority beats any service
    assert Scheduler("fcfs").engine_priority("anything") == 0


def brute_gittins(sizes: list[float], a: float) -> float:
    """The index by its definition: sup over horizons d of P(S - a <= d | S > a) / E[min(S - a, d) | S > a]."""
    rest = [x - a for x in sizes if x > a]
    horizons = sorted(set(rest)) + [r + 0.5 for r in rest]
    return max(sum(r <= d for r in rest) / sum(min(r, d) for r in rest) for d in horizons)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=25), st.integers(0, 49))
def test_the_gittins_index_matches_its_definition(sizes: list[int], attained: int) -> None:
    dist = ServiceDistribution()
    for x in sizes:
        dist.add(float(x))
    got = dist.index(float(attained))
    if max(sizes) <= attained:
        assert got is None
    else:
        assert got is not None and abs(got - brute_gittins([float(x) for x in sizes], attained)) < 1e-12


def learned(sizes: list[float]) -> Scheduler:
    s = Scheduler("gittins", PoolLimits(gpu=8))
    for i, size in enumerate(sizes):
        s.submit_job(f"done{i}")
        t = task(f"done{i}", Pool.GPU)
        s.enqueue(t)
        s.pick()
        s.release(t, service=size)
        s.finish_job(f"done{i}")
    return s


def served(s: Scheduler, job: str, service: float) -> None:
    s.submit_job(job)
    if service:
        t = task(job, Pool.GPU)
        s.enqueue(t)
        s.pick()
        s.release(t, service=service)


def test_gittins_serves_jobs_near_done_first_when_sizes_are_alike_and_like_las_when_heavy_tailed() -> None:
    # Alike (3,000-4,000 tokens): the job that has attained more is closer to done, so it goes first
    # (LAS would put it last and share the engine among them all).
    alike = learned([3000.0 + 50 * i for i in range(20)])
    served(alike, "fresh", 0.0)
    served(alike, "most-done", 2900.0)
    assert alike.engine_priority("most-done") < alike.engine_priority("fresh")
    # Heavy-tailed (most jobs 100 tokens, a few 100,000): a job past 100 is probably a long one, so
    # fresh jobs go first, as under LAS.
    heavy = learned([100.0] * 18 + [100_000.0] * 2)
    served(heavy, "fresh", 0.0)
    served(heavy, "long", 500.0)
    assert heavy.engine_priority("fresh") < heavy.engine_priority("long")


def test_gittins_ranks_every_job_alike_until_enough_jobs_have_finished() -> None:
    s = learned([1000.0] * (GITTINS_MIN_JOBS - 1))
    served(s, "fresh", 0.0)
    served(s, "half", 500.0)
    assert s.engine_priority("fresh") == s.engine_priority("half") == GITTINS_MID
    s.finish_job("half")  # the 16th finished job: the index is used from now on
    served(s, "again", 500.0)
    assert s.engine_priority("again") < s.engine_priority("fresh")
    assert Scheduler().policy == "gittins"
