"""`make run`'s job names a user and a reservation that exist in the database it runs on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.config import data_dir
from tools.airline_db import airline_db

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


@pytest.mark.skipif(not (data_dir() / "tau-bench-airline" / "users.json").exists(), reason="needs the tau-bench data directory (AGENTRT_DATA_DIR)")
def test_make_run_names_a_real_user_and_their_reservation() -> None:
    line = next(ln for ln in MAKEFILE.read_text().splitlines() if "agentrt run airline_support" in ln)
    inputs = json.loads(re.search(r"--input '(.*)'", line)[1])  # type: ignore[index]
    text = " ".join(inputs["user_turns"])
    user = re.search(r"user id is (\w+)", text)[1]  # type: ignore[index]
    reservation = re.search(r"reservation is (\w+)", text)[1]  # type: ignore[index]
    db = airline_db(inputs.get("database", "auto"))
    assert user in db.users and reservation in db.reservations
    assert db.reservations[reservation]["user_id"] == user
