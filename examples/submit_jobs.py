"""Submit jobs to a running `agentrt serve` and stream their events.

    agentrt serve &            # in another terminal
    python examples/submit_jobs.py
"""

from __future__ import annotations

from agentrt import Client


def main() -> None:
    with Client("tcp://127.0.0.1:5555") as client:
        result = client.submit(
            "airline_support",
            {"request": "Hi, I want to check my reservation. My user id is mia_li_1000."},
            on_event=lambda e: print(f"  {e.seq:>3} {e.kind:<14} {e.data.get('name', '')}"),
        )
        print(result.status, result.output)
        job = client.submit("react", {"question": "Which airports do you serve?"}, wait=False)
        print("submitted", job, "->", client.status(job))


if __name__ == "__main__":
    main()
