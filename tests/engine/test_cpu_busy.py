"""The CPU thread shedder: fewer kernel threads while other processes keep cores busy, all of them
when the machine is quiet."""

from __future__ import annotations

from pathlib import Path

from engine.kernels.cpu.busy import ThreadShedder, runnable_threads


def test_runnable_threads_reads_the_fourth_field_of_loadavg(tmp_path: Path) -> None:
    f = tmp_path / "loadavg"
    f.write_text("8.38 9.58 9.20 7/113 16695\n")
    assert runnable_threads(f) == 7
    assert runnable_threads(tmp_path / "missing") is None
    f.write_text("garbage\n")
    assert runnable_threads(f) is None


def test_sheds_to_the_free_cores_while_others_run_and_returns_when_quiet() -> None:
    others = [1] * 5 + [0] * 6  # one other runnable thread, then none
    own, seen = 2, []
    shed = ThreadShedder(2, cpus=2, read=lambda: own + others[len(seen)])
    for _ in range(len(others)):
        own = shed.threads(own)
        seen.append(own)
    assert seen[0] == 2  # one busy reading is not enough (smoothed)
    assert seen[1:5] == [1] * 4 and seen[-1] == 2


def test_a_lone_competitor_on_one_of_two_cores_keeps_us_on_one_thread() -> None:
    own = [1]  # on one thread: us + the competitor are runnable
    shed = ThreadShedder(2, cpus=2, read=lambda: own[0] + 1)
    for _ in range(8):
        own[0] = shed.threads(own[0])
    assert own[0] == 1


def test_without_loadavg_or_with_one_thread_nothing_changes() -> None:
    assert ThreadShedder(4, cpus=4, read=lambda: None).threads(4) == 4
    assert ThreadShedder(1, cpus=2, read=lambda: 50).threads(1) == 1
    assert ThreadShedder(8, cpus=4, read=lambda: 0).threads(8) == 4  # never more threads than CPUs
