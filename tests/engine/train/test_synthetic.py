"""Synthetic training conversations and extraction examples: grounded, seeded, and never on eval data."""

from __future__ import annotations

import json

import pytest

from engine.config import data_dir
from engine.train.data import split_runs
from engine.train.extraction import SCHEMAS, extraction_examples
from engine.train.synthetic import first_tool_call, load_records, synthetic_conversations, user_split

HAS_DATA = (data_dir() / "tau-bench-airline" / "users.json").exists()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="needs ../shared/data/tau-bench-airline")


@needs_data
def test_synthetic_users_exclude_every_id_of_the_held_out_runs_and_the_splits_are_disjoint() -> None:
    records = load_records()
    split = user_split(records)
    held_out_text = json.dumps([r["traj"] for r in split_runs("eval")])
    assert not set(split["train"]) & set(split["eval"]) and len(split["eval"]) >= 20
    for user in split["train"] + split["eval"]:
        assert user not in held_out_text
        assert not any(r in held_out_text for r in records.users[user]["reservations"])


@needs_data
def test_conversations_are_seeded_and_their_tool_calls_copy_ids_the_user_gave_and_results_are_the_records() -> None:
    records = load_records()
    convs = synthetic_conversations(60, "train", "policy", seed=3)
    assert convs == synthetic_conversations(60, "train", "policy", seed=3)
    assert convs != synthetic_conversations(60, "train", "policy", seed=4)
    calls = 0
    for conv in convs:
        assert conv[0] == {"role": "system", "content": "policy"}
        for i, m in enumerate(conv):
            if not m.get("tool_calls"):
                continue
            fn = m["tool_calls"][0]["function"]
            said = " ".join(x["content"] for x in conv[:i] if x["role"] == "user")
            result = conv[i + 1]["content"]
            if fn["name"] == "get_user_details":
                calls += 1
                assert fn["arguments"]["user_id"] in said
                record = records.users.get(fn["arguments"]["user_id"])
                if record is not None:
                    assert result == json.dumps(record)
                elif result != "Error: user not found":  # a real user's copy under new ids
                    fresh = json.loads(result)
                    assert fresh["reservations"] and all(len(r) == 6 and r not in records.reservations for r in fresh["reservations"])
            elif fn["name"] == "get_reservation_details":
                calls += 1
                assert fn["arguments"]["reservation_id"] in said
                rid = fn["arguments"]["reservation_id"]
                assert json.loads(result)["reservation_id"] == rid
                if rid in records.reservations:
                    assert json.loads(result) == records.reservations[rid]
    assert calls >= 40
    case = first_tool_call(convs[0])
    assert case is None or case[0][-1]["role"] == "user"


def test_extraction_examples_follow_their_schema_and_eval_names_and_wordings_are_unseen() -> None:
    train, held = extraction_examples(300, "train", seed=0), extraction_examples(100, "eval", seed=1)
    for ex in train + held:
        assert list(ex.answer) == list(SCHEMAS[ex.kind]["properties"])  # declared order
        assert all(str(v) in ex.prompt for v in ex.answer.values())
    train_names = {ex.answer["name"] for ex in train if ex.kind == "person"}
    held_names = {ex.answer["name"] for ex in held if ex.kind == "person"}
    assert held_names and not train_names & held_names
    strip = lambda ex: ex.prompt.split(": ", 1)[-1]  # noqa: E731
    assert not {strip(e) for e in held} & {strip(e) for e in train}
