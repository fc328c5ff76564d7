"""The engine scheduler's priority order, preemption victims and reprioritisation (no tensors)."""

from __future__ import annotations

import pytest

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


def prog(rid: str, program: str | None, start: int, priority: int = 0) -> Sequence:
    params = SamplingParams(max_tokens=2, priority=priority, program_id=program)
    return Sequence(list(range(start, start + 4)), params, request_id=rid)


def test_a_programs_later_turn_queues_where_its_program_stands() -> None:
    # Program "old" arrived first; its second turn (after a tool call) arrives after the first turns
    # of "new1" and "new2". One batch slot: it goes before them, not behind (program-level FCFS).
    sched = Scheduler(EngineConfig(block_size=4, max_num_seqs=1, enable_prefix_caching=False), num_blocks=64)
    sched.add(prog("old-1", "old", 10))
    assert run(sched) == ["old-1"]
    sched.add(prog("busy", None, 90))
    sched.schedule()  # "busy" holds the only slot while the others queue
    for rid, program, start in (("new1-1", "new1", 20), ("new2-1", "new2", 30), ("old-2", "old", 40)):
        sched.add(prog(rid, program, start))
    assert run(sched) == ["busy", "old-2", "new1-1", "new2-1"]
    assert sched.num_preemptions == 0  # the rank orders admission; it never preempts


def test_requests_without_a_program_stay_first_come_first_served() -> None:
    sched = Scheduler(EngineConfig(block_size=4, max_num_seqs=1, enable_prefix_caching=False), num_blocks=64)
    sched.add(prog("x-1", "x", 10))
    assert run(sched) == ["x-1"]
    sched.add(prog("busy", None, 90))
    sched.schedule()
    for rid, start in (("a", 20), ("b", 30), ("c", 40)):
        sched.add(prog(rid, None, start))
    assert run(sched) == ["busy", "a", "b", "c"]


def test_priority_outranks_the_program_rank() -> None:
    sched = Scheduler(EngineConfig(block_size=4, max_num_seqs=1, enable_prefix_caching=False), num_blocks=64)
    sched.add(prog("old-1", "old", 10, priority=1))
    assert run(sched) == ["old-1"]
    sched.add(prog("busy", None, 90))
    sched.schedule()
    sched.add(prog("new-1", "new", 20, priority=0))
    sched.add(prog("old-2", "old", 30, priority=1))
    assert run(sched)[1:] == ["new-1", "old-2"]


def test_forgotten_programs_rank_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "MAX_PROGRAMS", 2)
    sched = Scheduler(EngineConfig(block_size=4, max_num_seqs=1, enable_prefix_caching=False), num_blocks=64)
    for i, program in enumerate(("p", "q", "r")):
        sched.add(prog(f"{program}-1", program, 10 * (i + 1)))
    assert run(sched) == ["p-1", "q-1", "r-1"]
    assert list(sched._programs) == ["q", "r"]  # "p" was the least recently seen
    sched.add(prog("p-2", "p", 50))
    assert sched._programs["p"] == 3  # ranked as a new arrival


def kv_pressure_workload() -> list[Sequence]:
    """Requests sharing an 8-token prefix, of mixed lengths: more KV than a 24-block pool holds."""
    shared = list(range(100, 108))
    return [Sequence(shared + list(range(200 + 100 * i, 200 + 100 * i + 12 + 13 * (i % 5))), SamplingParams(max_tokens=4 + i % 7),
                     request_id=f"r{i}") for i in range(12)]


def test_a_head_that_cannot_fit_is_not_tried_and_the_skip_never_refuses_a_fit() -> None:
    """`_cannot_fit` against its reference (the admission attempt it skips, on a copy of the state):
    whenever it says the head cannot fit, the attempt admits nothing; and a skipped attempt leaves
    the cache alone (the attempt evicts every evictable block before failing)."""
    import copy

    config = EngineConfig(block_size=4, max_num_seqs=4, max_num_batched_tokens=64)
    sched = Scheduler(config, num_blocks=24)
    for s in kv_pressure_workload():
        sched.add(s)
    skipped = 0
    for _ in range(400):
        if not sched.has_unfinished():
            break
        head = sched.waiting.peek()
        if head is not None and len(sched.running) < config.max_num_seqs and sched._cannot_fit(head, config.max_num_batched_tokens):
            twin = copy.deepcopy(sched)
            twin.skip_hopeless = False
            twin_head = twin.waiting.peek()
            twin.schedule()
            assert twin_head not in twin.running  # the reference attempt failed too
            cached = sched.radix.num_cached_blocks if sched.radix is not None else 0
            skipped += 1
        else:
            cached = -1
        batch = sched.schedule()
        if cached >= 0 and batch.num_preempted == 0 and not any(s.num_computed_tokens % 4 == 0 for s in batch.seqs):
            assert sched.radix is not None and sched.radix.num_cached_blocks >= cached  # nothing evicted for the head
        for i, s in enumerate(batch.seqs):
            if batch.samples(i):
                s.token_ids.append(3)
            sched.advance(s, batch.num_new_tokens[i])
            if batch.samples(i) and s.num_output_tokens >= s.params.max_tokens:
                sched.finish(s, FinishReason.LENGTH)
    assert not sched.has_unfinished()
    assert skipped > 0  # the workload does put the head out of reach


def test_skipping_hopeless_heads_serves_every_request_the_same_tokens() -> None:
    """With and without the skip, every request finishes with the same tokens (the skip only avoids
    work that is undone at once; it never changes what a request computes)."""
    outs = []
    for skip in (True, False):
        sched = Scheduler(EngineConfig(block_size=4, max_num_seqs=4, max_num_batched_tokens=64), num_blocks=24)
        sched.skip_hopeless = skip
        seqs = kv_pressure_workload()
        for s in seqs:
            sched.add(s)
        finished = run(sched)
        assert sorted(finished) == sorted(s.request_id for s in seqs)
        outs.append({s.request_id: list(s.token_ids) for s in seqs})
    assert outs[0] == outs[1]


@pytest.mark.parametrize("caching", [False, True])
def test_recomputed_tokens_count_only_kv_computed_twice(caching: bool) -> None:
    """A preempted request's KV is recomputed at re-admission only where the cache lost it: without
    prefix caching every token it had computed is computed again; with it, only the partial block."""
    sched = Scheduler(EngineConfig(block_size=4, max_num_seqs=1, enable_prefix_caching=caching), num_blocks=64)
    sched.add(seq(10, 20, priority=5, rid="long"))
    for _ in range(4):  # the prompt (10 tokens), then 3 decode steps: 13 tokens of KV
        batch = sched.schedule()
        for i, s in enumerate(batch.seqs):
            if batch.samples(i):
                s.token_ids.append(3)
            sched.advance(s, batch.num_new_tokens[i])
    long = sched.running[0]
    assert long.num_computed_tokens == 13 and sched.num_recomputed_tokens == 0
    sched.add(seq(4, 2, priority=0, rid="urgent", start=90))
    assert run(sched) == ["urgent", "long"] and sched.num_preemptions == 1
    assert long.computed_before == 13
    assert sched.num_recomputed_tokens == (1 if caching else 13)  # cached: 3 full blocks kept, the 13th token not
    assert long.usage.recomputed_tokens == 10  # the engine work its first pass spent on the prompt


def test_an_urgent_request_short_of_blocks_releases_a_pin_before_preempting() -> None:
    """A pinned agent waits on a tool; a running request is decoding. An urgent request that lacks
    blocks takes the pin's (Continuum: a pin gives way to a request that would otherwise wait), not
    the running request's: preempting it would lose work that is being used now."""
    sched = Scheduler(EngineConfig(block_size=4, max_num_seqs=4), num_blocks=14)
    pinned = seq(16, 1, rid="agent", start=100)
    sched.add(pinned)
    assert run(sched) == ["agent"]
    radix = sched.radix
    assert radix is not None
    node = radix.match_prefix(pinned.token_ids[:16]).node
    radix.lock(node)  # the pin: 4 cached blocks nobody may evict
    released: list[int] = []

    def release_pins() -> int:
        if released:
            return 0
        radix.unlock(node)
        released.append(1)
        return 1

    sched.release_pins = release_pins
    sched.add(seq(16, 20, priority=9, rid="low", start=200))
    sched.schedule()  # low runs: 4 pinned + 4-5 of its own, 5-6 free
    sched.add(seq(28, 2, priority=0, rid="urgent", start=300))  # its 7 blocks need the pin's
    order = run(sched)
    assert released and sched.num_preemptions == 0
    assert order[0] == "urgent" and set(order) == {"urgent", "low"}
