"""Airline tools: schemas match tau-bench's, behaviour on the synthetic DB, replay of recorded runs."""

from __future__ import annotations

import json

import pytest

from engine.config import data_dir
from tools.airline import (
    TOOLS,
    book_reservation,
    calculate,
    cancel_reservation,
    get_user_details,
    search_direct_flight,
    use_database,
)
from tools.airline_db import generate_synthetic_db, load_database

DATA = data_dir() / "tau-bench-airline"
HAVE_DATA = (DATA / "trajectories.json").exists()
BY_NAME = {t.name: t for t in TOOLS}


def call(name: str, **args: object) -> str:
    t = BY_NAME[name]
    return t(**t.validate(args))


def test_synthetic_db_is_deterministic_and_copies_are_isolated() -> None:
    a, b = generate_synthetic_db(3), generate_synthetic_db(3)
    assert a == b and generate_synthetic_db(4) != a
    c = a.copy()
    uid = next(iter(c.users))
    c.users[uid]["email"] = "changed"
    assert a.users[uid]["email"] != "changed"


@pytest.mark.skipif(not HAVE_DATA, reason="needs ../shared/data/tau-bench-airline")
def test_tool_schemas_match_tau_bench_names_and_required_fields() -> None:
    ref = {t["function"]["name"]: t["function"]["parameters"] for t in json.loads((DATA / "tools.json").read_text())}
    assert set(ref) == set(BY_NAME)
    for name, params in ref.items():
        ours = BY_NAME[name].parameters
        assert set(params["properties"]) == set(ours.get("properties", {})), name
        assert set(params.get("required", [])) == set(ours.get("required", [])), name


def test_booking_checks_payment_and_charges_it() -> None:
    db = generate_synthetic_db(0)
    with use_database(db):
        flight = next(f for f in db.flights.values() if f["dates"]["2024-05-20"]["available_seats"]["economy"] > 0)
        price = flight["dates"]["2024-05-20"]["prices"]["economy"]
        uid = next(iter(db.users))
        card = next(k for k in db.users[uid]["payment_methods"] if k.startswith("credit_card"))
        args = dict(user_id=uid, origin=flight["origin"], destination=flight["destination"], flight_type="one_way", cabin="economy",
                    flights=[{"flight_number": flight["flight_number"], "date": "2024-05-20"}],
                    passengers=[{"first_name": "A", "last_name": "B", "dob": "1990-01-01"}], total_baggages=0, nonfree_baggages=0, insurance="no")
        assert call("book_reservation", **args, payment_methods=[{"payment_id": card, "amount": price - 1}]).startswith("Error: payment amount")
        res = json.loads(call("book_reservation", **args, payment_methods=[{"payment_id": card, "amount": price}]))
        assert res["reservation_id"] in db.users[uid]["reservations"]
        cancelled = json.loads(call("cancel_reservation", reservation_id=res["reservation_id"]))
        assert cancelled["status"] == "cancelled" and sum(p["amount"] for p in cancelled["payment_history"]) == 0
        assert get_user_details("nobody") == "Error: user not found"
        assert calculate("(100 + 55) * 2 / 4") == "77.5" and calculate("__import__('os')").startswith("Error")
        assert json.loads(search_direct_flight(flight["origin"], flight["destination"], "2024-05-20"))
    assert book_reservation.name == "book_reservation" and cancel_reservation.name == "cancel_reservation"


def test_tools_without_a_database_fail_with_a_clear_message() -> None:
    with pytest.raises(RuntimeError, match="use_database"):
        get_user_details("x")


@pytest.mark.skipif(not HAVE_DATA, reason="needs ../shared/data/tau-bench-airline")
def test_replaying_recorded_tool_calls_reproduces_recorded_outputs() -> None:
    runs = json.loads((DATA / "trajectories.json").read_text())
    base = load_database()
    matched = total = 0
    for run in runs[:40]:
        db = base.copy()
        pending: dict[str, tuple[str, dict]] = {}
        with use_database(db):
            for m in run["traj"]:
                for c in m.get("tool_calls") or ():
                    pending[c["id"]] = (c["function"]["name"], json.loads(c["function"]["arguments"]))
                if m["role"] == "tool" and m["tool_call_id"] in pending:
                    name, args = pending.pop(m["tool_call_id"])
                    try:
                        out = call(name, **args)
                    except Exception as exc:  # schema rejections count as mismatches
                        out = f"raised {exc}"
                    total += 1
                    matched += _same(out, m["content"])
    assert total > 100
    assert matched / total >= 0.95, f"{matched}/{total}"


def _same(a: str, b: str) -> bool:
    # The recorded runs predate the published users.json, which renamed address "province" to "state".
    b = b.replace('"province":', '"state":')
    try:
        return json.loads(a) == json.loads(b)
    except (json.JSONDecodeError, TypeError):
        return a.strip() == b.strip()
