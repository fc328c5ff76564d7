"""Continuous batching with chunked prefill, prefix caching, priorities and recompute preemption.
No tensors.

Each `schedule()` call builds one step: running sequences first (decode tokens and the rest of
chunked prefills), then waiting sequences by (priority, arrival) while the token budget, the batch
slots and the KV blocks allow. Lower priority values are more urgent (as in vLLM); equal priorities
are first come, first served. When a running sequence needs a block and none is free, unlocked
prefix-cache entries are evicted first, then the least urgent running sequence (highest priority
value, latest program and arrival among equals) is preempted: its blocks are freed and it is
recomputed later, which leaves its output unchanged. A waiting sequence of a strictly more urgent
priority than the least urgent running one also preempts it when it cannot otherwise be admitted (no batch slot or no KV blocks).

Requests that name a program (`SamplingParams.program_id`, an agent job) are ordered among equal
priorities by the program's first arrival, then their own: an agent's next turn, arriving after a
tool call, queues where its program stands instead of behind every request that came meanwhile
(per-request FCFS turns a queue of agents into round robin, and every job finishes late). The rank
only orders admission and picks block-shortage victims; preempting a running request for a waiting
one needs a strictly more urgent priority, so ranks and arrival cause no preemptions.

The waiting queue is a binary heap with lazy invalidation: changing a waiting sequence's priority
pushes a fresh entry and marks the old one stale, so add, pop and reprioritise are O(log n).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from engine.config import EngineConfig
from engine.errors import OutOfKVCacheError
from engine.kv.block_pool import BlockPool
from engine.kv.radix import RadixCache
from engine.sequence import FinishReason, Sequence, SequenceStatus

MAX_PROGRAMS = 1 << 16  # programs whose first arrival is remembered (a forgotten one ranks anew)


@dataclass(slots=True)
class ScheduledBatch:
    """One step's work: `num_new_tokens[i]` tokens of `seqs[i]` are computed this step."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_preempted: int = 0

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def samples(self, i: int) -> bool:
        """Whether sequence i reaches its last token (and drafts) this step, so it samples."""
        seq = self.seqs[i]
        return seq.num_computed_tokens + self.num_new_tokens[i] == len(seq) + len(seq.draft_ids)


def blocks_needed(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class WaitingQueue:
    """Waiting sequences ordered by (priority, program rank, arrival order); O(log n) push, pop and
    reprioritise.

    A heap entry is (priority, rank, order, version, seq_id, seq); it is live while the sequence is queued and
    its `queue_version` still equals the entry's. Stale entries are dropped when they surface."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, int, int, Sequence]] = []
        self._queued: set[int] = set()  # seq_ids currently waiting

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, seq: Sequence) -> bool:
        return seq.seq_id in self._queued

    def _live(self) -> Iterator[tuple[int, int, int, int, int, Sequence]]:
        """Heap entries that are not stale (their sequence still waits at that version)."""
        return (e for e in self._heap if e[4] in self._queued and e[3] == e[5].queue_version)

    def __iter__(self) -> Iterator[Sequence]:
        """Live sequences, in no particular order."""
        return (e[5] for e in self._live())

    def soonest(self, n: int) -> list[Sequence]:
        """The `n` most urgent live sequences, most urgent first (O(queue) per call)."""
        return [e[5] for e in heapq.nsmallest(n, self._live(), key=lambda e: e[:3])]

    def push(self, seq: Sequence) -> None:
        seq.queue_version += 1
        self._queued.add(seq.seq_id)
        heapq.heappush(self._heap, (seq.priority, seq.rank, seq.order, seq.queue_version, seq.seq_id, seq))

    def peek(self) -> Sequence | None:
        """The most urgent waiting sequence (None when empty); drops stale entries on the way."""
        heap = self._heap
        while heap:
            _, _, _, version, seq_id, seq = heap[0]
            if seq_id in self._queued and version == seq.queue_version:
                return seq
            heapq.heappop(heap)
        return None

    def pop(self) -> Sequence:
        seq = self.peek()
        if seq is None:
            raise IndexError("pop from an empty waiting queue")
        heapq.heappop(self._heap)
        self._queued.discard(seq.seq_id)
        return seq

    def remove(self, seq: Sequence) -> None:
        """Drop `seq` (its heap entry goes stale and is discarded when it surfaces)."""
        self._queued.discard(seq.seq_id)
        seq.queue_version += 1

    def reprioritise(self, seq: Sequence, priority: int) -> None:
        seq.priority = priority
        if seq.seq_id in self._queued:
            self.push(seq)  # the old entry is now stale


class Scheduler:
    """Decides which tokens of which sequences run in the next step and owns their KV blocks."""

    def __init__(self, config: EngineConfig, num_blocks: int) -> None:
        self.config = config
        self.block_size = config.block_size
        self.pool = BlockPool(num_blocks)
        self.radix = RadixCache(self.pool, self.block_size) if config.enable_prefix_caching else None
        self.waiting = WaitingQueue()
        self.running: list[Sequence] = []
        self._arrivals = itertools.count()
        # program_id -> rank of its first request; least recently seen dropped past MAX_PROGRAMS.
        self._programs: OrderedDict[str, int] = OrderedDict()
        self.num_preemptions = 0
        self.num_recomputed_tokens = 0  # tokens computed again after a preemption (their KV was not cached any more)
        self.skip_hopeless = True  # skip a waiting request's admission attempt that cannot succeed (_cannot_fit)
        # Restores cached blocks from a lower tier into the tree: (tokens, cached tokens) ->
        # (bytes restored from host, bytes restored from disk).
        self.extend_prefix: Callable[[list[int], int], tuple[int, int]] | None = None
        # Releases pinned prefixes when nothing else can be evicted (see EngineCore.pin); returns
        # how many pins it released (0 = none left to release).
        self.release_pins: Callable[[], int] | None = None

    # ---- queue management -------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """Queue a new sequence. It must fit the KV cache on its own, else OutOfKVCacheError."""
        max_tokens = len(seq) + seq.params.max_tokens
        if blocks_needed(min(max_tokens, self._max_len()), self.block_size) > self.pool.num_blocks:
            raise OutOfKVCacheError(
                f"request {seq.request_id} needs up to {max_tokens} tokens of KV but the cache holds "
                f"{self.pool.num_blocks * self.block_size}"
            )
        seq.status = SequenceStatus.WAITING
        seq.order = next(self._arrivals)
        seq.rank = self._program_rank(seq.params.program_id, seq.order)
        self.waiting.push(seq)

    def _program_rank(self, program_id: str | None, order: int) -> int:
        """The arrival rank of the program's first request still remembered (`order` if none)."""
        if program_id is None:
            return order
        rank = self._programs.setdefault(program_id, order)
        self._programs.move_to_end(program_id)
        if len(self._programs) > MAX_PROGRAMS:
            self._programs.popitem(last=False)
        return rank

    def set_priority(self, seq: Sequence, priority: int) -> None:
        """Change the priority of a waiting or running sequence (O(log n)); lower is more urgent."""
        if not seq.is_finished:
            self.waiting.reprioritise(seq, priority)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Mark `seq` finished, cache its computed prefix and release its blocks."""
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._cache_prefix(seq)
        self._release(seq)

    # ---- scheduling ---------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        # Least urgent last: a block shortage preempts from the end, never a sequence already batched.
        self.running.sort(key=lambda r: (r.priority, r.rank, r.order))
        self._preempt_for_urgent(batch)
        urgent = batch.num_preempted
        budget = self._schedule_running(batch, budget)
        if batch.num_preempted == urgent:  # no block shortage among the running ones
            self._schedule_waiting(batch, budget)
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.draft_ids:  # drafts that do not fit the token budget are dropped (a tree's nodes come parents first)
                seq.draft_ids = seq.draft_ids[: max(0, budget - seq.num_uncomputed_tokens)]
                if seq.draft_parents is not None:
                    seq.draft_parents = seq.draft_parents[: len(seq.draft_ids)] or None
            num_new = min(seq.num_uncomputed_tokens + len(seq.draft_ids), budget)
            if not self._reserve(seq, seq.num_computed_tokens + num_new):
                victim = self.running[-1]
                self._preempt(victim)
                batch.num_preempted += 1
                if victim is seq:
                    break
                continue
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
            i += 1
        return budget

    def _preempt_for_urgent(self, batch: ScheduledBatch) -> None:
        """Preempt the least urgent running sequences while the most urgent waiting one has a strictly
        more urgent priority and cannot be admitted for want of a batch slot or KV blocks (blocks:
        after releasing what pins `release_pins` gives up, as `_make_room` does). Arrival and
        program rank never preempt: a request preempted at equal priority could otherwise take its
        place back at once (and the two would trade places every step)."""
        while self.running:
            head, worst = self.waiting.peek(), self.running[-1]
            if head is None or head.priority >= worst.priority or self._admissible(head):
                return
            if len(self.running) < self.config.max_num_seqs and self.release_pins is not None and self.release_pins():
                continue  # short of blocks: an agent's pin (it waits on a tool) gives way before a running request
            self._preempt(worst)
            batch.num_preempted += 1

    def _admissible(self, seq: Sequence) -> bool:
        """Whether `seq` has a batch slot and blocks (free or evictable) for its first chunk."""
        if len(self.running) >= self.config.max_num_seqs:
            return False
        cached = self.radix.cached_prefix_len(seq.token_ids[: len(seq) - 1]) if self.radix is not None else 0
        chunk = min(seq.num_uncomputed_tokens, self.config.max_num_batched_tokens)
        need = blocks_needed(cached + chunk, self.block_size) - cached // self.block_size
        evictable = self.radix.num_evictable_blocks if self.radix is not None else 0
        return need <= self.pool.num_free_blocks + evictable

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        while budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting.peek()
            if seq is None:
                break
            if self._prefix_in_flight(seq):
                break  # wait one step: its prefix is being computed and will be cached
            if self.skip_hopeless and self._cannot_fit(seq, budget):
                break  # the attempt below would fail after restoring, evicting and releasing pins for nothing
            if not seq.block_table:
                self._match_prefix(seq)
            num_new = min(seq.num_uncomputed_tokens, budget)
            if not self._reserve(seq, seq.num_computed_tokens + num_new):
                # Give the matched prefix back: a waiting sequence must not hold KV blocks.
                seq.usage.cached_tokens -= min(seq.num_computed_tokens, seq.num_prompt_tokens)
                self._release(seq)
                seq.num_computed_tokens = 0
                break
            self.waiting.pop()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new

    def _cannot_fit(self, seq: Sequence, budget: int) -> bool:
        """Whether the waiting `seq` certainly cannot get blocks for its next chunk (at most `budget`
        tokens) this step: it needs more blocks past its device-cached prefix than there are blocks
        neither running requests nor that prefix hold (free, evictable, pinned or paused alike:
        everything `_make_room` could reach). O(running blocks + prompt).

        Under KV pressure the head of the queue is otherwise tried every step: its prefix matched,
        its host-tier blocks restored (evicting others' to make room), pins released, and then all
        given back when its chunk does not fit; on a CPU that retry cost more than the forwards
        (agent serving, docs/benchmarks.md). `skip_hopeless = False` keeps the retry, the reference
        the tests compare against."""
        if seq.block_table or self.radix is None:
            return False
        limit = (len(seq) - 1) // self.block_size * self.block_size
        prefix = self.radix.prefix_blocks(seq.token_ids[:limit])
        cached = len(prefix) * self.block_size
        held = {b for r in self.running for b in r.block_table}
        held.update(prefix)
        chunk = min(len(seq) - cached, budget)
        need = blocks_needed(cached + chunk, self.block_size) - cached // self.block_size
        return need > self.pool.num_blocks - len(held)

    def _prefix_in_flight(self, seq: Sequence) -> bool:
        """Whether a running sequence is still computing blocks that `seq` shares with it.

        Admitting `seq` now would compute those blocks twice; a step later they are cached."""
        if self.radix is None or len(seq) <= self.block_size or seq.num_computed_tokens:
            return False
        bs = self.block_size
        for r in self.running:
            if r.num_computed_tokens >= r.num_prompt_tokens or r.token_ids[:bs] != seq.token_ids[:bs]:
                continue
            shared = bs
            limit = min(len(seq) - 1, r.num_prompt_tokens) // bs * bs
            while shared + bs <= limit and r.token_ids[shared : shared + bs] == seq.token_ids[shared : shared + bs]:
                shared += bs
            if r.num_computed_tokens < shared:
                return True
        return False

    def _match_prefix(self, seq: Sequence) -> None:
        if self.radix is None:
            return
        # Keep at least one token to compute: its logits give the first sampled token.
        limit = (len(seq) - 1) // self.block_size * self.block_size
        if self.extend_prefix is not None:
            host, disk = self.extend_prefix(seq.token_ids[:limit], self.radix.cached_prefix_len(seq.token_ids[:limit]))
            seq.usage.kv_restored_bytes_host += host
            seq.usage.kv_restored_bytes_disk += disk
        match = self.radix.match_prefix(seq.token_ids[:limit])
        if match.num_tokens == 0:
            return
        self.pool.incref(match.block_ids)
        self.radix.lock(match.node)
        seq.prefix_node = match.node
        seq.block_table = list(match.block_ids)
        seq.num_computed_tokens = match.num_tokens
        seq.usage.cached_tokens += min(match.num_tokens, seq.num_prompt_tokens)  # prompt tokens served

    def _reserve(self, seq: Sequence, num_tokens: int) -> bool:
        """Ensure `seq` has blocks for `num_tokens` tokens, evicting cached prefixes if needed."""
        missing = blocks_needed(num_tokens, self.block_size) - len(seq.block_table)
        if missing <= 0:
            return True
        if not self._make_room(missing):
            return False
        seq.block_table.extend(self.pool.allocate(missing))
        return True

    def _make_room(self, num_blocks: int, release_pins: bool = True, evict_announced: bool = True) -> bool:
        """Free blocks by evicting unlocked cached prefixes (announced ones too, unless
        `evict_announced` is False); when none are left, release pins (a pinned agent waiting on a
        tool pays a restore or recompute later, instead of a request waiting or being preempted
        now) and evict again, unless `release_pins` is False."""
        while not self.pool.can_allocate(num_blocks):
            if self.radix is None:
                return False
            if self.radix.evict(num_blocks - self.pool.num_free_blocks, announced=evict_announced) == 0:
                if not release_pins or self.release_pins is None or self.release_pins() == 0:
                    return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        seq.draft_ids, seq.draft_parents = [], None
        self.running.remove(seq)
        seq.computed_before = max(seq.computed_before, seq.num_computed_tokens)
        self._cache_prefix(seq)
        self._release(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        # The prompt is served again at re-admission (cached or computed): keep prompt = cached +
        # computed per request and book the lost work separately.
        seq.usage.recomputed_tokens += seq.usage.prefill_tokens_computed
        seq.usage.cached_tokens = seq.usage.prefill_tokens_computed = 0
        seq.usage.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.push(seq)  # keeps its arrival rank: ahead of later arrivals of its priority

    def _release(self, seq: Sequence) -> None:
        if seq.prefix_node is not None and self.radix is not None:
            self.radix.unlock(seq.prefix_node)  # type: ignore[arg-type]
        seq.prefix_node = None
        if seq.block_table:
            self.pool.decref(seq.block_table)
        seq.block_table = []

    def _cache_prefix(self, seq: Sequence) -> None:
        if self.radix is not None and seq.num_computed_tokens >= self.block_size:
            self.radix.insert(seq.token_ids[: seq.num_computed_tokens], seq.block_table)

    # ---- after the step -----------------------------------------------------------------
    def advance(self, seq: Sequence, num_valid: int) -> None:
        """Record that `num_valid` more tokens of `seq` have KV (computed and, for drafts, accepted)
        and share newly completed blocks. Call after the step's accepted tokens were appended."""
        start = seq.num_computed_tokens
        seq.num_computed_tokens = min(start + num_valid, len(seq))
        if seq.computed_before > start:  # tokens a preemption had computed and the cache no longer held
            self.num_recomputed_tokens += min(seq.num_computed_tokens, seq.computed_before) - start
        seq.usage.prefill_tokens_computed += max(0, min(seq.num_computed_tokens, seq.num_prompt_tokens) - start)
        if not seq.is_finished and seq.num_computed_tokens // self.block_size > start // self.block_size:
            self._cache_prefix(seq)

    def _max_len(self) -> int:
        return self.config.max_model_len or 1 << 30
