"""The airline train/eval split: by task, deterministic, and the shipped models never saw an eval task."""

from __future__ import annotations

import json

import pytest

from engine.config import DEFAULT_MODEL_DIR, data_dir
from engine.train.data import airline_split, load_airline, split_runs, split_tasks

HAS_DATA = (data_dir() / "tau-bench-airline" / "trajectories.json").exists()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="needs ../shared/data/tau-bench-airline")


def test_split_is_disjoint_complete_and_independent_of_order() -> None:
    ids = set(range(40))
    split = split_tasks(ids)
    assert not split.train & split.eval and split.train | split.eval == ids
    assert len(split.eval) == 4
    assert split_tasks(set(reversed(range(40)))) == split


def test_a_single_task_still_gets_an_eval_task_and_bad_split_names_are_rejected() -> None:
    assert split_tasks({7}).eval == {7}
    with pytest.raises(ValueError, match="'test'"):
        split_tasks({1, 2}).of("test")  # type: ignore[arg-type]


@needs_data
def test_eval_tasks_are_exactly_those_the_shipped_models_held_out() -> None:
    split = airline_split()
    for model in (DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR.parent / "draft_model"):
        held_out = set(json.loads((model / "eval.json").read_text())["held_out_tasks"])
        assert split.eval <= held_out, f"{model.name} trained on eval tasks {sorted(split.eval - held_out)}"
    assert sorted(split.eval) == [8, 14, 16, 31]


@needs_data
def test_training_conversations_and_eval_runs_do_not_share_a_task() -> None:
    data = load_airline()
    runs = split_runs("eval")
    assert {r["task_id"] for r in runs} == set(data.held_out_tasks)
    assert len(runs) == len(data.held_out) == 16
    eval_trajs = {json.dumps(r["traj"]) for r in runs}
    assert not any(json.dumps(c) in eval_trajs for c in data.train)
