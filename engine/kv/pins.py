"""KV pins at tool-call boundaries: kept with a TTL, released on cost-benefit, paused and resumed.

* Pins (Continuum): an agent waiting on a tool keeps its conversation's cached prefix locked on
  the device for the tool's expected duration (`ttl`), so its next turn prefills only new tokens.
* Release under pressure (Continuum's cost-benefit): when a request cannot get blocks, the pin with
  the most time left is released only if that time, how long the request would otherwise wait for
  the blocks, exceeds the pinned agent's resume cost (its prefix restored from the host tier, or
  recomputed without one, at the engine's measured rate). Otherwise the request waits.
* Pausing (ThunderAgent): with a host tier, when the working set (device blocks that running
  requests or pinned prefixes hold) passes `pause_fraction` of the pool, pinned agents are paused, the longest-waiting
  first: their KV is copied to the host tier and their pin released, until the working set is back
  under the line. A pin released under pressure is paused the same way. Paused agents resume
  smallest first once the working set is under `resume_fraction` and no request waits: the prefix
  comes back from the host tier and is pinned again until its original deadline. While requests
  wait, the free blocks are theirs: a paused agent's prefix comes back when its next turn is
  admitted (the host-tier restore at admission). Resuming under a queue paused the same agents
  again a few steps later (agent serving at saturation: ~700 pauses and twice the host restores of
  the configurations without pausing, docs/benchmarks.md).

Bookkeeping only: the engine core supplies the copies (`PinHooks`) and calls `apply` and `balance`
on its step thread.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engine.kv.block_pool import BlockPool
from engine.kv.radix import RadixCache

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Pin:
    node: object | None  # the locked radix node; None while paused
    num_tokens: int  # how many tokens of the pinned prefix were cached when pinned
    expires: float | None  # time.monotonic() deadline, None = until unpinned
    token_ids: list[int]


@dataclass(slots=True)
class PinHooks:
    """What the engine core does for the pin table: copy a cached prefix's KV to the host tier
    (without evicting it), restore a prefix from the host tier, the seconds per token it costs to
    bring a released prefix back, the working set: device blocks that running requests or pinned
    prefixes hold (the rest is free or evictable cache), and how many requests wait for admission."""

    copy_to_host: Callable[[list[int]], None] | None
    restore_from_host: Callable[[list[int]], None] | None
    resume_seconds_per_token: Callable[[], float]
    working_set: Callable[[], int]
    num_waiting: Callable[[], int] = lambda: 0


def worth_releasing(time_left: float, resume_cost: float) -> bool:
    """Continuum's rule: give up a pin for a waiting request only when the wait it saves (the pin's
    time left) is larger than what the pinned agent pays to resume (seconds)."""
    return time_left > resume_cost


class PinTable:
    def __init__(self, radix: RadixCache, pool: BlockPool, hooks: PinHooks, pause_fraction: float | None = 0.95,
                 resume_fraction: float = 0.8) -> None:
        self.radix, self.pool, self.hooks = radix, pool, hooks
        self.pause_fraction, self.resume_fraction = pause_fraction, resume_fraction
        self.pins: dict[str, Pin] = {}
        self.paused: dict[str, Pin] = {}
        self.num_released = self.num_kept = self.num_paused = self.num_resumed = 0
        self._cmds: deque[tuple[str, list[int] | None, float | None]] = deque()

    def pin(self, key: str, token_ids: list[int], ttl: float | None) -> None:
        """Queue a pin (any thread); applied by `apply`."""
        self._cmds.append((key, list(token_ids), ttl))

    def unpin(self, key: str) -> None:
        self._cmds.append((key, None, None))

    @property
    def has_commands(self) -> bool:
        return bool(self._cmds)

    def apply(self) -> None:
        """Apply queued pin/unpin commands and drop pins (and paused agents) past their deadline."""
        now = time.monotonic()
        while self._cmds:
            key, token_ids, ttl = self._cmds.popleft()
            self._drop(key)
            if token_ids is not None:
                self._lock(key, token_ids, None if ttl is None else now + ttl)
        for key in [k for k, p in self.pins.items() if p.expires is not None and p.expires <= now]:
            self._drop(key)
        for key in [k for k, p in self.paused.items() if p.expires is not None and p.expires <= now]:
            del self.paused[key]

    def _lock(self, key: str, token_ids: list[int], expires: float | None) -> None:
        match = self.radix.match_prefix(token_ids, count=False)
        self.radix.lock(match.node)
        self.pins[key] = Pin(match.node, match.num_tokens, expires, token_ids)

    def _drop(self, key: str) -> None:
        self.paused.pop(key, None)
        pin = self.pins.pop(key, None)
        if pin is not None:
            self.radix.unlock(pin.node)  # type: ignore[arg-type]

    # ---- pressure ----------------------------------------------------------------------
    def release_one(self) -> int:
        """Scheduler hook when a request cannot get blocks: release (pause) the pin with the most
        time left if `worth_releasing`. Pins without a TTL are kept. Returns 1 if one was released."""
        now = time.monotonic()
        timed = [(p.expires - now, key) for key, p in self.pins.items() if p.expires is not None]
        if not timed:
            return 0
        time_left, key = max(timed)
        cost = self.pins[key].num_tokens * self.hooks.resume_seconds_per_token()
        if not worth_releasing(time_left, cost):
            self.num_kept += 1
            return 0
        self._pause(key)
        self.num_released += 1
        logger.debug("released pin %s under KV pressure (%.3fs left > %.3fs to resume)", key, time_left, cost)
        return 1

    def balance(self) -> None:
        """ThunderAgent: pause pinned agents above `pause_fraction`, resume paused ones (smallest
        first) below `resume_fraction` while no request waits. Needs a host tier (else pausing
        would only lose KV)."""
        if self.pause_fraction is None or self.hooks.copy_to_host is None:
            return
        line = self.pause_fraction * self.pool.num_blocks
        if self.pool.num_blocks - self.pool.num_free_blocks <= line and not self.paused:
            return  # cheap bound: even if nothing were evictable, the working set is under the line
        while self.hooks.working_set() > line:
            timed = [(p.expires, key) for key, p in self.pins.items() if p.expires is not None]
            if not timed:
                break
            self._pause(max(timed)[1])  # the agent expected back last
        if self.paused and not self.hooks.num_waiting():
            self._resume_smallest(self.resume_fraction * self.pool.num_blocks)

    def _pause(self, key: str) -> None:
        pin = self.pins.pop(key)
        if self.hooks.copy_to_host is not None:
            self.hooks.copy_to_host(pin.token_ids[: pin.num_tokens])
            self.paused[key] = Pin(None, pin.num_tokens, pin.expires, pin.token_ids)
            self.num_paused += 1
        self.radix.unlock(pin.node)  # type: ignore[arg-type]

    def _resume_smallest(self, line: float) -> None:
        """Resume paused agents, smallest first, while the working set with the agent's prefix
        stays under `line` (below the pause line, so a resumed agent is not paused again at once)."""
        for key in sorted(self.paused, key=lambda k: self.paused[k].num_tokens):
            pin = self.paused[key]
            if self.hooks.working_set() + pin.num_tokens // self.radix.block_size > line:
                return  # larger ones would not fit either
            if self.hooks.restore_from_host is not None:
                self.hooks.restore_from_host(pin.token_ids)
            del self.paused[key]
            self._lock(key, pin.token_ids, pin.expires)
            self.num_resumed += 1
