"""Per-call timeouts for many short calls: one loop timer for the earliest deadline.

`asyncio.timeout` creates, schedules and cancels a timer handle for every call; on the tool path,
where most calls end in microseconds and the default timeout is minutes, that bookkeeping was a
fifth of the orchestration cost. Here a call costs a heap push and a dict entry: the loop timer is
armed only for the earliest live deadline, finished calls leave stale heap entries that are skipped
when they surface (and compacted away once they outnumber the live ones four to one).

A call past its deadline has its task cancelled; `expired` tells that cancellation (and only that
one) apart from an outer one, as asyncio.timeout does with `Task.uncancel`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math


class Deadlines:
    """Deadlines of running calls on one event loop (it follows the loop the calls run on)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heap: list[tuple[float, int]] = []  # (deadline, call id); entries of finished calls go stale
        self._live: dict[int, tuple[asyncio.Task[object], int]] = {}  # call id -> (its task, cancels pending at start)
        self._expired: set[int] = set()
        self._ids = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def start(self, seconds: float) -> int:
        """Register the current task's call, due in `seconds`; returns its id for `expired`/`finish`."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop: the old one's calls and timer are gone with it
            self._loop, self._heap, self._live, self._expired = loop, [], {}, set()
            self._timer, self._timer_at = None, math.inf
        task = asyncio.current_task()
        assert task is not None, "Deadlines.start outside a task"
        call = next(self._ids)
        self._live[call] = (task, task.cancelling())
        when = loop.time() + seconds
        heapq.heappush(self._heap, (when, call))
        if when < self._timer_at:
            self._arm(when)
        return call

    def expired(self, call: int) -> bool:
        """Call this on CancelledError: True when the cancellation was this call's deadline alone
        (it is withdrawn, so the caller raises its timeout error instead)."""
        if call not in self._expired:
            return False
        self._expired.discard(call)
        task, cancelling = self._live[call]
        return task.uncancel() <= cancelling

    def finish(self, call: int) -> None:
        """The call ended (any way). O(1) amortised."""
        entry = self._live.pop(call, None)
        if call in self._expired:  # it ended on its own as its deadline hit: balance our cancel (as asyncio.timeout)
            self._expired.discard(call)
            if entry is not None:
                entry[0].uncancel()
        heap = self._heap
        if len(heap) > 64 and len(heap) > 4 * len(self._live):
            self._heap = [e for e in heap if e[1] in self._live]
            heapq.heapify(self._heap)

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(when, self._fire), when

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        assert self._loop is not None
        now, heap = self._loop.time(), self._heap
        while heap and (heap[0][0] <= now or heap[0][1] not in self._live):
            _, call = heapq.heappop(heap)
            entry = self._live.get(call)
            if entry is not None and call not in self._expired:
                self._expired.add(call)
                entry[0].cancel()
        if heap:
            self._arm(heap[0][0])
