"""The pure scheduling policy: LAS, priorities, FCFS, capacity limits (no event loop)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt.scheduler import PoolLimits, Scheduler
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
    for pool, queue in s._queues.items():
        free = limits.capacity(pool) - s.in_use.get(pool, 0)
        assert all(t.units > free for _, _, t in queue)
