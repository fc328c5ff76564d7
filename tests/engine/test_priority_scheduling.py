"""The engine scheduler's priority order, preemption victims and reprioritisation (no tensors)."""

from __future__ import annotations

from engine.config import EngineConfig
from engine.scheduler import Scheduler, WaitingQueue
from engine.sequence import FinishReason, SamplingParams, Sequence


def seq(n: int, max_tokens: int, priority: int = 0, rid: str | None = None, start: int = 2) -> Sequence:
    return Sequence(list(range(start, start + n)), SamplingParams(max_tokens=max_tokens, priority=priority), request_id=rid)


def run(sched: Scheduler, max_steps: int = 500) -> list[str]:
    """Drive the scheduler as the engine would (one fake token per sampling sequence); the request
    ids in finishing order."""
    finished: list[str] = []
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return finished
        batch = sched.schedule()
        for i, s in enumerate(batch.seqs):
            sampled = batch.samples(i)
            if sampled:
                s.token_ids.append(3)
            sched.advance(s, batch.num_new_tokens[i])
            if sampled and s.num_output_tokens >= s.params.max_tokens:
                sched.finish(s, FinishReason.LENGTH)
                finished.append(str(s.request_id))
    raise AssertionError("scheduler did not drain")


def test_later_urgent_request_finishes_first_under_a_full_batch() -> None:
    sched = Scheduler(EngineConfig(block_size=4, max_num_seqs=2, enable_prefix_caching=False), num_blocks=64)
    for name in ("a", "b", "c"):
        sched.add(seq(8, 20, priority=5, rid=name, start=10 * ord(name)))
    sched.schedule()  # a and b fill the batch
    sched.add(seq(8, 3, priority=0, rid="urgent"))
    order = run(sched)
    assert order[0] == "urgent"
    assert sched.num_preemptions >= 1  # it took the slot of a less urgent running request


def test_equal_priorities_are_first_come_first_served() -> None:
    sched = Scheduler(EngineConfig(block_size=4, max_num_seqs=1, enable_prefix_caching=False), num_blocks=64)
    for name in ("a", "b", "c"):
        sched.add(seq(4, 2, rid=name))
    assert run(sched) == ["a", "b", "c"]
    assert sched.num_preemptions == 0


def test_preemption_victim_is_the_least_urgent_running_request() -> None:
    # 3 running requests, KV for ~2 of them at full length: a block shortage must preempt "low".
    sched = Scheduler(EngineConfig(block_size=4, max_num_seqs=3, enable_prefix_caching=False), num_blocks=12)
    sched.add(seq(4, 14, priority=1, rid="mid", start=10))
    sched.add(seq(4, 14, priority=9, rid="low", start=40))
    sched.add(seq(4, 14, priority=0, rid="high", start=70))
    victims: list[str] = []
    for _ in range(200):
        if not sched.has_unfinished():
            break
        running = list(sched.running)
        batch = sched.schedule()
        victims += [str(s.request_id) for s in running if s not in sched.running and not s.is_finished]
        for i, s in enumerate(batch.seqs):
            if batch.samples(i):
                s.token_ids.append(3)
            sched.advance(s, batch.num_new_tokens[i])
            if batch.samples(i) and s.num_output_tokens >= 14:
                sched.finish(s, FinishReason.LENGTH)
    assert victims and set(victims) == {"low"}


def test_raising_a_waiting_priority_moves_it_ahead() -> None:
    sched = Scheduler(EngineConfig(block_size=4, max_num_seqs=1, enable_prefix_caching=False), num_blocks=64)
    seqs = {name: seq(4, 2, priority=3, rid=name) for name in ("a", "b", "c")}
    for s in seqs.values():
        sched.add(s)
    sched.set_priority(seqs["c"], 0)
    sched.set_priority(seqs["b"], 7)
    assert run(sched) == ["c", "a", "b"]


def test_waiting_queue_drops_stale_entries_and_counts_live_ones() -> None:
    q = WaitingQueue()
    seqs = [seq(4, 1, priority=p) for p in (3, 1, 2)]
    for s in seqs:
        s.order = s.seq_id
        q.push(s)
    for _ in range(50):  # many reprioritisations leave stale entries behind, never duplicates
        q.reprioritise(seqs[0], 0)
    q.remove(seqs[1])
    assert len(q) == 2 and seqs[1] not in q
    assert [q.pop(), q.pop()] == [seqs[0], seqs[2]]
    assert q.peek() is None and len(q) == 0
