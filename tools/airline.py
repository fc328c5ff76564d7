"""The 14 tau-bench airline tools, over the job's own copy of the airline database.

Tools follow tau-bench's conventions: they return JSON text, and a request that breaks a business
rule (unknown user, not enough balance, ...) returns an "Error: ..." string for the model to read.
Malformed arguments never reach a tool: the runtime validates them against the schema first.
The database a tool sees is the one installed by `use_database` for the running job.
Docstrings (first paragraphs) are tau-bench's own tool descriptions, word for word, so the system turn the
model reads equals the one of the recorded runs it was trained on (tests/tools/test_airline_schemas.py).
"""

from __future__ import annotations

import ast
import contextvars
import json
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import msgspec

from agentrt.api import tool
from tools.airline_db import AIRPORTS, AirlineDB

_DB: contextvars.ContextVar[AirlineDB] = contextvars.ContextVar("airline_db")


class FlightRef(msgspec.Struct):
    flight_number: str
    date: str


class Passenger(msgspec.Struct):
    first_name: str
    last_name: str
    dob: str


class Payment(msgspec.Struct):
    payment_id: str
    amount: float


@contextmanager
def use_database(db: AirlineDB) -> Iterator[AirlineDB]:
    """Install `db` as the database of the tools called inside this block (and tasks it starts)."""
    token = _DB.set(db)
    try:
        yield db
    finally:
        _DB.reset(token)


def _db() -> AirlineDB:
    try:
        return _DB.get()
    except LookupError:
        raise RuntimeError("no airline database installed: wrap the job in tools.airline.use_database(db)") from None


def _dump(obj: Any) -> str:
    return json.dumps(obj)


def _flight_on(number: str, date: str) -> dict[str, Any] | None:
    f = _db().flights.get(number)
    return None if f is None or date not in f["dates"] else f


@tool
def get_user_details(user_id: str) -> str:
    """Get the details of an user, including their reservations."""
    user = _db().users.get(user_id)
    return _dump(user) if user is not None else "Error: user not found"


@tool
def get_reservation_details(reservation_id: str) -> str:
    """Get the details of a reservation."""
    res = _db().reservations.get(reservation_id)
    return _dump(res) if res is not None else "Error: reservation not found"


@tool
def list_all_airports() -> str:
    """List all airports and their cities."""
    return _dump(AIRPORTS)


def _available(f: dict[str, Any], date: str) -> dict[str, Any] | None:
    day = f["dates"].get(date)
    if day is None or day["status"] != "available":
        return None
    info = {k: v for k, v in f.items() if k != "dates"}
    return info | {"status": "available", "available_seats": day["available_seats"], "prices": day["prices"]}


@tool
def search_direct_flight(origin: str, destination: str, date: str) -> str:
    """Search direct flights between two cities on a specific date."""
    found = [x for f in _db().flights.values() if f["origin"] == origin and f["destination"] == destination if (x := _available(f, date))]
    return _dump(found)


@tool
def search_onestop_flight(origin: str, destination: str, date: str) -> str:
    """Search direct flights between two cities on a specific date."""
    out = []
    for f1 in _db().flights.values():
        if f1["origin"] != origin:
            continue
        for f2 in _db().flights.values():
            if f2["destination"] != destination or f2["origin"] != f1["destination"]:
                continue
            # As tau-bench: an arrival marked "+1" connects the next day; times compare as strings.
            date2 = f"2024-05-{int(date[-2:]) + 1}" if "+1" in f1["scheduled_arrival_time_est"] else date
            if f1["scheduled_arrival_time_est"] > f2["scheduled_departure_time_est"]:
                continue
            first, second = _available(f1, date), _available(f2, date2)
            if first is not None and second is not None:
                out.append([first | {"date": date}, second | {"date": date2}])
    return _dump(out)


def _bookable(ref: FlightRef, cabin: str, num_passengers: int) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """(flight, its day record) when `ref` can seat the passengers in `cabin`, else an error string."""
    f = _flight_on(ref.flight_number, ref.date)
    day = f["dates"][ref.date] if f else None
    if f is None or day is None or day["status"] != "available":
        return f"Error: flight {ref.flight_number} not available on {ref.date}"
    if day["available_seats"][cabin] < num_passengers:
        return f"Error: not enough seats on flight {ref.flight_number}"
    return f, day


def _charge(user: dict[str, Any], payment_id: str, amount: float) -> str | None:
    """Take `amount` from a payment method; an error message when impossible."""
    method = user["payment_methods"].get(payment_id)
    if method is None:
        return "Error: payment method not found"
    if method["source"] in ("gift_card", "certificate"):
        if method["amount"] < amount:
            return f"Error: not enough balance in payment method {payment_id}"
        if method["source"] == "certificate":
            del user["payment_methods"][payment_id]
        else:
            method["amount"] = round(method["amount"] - amount, 2)
    return None


@tool
def book_reservation(
    user_id: str, origin: str, destination: str, flight_type: Literal["one_way", "round_trip"],
    cabin: Literal["basic_economy", "economy", "business"], flights: list[FlightRef], passengers: list[Passenger],
    payment_methods: list[Payment], total_baggages: int, nonfree_baggages: int, insurance: Literal["yes", "no"],
) -> str:
    """Book a reservation."""
    db = _db()
    user = db.users.get(user_id)
    if user is None:
        return "Error: user not found"
    booked, total = [], 0.0
    for ref in flights:
        found = _bookable(ref, cabin, len(passengers))
        if isinstance(found, str):
            return found
        f, day = found
        price = day["prices"][cabin]
        total += price * len(passengers)
        booked.append({"origin": f["origin"], "destination": f["destination"], "flight_number": ref.flight_number, "date": ref.date, "price": price})
    total += 50 * nonfree_baggages + (30 * len(passengers) if insurance == "yes" else 0)
    paid = sum(p.amount for p in payment_methods)
    if abs(paid - total) > 1e-6:
        return f"Error: payment amount does not add up, total price is {total:g}, but paid {paid:g}"
    for p in payment_methods:
        if (err := _charge(user, p.payment_id, p.amount)) is not None:
            return err
    for ref in flights:
        db.flights[ref.flight_number]["dates"][ref.date]["available_seats"][cabin] -= len(passengers)
    rid = _new_reservation_id(db)
    res = {"reservation_id": rid, "user_id": user_id, "origin": origin, "destination": destination, "flight_type": flight_type,
           "cabin": cabin, "flights": booked, "passengers": [msgspec.to_builtins(p) for p in passengers],
           "payment_history": [msgspec.to_builtins(p) for p in payment_methods], "created_at": "2024-05-15T15:00:00",
           "total_baggages": total_baggages, "nonfree_baggages": nonfree_baggages, "insurance": insurance}
    db.reservations[rid] = res
    user["reservations"].append(rid)
    return _dump(res)


def _new_reservation_id(db: AirlineDB) -> str:
    # tau-bench gives a new booking the id "HATHAT" (its recorded runs show it); later ones get a suffix.
    rid, n = "HATHAT", 1
    while rid in db.reservations:
        rid, n = f"HAT{n:03d}", n + 1
    return rid


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))  # type: ignore[operator]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))  # type: ignore[operator]
    raise ValueError("only numbers, + - * / and parentheses are allowed")


@tool
def calculate(expression: str) -> str:
    """Calculate the result of a mathematical expression."""
    try:
        return str(round(_eval(ast.parse(expression, mode="eval")), 2))
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return f"Error: {exc}"


@tool
def cancel_reservation(reservation_id: str) -> str:
    """Cancel the whole reservation."""
    db = _db()
    res = db.reservations.get(reservation_id)
    if res is None:
        return "Error: reservation not found"
    refunds = [{"payment_id": p["payment_id"], "amount": -p["amount"]} for p in res["payment_history"]]
    res["payment_history"].extend(refunds)
    res["status"] = "cancelled"
    return _dump(res)


@tool
def send_certificate(user_id: str, amount: float) -> str:
    """Send a certificate to a user. Be careful!"""
    user = _db().users.get(user_id)
    if user is None:
        return "Error: user not found"
    cid, n = "certificate_3221322", 3221322  # tau-bench's first certificate id
    while cid in user["payment_methods"]:
        n += 1
        cid = f"certificate_{n}"
    user["payment_methods"][cid] = {"source": "certificate", "amount": amount, "id": cid}
    return f"Certificate {cid} added to user {user_id} with amount {amount:g}."


@tool
def think(thought: str) -> str:
    """Use the tool to think about something. It will not obtain new information or change the database, but just append the thought to the log. Use it when complex reasoning is needed."""
    return ""


@tool
def transfer_to_human_agents(summary: str) -> str:
    """Transfer the user to a human agent, with a summary of the user's issue. Only transfer if the user explicitly asks for a human agent, or if the user's issue cannot be resolved by the agent with the available tools."""
    return "Transfer successful"


@tool
def update_reservation_baggages(reservation_id: str, total_baggages: int, nonfree_baggages: int, payment_id: str) -> str:
    """Update the baggage information of a reservation."""
    db = _db()
    res = db.reservations.get(reservation_id)
    if res is None:
        return "Error: reservation not found"
    cost = 50 * max(0, nonfree_baggages - res["nonfree_baggages"])
    if cost and (err := _charge(db.users[res["user_id"]], payment_id, cost)) is not None:
        return err
    res["total_baggages"], res["nonfree_baggages"] = total_baggages, nonfree_baggages
    if cost:
        res["payment_history"].append({"payment_id": payment_id, "amount": cost})
    return _dump(res)


@tool
def update_reservation_flights(reservation_id: str, cabin: Literal["basic_economy", "economy", "business"], flights: list[FlightRef], payment_id: str) -> str:
    """Update the flight information of a reservation."""
    db = _db()
    res = db.reservations.get(reservation_id)
    if res is None:
        return "Error: reservation not found"
    new, total = [], 0.0
    for ref in flights:
        old = next((x for x in res["flights"] if x["flight_number"] == ref.flight_number and x["date"] == ref.date), None)
        if old is not None and cabin == res["cabin"]:
            new.append(old)
            total += old["price"]
            continue
        found = _bookable(ref, cabin, len(res["passengers"]))
        if isinstance(found, str):
            return found
        f, day = found
        new.append({"flight_number": ref.flight_number, "date": ref.date, "price": day["prices"][cabin], "origin": f["origin"], "destination": f["destination"]})
        total += day["prices"][cabin]
    diff = (total - sum(x["price"] for x in res["flights"])) * len(res["passengers"])
    if diff > 0 and (err := _charge(db.users[res["user_id"]], payment_id, diff)) is not None:
        return err
    if diff:
        res["payment_history"].append({"payment_id": payment_id, "amount": diff})
    # As in tau-bench (and its recorded runs), the reservation's cabin field itself is not rewritten.
    res["flights"] = new
    return _dump(res)


@tool
def update_reservation_passengers(reservation_id: str, passengers: list[Passenger]) -> str:
    """Update the passenger information of a reservation."""
    res = _db().reservations.get(reservation_id)
    if res is None:
        return "Error: reservation not found"
    if len(passengers) != len(res["passengers"]):
        return "Error: number of passengers does not match"
    res["passengers"] = [msgspec.to_builtins(p) for p in passengers]
    return _dump(res)


TOOLS = [book_reservation, calculate, cancel_reservation, get_reservation_details, get_user_details, list_all_airports,
         search_direct_flight, search_onestop_flight, send_certificate, think, transfer_to_human_agents,
         update_reservation_baggages, update_reservation_flights, update_reservation_passengers]
