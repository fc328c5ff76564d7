"""Arrival-rate searches for the serving benchmarks: the saturating rate (the first rate on a ladder
at which the baseline's p50 job time reaches a target) and the rate a configuration sustains at a
given p50 (throughput at equal latency). Pure: each takes `measure(rate) -> p50 seconds`, so the
ladders are tested without an engine (tests/benchmarks/test_serving_load.py).

Both are time-bounded: a rung is only started when the last rung's wall time still fits the budget
(a rung at a higher rate is shorter, as the same jobs arrive sooner), and both say when they stopped
without an answer instead of returning a rate that does not mean what it claims.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Rung:
    rate: float  # jobs per second
    p50: float  # p50 job completion time at that rate, seconds
    seconds: float  # wall time the run took

    def describe(self, unloaded: float) -> str:
        return f"{self.rate:.3g}/s: p50 {self.p50:.2f} s = {self.p50 / unloaded:.2f}x unloaded"


class Ladder:
    """Runs `measure` at rates while the time budget lasts; remembers every rung."""

    def __init__(self, measure: Callable[[float], float], budget_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.measure, self.budget_s, self.clock = measure, budget_s, clock
        self.start = clock()
        self.rungs: list[Rung] = []

    def fits(self) -> bool:
        """Whether another rung (as long as the last one) ends inside the budget."""
        last = self.rungs[-1].seconds if self.rungs else 0.0
        return self.clock() - self.start + last <= self.budget_s

    def run(self, rate: float) -> Rung:
        t0 = self.clock()
        p50 = self.measure(rate)
        rung = Rung(rate, p50, self.clock() - t0)
        self.rungs.append(rung)
        return rung


def saturating_rate(ladder: Ladder, start: float, target: float, factor: float = 1.6) -> float | None:
    """The smallest rate tried whose p50 is >= `target`, or None when the budget ran out first.

    Climbs from `start` by `factor` until p50 >= target; when `start` is already past it, descends
    until a rung is below. A bracket whose upper rung overshoots (p50 > 2 x target) is narrowed once
    at the geometric midpoint, so the reported rate is near the knee rather than deep in overload."""
    if factor <= 1.0 or start <= 0.0 or target <= 0.0:
        raise ValueError(f"need factor > 1, start > 0, target > 0; got {factor}, {start}, {target}")
    rung = ladder.run(start)
    step = factor if rung.p50 < target else 1.0 / factor
    while (rung.p50 >= target) == (step < 1.0) and ladder.fits():
        rung = ladder.run(rung.rate * step)
    hits = [r for r in ladder.rungs if r.p50 >= target]
    misses = [r for r in ladder.rungs if r.p50 < target]
    if not hits:
        return None
    best = min(hits, key=lambda r: r.rate)
    below = [r for r in misses if r.rate < best.rate]
    if best.p50 > 2 * target and below and ladder.fits():
        mid = ladder.run(math.sqrt(best.rate * max(below, key=lambda r: r.rate).rate))
        if mid.p50 >= target:
            best = mid
    return best.rate


def rate_at_p50(ladder: Ladder, known: list[Rung], target: float, factor: float = 1.6) -> float | None:
    """The rate at which p50 equals `target`: from the rungs already `known`, climb (or descend) by
    `factor` until the target is bracketed, then interpolate log(rate) linearly in p50 between the
    bracketing rungs. None when the budget ran out before a bracket was found."""
    ladder.rungs.extend(known)
    while True:
        lo = [r for r in ladder.rungs if r.p50 < target]
        hi = [r for r in ladder.rungs if r.p50 >= target]
        if lo and hi and max(r.rate for r in lo) < min(r.rate for r in hi):
            a, b = max(lo, key=lambda r: r.rate), min(hi, key=lambda r: r.rate)
            frac = (target - a.p50) / (b.p50 - a.p50) if b.p50 > a.p50 else 1.0
            return a.rate * (b.rate / a.rate) ** frac
        if not ladder.fits():
            return None
        if hi and lo:  # non-monotone noise: a hit below a miss; probe between them
            ladder.run(math.sqrt(min(r.rate for r in hi) * max(r.rate for r in lo)))
        elif hi:
            ladder.run(min(r.rate for r in hi) / factor)
        else:
            ladder.run(max(r.rate for r in lo) * factor)
