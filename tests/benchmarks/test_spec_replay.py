"""The drafting replay: step costs interpolate the measured curve, the engine's tree choice keeps a
prefix-closed set that pays for itself, and a replay whose drafter already holds the output drafts it far."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.spec_replay import Turn, cost_of, replay  # noqa: E402
from engine.speculative.chooser import choose_tree  # noqa: E402

COSTS = {1: 1.0, 2: 1.1, 3: 1.2, 5: 1.4, 9: 1.8, 17: 2.6}


def test_step_cost_interpolates_between_measured_row_counts() -> None:
    assert cost_of(1, COSTS) == 1.0 and cost_of(5, COSTS) == 1.4
    assert abs(cost_of(4, COSTS) - 1.3) < 1e-9
    assert abs(cost_of(25, COSTS) - 3.4) < 1e-9  # past the last: its slope goes on (trees of up to 32 rows)


def test_tree_choice_is_prefix_closed_and_drops_paths_that_do_not_pay() -> None:
    cands = {(1,): 0.9, (1, 2): 0.8, (3,): 0.05, (4, 5): 0.7, (1, 2, 6): 0.01}
    tree = choose_tree(cands, lambda n: cost_of(n + 1, COSTS), 31)  # the engine's choice, priced by the measured curve
    assert tree is not None and tree.paths == [(1,), (1, 2)]  # (4, 5) lacks its parent; (3,) and (1, 2, 6) cost more than they add
    assert choose_tree({(7,): 0.01}, lambda n: cost_of(n + 1, COSTS), 31) is None


def test_a_repeated_output_is_drafted_from_the_global_tree() -> None:
    out = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
    turns = [Turn([1, 2, 3], out), Turn([1, 2, 3], out)]
    first = replay(turns[:1], "chain", None, COSTS)
    both = replay(turns, "chain", None, COSTS)
    assert first["tokens_per_step"] < both["tokens_per_step"]  # the second turn drafts the first's output
    assert replay(turns, "tree", None, COSTS)["tokens_per_step"] >= first["tokens_per_step"]
    warm = replay(turns[:1], "chain", [[1, 2, 3, *out]], COSTS)
    assert warm["tokens_per_step"] > first["tokens_per_step"] and warm["modelled_speedup"] > 1.0


def test_quick_mode_replays_chain_and_tree() -> None:
    import os
    import subprocess

    import pytest

    from engine.config import data_dir

    if not (data_dir() / "tau-bench-airline" / "trajectories.json").exists():
        pytest.skip("needs ../shared/data/tau-bench-airline")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "spec_replay.py"), "--quick"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "chain" in out.stdout and "tree:measured" in out.stdout
