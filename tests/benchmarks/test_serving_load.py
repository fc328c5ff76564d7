"""The arrival-rate searches of the serving benchmarks, against a synthetic queue (no engine)."""

from __future__ import annotations

import pytest

from benchmarks.serving_load import Ladder, Rung, rate_at_p50, saturating_rate


class Queue:
    """p50 = unloaded / (1 - rate / capacity) below capacity, unbounded above; each run costs
    `cost` fake seconds (shorter at higher rates, as the same jobs arrive sooner)."""

    def __init__(self, unloaded: float = 1.0, capacity: float = 2.0) -> None:
        self.unloaded, self.capacity, self.now, self.rates = unloaded, capacity, 0.0, []  # type: ignore[var-annotated]

    def p50(self, rate: float) -> float:
        return self.unloaded / (1 - rate / self.capacity) if rate < self.capacity else 1e3

    def measure(self, rate: float) -> float:
        self.rates.append(rate)
        self.now += 40 / rate
        return self.p50(rate)

    def ladder(self, budget: float) -> Ladder:
        return Ladder(self.measure, budget, clock=lambda: self.now)


def test_saturating_rate_climbs_to_the_first_rate_past_the_target() -> None:
    q = Queue()
    rate = saturating_rate(q.ladder(1e4), start=0.5, target=3.0)
    assert rate is not None and q.p50(rate) >= 3.0
    assert all(q.p50(r) < 3.0 for r in q.rates if r < rate)  # nothing smaller reached the target
    assert q.rates[:3] == pytest.approx([0.5, 0.8, 1.28])


def test_saturating_rate_descends_when_the_start_is_already_past_the_target() -> None:
    q = Queue()
    rate = saturating_rate(q.ladder(1e4), start=1.95, target=3.0)
    assert rate is not None and q.p50(rate) >= 3.0
    assert q.rates[1] < q.rates[0]  # went down
    assert any(q.p50(r) < 3.0 for r in q.rates)  # and bracketed the knee


def test_saturating_rate_narrows_an_overshooting_bracket() -> None:
    q = Queue(capacity=1.0)  # 0.5 -> 2x, 0.8 -> 5x (> 2 x target): the midpoint ~0.63 -> 2.7x is tried
    rate = saturating_rate(q.ladder(1e4), start=0.5, target=2.5)
    assert len(q.rates) == 3 and rate == q.rates[2] == pytest.approx(0.632, abs=1e-3)
    q2 = Queue(capacity=0.9)  # 0.8 -> 9x > 2 x 4; the midpoint (3.4x) misses, so the overshooting rung stands
    assert saturating_rate(q2.ladder(1e4), start=0.5, target=4.0) == pytest.approx(0.8)
    assert len(q2.rates) == 3


def test_saturating_rate_says_none_when_the_budget_runs_out() -> None:
    q = Queue(capacity=100.0)
    assert saturating_rate(q.ladder(200.0), start=0.5, target=3.0) is None
    assert q.now <= 200.0 + 40 / 0.5  # stopped once the next rung would not fit


def test_rate_at_p50_interpolates_between_bracketing_rungs() -> None:
    q = Queue(capacity=2.0)
    known = [Rung(1.0, q.p50(1.0), 40.0)]  # p50 2.0 at 1/s
    rate = rate_at_p50(q.ladder(1e4), known, target=4.0)
    assert rate is not None and 1.0 < rate < 2.0
    assert q.p50(rate) == pytest.approx(4.0, rel=0.35)  # log-linear between 1.6/s (5x) and 1/s (2x)
    assert q.rates == pytest.approx([1.6])


def test_rate_at_p50_descends_for_a_config_slower_than_the_target() -> None:
    q = Queue(capacity=1.0)
    rate = rate_at_p50(q.ladder(1e4), [Rung(0.9, q.p50(0.9), 40.0)], target=4.0)
    assert rate is not None and rate < 0.9 and q.rates[0] < 0.9


def test_rate_at_p50_says_none_without_budget() -> None:
    q = Queue()
    assert rate_at_p50(q.ladder(0.0), [Rung(1.0, q.p50(1.0), 40.0)], target=4.0) is None
