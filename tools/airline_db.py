"""The tau-bench airline database: loading the real one, or generating a seeded synthetic one.

The real database is read from the public data directory (`$AGENTRT_DATA_DIR` or ../shared/data)
and never copied into the repository. The synthetic one has the same schema and is what the README's
main job and the tests use when no data directory is present. Each job works on its own copy.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import msgspec

from engine.config import DataDirError, data_dir, data_file

AIRPORTS = {
    "ATL": "Atlanta", "BOS": "Boston", "CLT": "Charlotte", "DEN": "Denver", "DFW": "Dallas-Fort Worth",
    "DTW": "Detroit", "EWR": "Newark", "IAH": "Houston", "JFK": "New York", "LAS": "Las Vegas",
    "LAX": "Los Angeles", "LGA": "New York", "MCO": "Orlando", "MIA": "Miami", "MSP": "Minneapolis",
    "ORD": "Chicago", "PHL": "Philadelphia", "PHX": "Phoenix", "SEA": "Seattle", "SFO": "San Francisco",
}
FIRST = ["Mia", "Omar", "Aarav", "Chen", "Sofia", "Liam", "Yara", "Noah", "Ivan", "Lucas", "Emma", "Raj", "Mei", "Anya", "Ethan"]
LAST = ["Li", "Davis", "Ahmed", "Lee", "Garcia", "Smith", "Brown", "Kim", "Rossi", "Silva", "Khan", "Martin", "Jackson"]
CABINS = ("basic_economy", "economy", "business")


@dataclass(slots=True)
class AirlineDB:
    users: dict[str, Any]
    flights: dict[str, Any]
    reservations: dict[str, Any]

    def copy(self) -> AirlineDB:
        """A deep copy (each job mutates its own state)."""
        return AirlineDB(*(msgspec.msgpack.decode(msgspec.msgpack.encode(x)) for x in (self.users, self.flights, self.reservations)))


def load_database(directory: str | None = None) -> AirlineDB:
    """The real tau-bench database. Raises DataDirError naming the missing file."""
    parts = [json.loads(data_file("tau-bench-airline", f"{n}.json", override=directory).read_text()) for n in ("users", "flights", "reservations")]
    return AirlineDB(*parts)


def airline_db(source: str = "auto", seed: int = 0) -> AirlineDB:
    """`real`, `synthetic`, or `auto` (real when the data directory has it, else synthetic)."""
    if source not in ("auto", "real", "synthetic"):
        raise ValueError(f"source must be auto, real or synthetic, got {source!r}")
    if source == "real" or (source == "auto" and (data_dir() / "tau-bench-airline" / "users.json").exists()):
        try:
            return load_database()
        except DataDirError:
            if source == "real":
                raise
    return generate_synthetic_db(seed)


def _flight_dates(rng: random.Random, base_price: int) -> dict[str, Any]:
    dates = {}
    for day in range(1, 31):
        date = f"2024-05-{day:02d}"
        if day < 15:
            dates[date] = {"status": "landed"} if rng.random() > 0.05 else {"status": "cancelled"}
        else:
            seats = {c: rng.randint(0, 20) for c in CABINS}
            prices = {"basic_economy": base_price, "economy": int(base_price * 1.5), "business": base_price * 4}
            dates[date] = {"status": "available", "available_seats": seats, "prices": prices}
    return dates


def generate_synthetic_db(seed: int = 0, num_users: int = 50, num_flights: int = 120, num_reservations: int = 100) -> AirlineDB:
    """A deterministic database of the real schema: routes between AIRPORTS, May 2024 schedules."""
    rng = random.Random(seed)
    codes = sorted(AIRPORTS)
    flights = {}
    for i in range(1, num_flights + 1):
        o, d = rng.sample(codes, 2)
        dep = rng.randint(5, 20)
        number = f"HAT{i:03d}"
        flights[number] = {"flight_number": number, "origin": o, "destination": d,
                           "scheduled_departure_time_est": f"{dep:02d}:00:00", "scheduled_arrival_time_est": f"{dep + rng.randint(1, 4):02d}:30:00",
                           "dates": _flight_dates(rng, rng.randint(50, 200))}
    users = {}
    for i in range(num_users):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        uid = f"{first.lower()}_{last.lower()}_{1000 + i}"
        card, gift = f"credit_card_{rng.randint(10**6, 10**7)}", f"gift_card_{rng.randint(10**6, 10**7)}"
        users[uid] = {"name": {"first_name": first, "last_name": last},
                      "address": {"address1": f"{rng.randint(1, 999)} Main Street", "address2": "", "city": "Austin", "country": "USA", "state": "TX", "zip": "78750"},
                      "email": f"{uid}@example.com", "dob": f"19{rng.randint(50, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
                      "payment_methods": {card: {"source": "credit_card", "brand": "visa", "last_four": f"{rng.randint(1000, 9999)}", "id": card},
                                          gift: {"source": "gift_card", "amount": rng.randint(0, 300), "id": gift}},
                      "saved_passengers": [], "membership": rng.choice(["regular", "silver", "gold"]), "reservations": []}
    reservations = {}
    uids = sorted(users)
    for _ in range(num_reservations):
        uid = rng.choice(uids)
        f = flights[rng.choice(sorted(flights))]
        cabin = rng.choice(CABINS)
        date = f"2024-05-{rng.randint(15, 30):02d}"
        price = f["dates"][date]["prices"][cabin]
        rid = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(6))
        pay = next(iter(users[uid]["payment_methods"]))
        reservations[rid] = {"reservation_id": rid, "user_id": uid, "origin": f["origin"], "destination": f["destination"],
                             "flight_type": "one_way", "cabin": cabin,
                             "flights": [{"origin": f["origin"], "destination": f["destination"], "flight_number": f["flight_number"], "date": date, "price": price}],
                             "passengers": [{"first_name": users[uid]["name"]["first_name"], "last_name": users[uid]["name"]["last_name"], "dob": users[uid]["dob"]}],
                             "payment_history": [{"payment_id": pay, "amount": price}], "created_at": "2024-05-01T10:00:00",
                             "total_baggages": 0, "nonfree_baggages": 0, "insurance": "no"}
        users[uid]["reservations"].append(rid)
    return AirlineDB(users, flights, reservations)
