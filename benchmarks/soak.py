"""Soak: thousands of mixed jobs through `agentrt serve` (a separate process) while garbage frames
arrive and the server is killed with SIGKILL and restarted; every accepted job must end with its
expected result, delivered only to its owner, with the server's RSS bounded.

Jobs (two clients, each with a window of jobs in flight, submitted with idempotency keys and
retried across the restart): 60% `echo` (output names client and job), 10% `fail`, 10% `sleepy`
cancelled at once, 10% `unencodable` output, 10% `echo` re-submitted with the same key (duplicates).

    python benchmarks/soak.py [--jobs 2000] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402
import zmq  # noqa: E402

from agentrt import protocol as p  # noqa: E402
from agentrt.client import AsyncClient, ClientTimeout  # noqa: E402

GRAPHS = Path(__file__).resolve().parent.parent / "tests" / "agentrt" / "server_graphs"
GARBAGE = [b"", b"\xc1", b"\x91" * 5000, msgspec.msgpack.encode({"type": "submit", "v": 1, "request_id": "g", "graph": "echo", "priority": 2**63}),
           msgspec.msgpack.encode({"type": "submit", "v": 7, "request_id": "g", "graph": "echo"}),
           msgspec.msgpack.encode({"type": "result", "v": 1, "job_id": "x", "status": "succeeded"}),
           msgspec.msgpack.encode({"type": "fetch", "v": 1, "job_id": "0" * 16, "token": "forged.0000"}),
           b"\x84\xa4type\xa6submit\xaarequest_id\xa1r\xa5graph\xa4echo\xa6inputs\x81\xa1a" + b"\x91" * 100 + b"\xc0"]


@dataclass
class SoakReport:
    jobs: int = 0
    accepted: int = 0
    lost: int = 0
    misrouted: int = 0
    wrong: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    rss_mb: list[tuple[float, int, float, int]] = field(default_factory=list)  # (seconds, server generation, MB, jobs accepted)
    faults: dict[str, int] = field(default_factory=lambda: {"garbage_frames": 0, "sigkill_restarts": 0})
    downtime: float = 0.0  # seconds from the SIGKILL until the restarted server answered

    @property
    def jobs_per_s(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(len(lat) * q))] if lat else 0.0

    def rss_growth_mb(self) -> float:
        """RSS growth of the restarted server from the moment 70% of the jobs were accepted (well
        after its start-up imports and recovery) to the end."""
        late = [mb for _, gen, mb, accepted in self.rss_mb if gen == 2 and accepted >= 0.7 * self.jobs]
        return late[-1] - late[0] if len(late) > 1 else 0.0


class _Watched(AsyncClient):
    """An AsyncClient that records every Result it receives (to find misrouted ones)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: set[str] = set()

    def _dispatch(self, msg: p.Message) -> None:
        if isinstance(msg, p.Result):
            self.received.add(msg.job_id)
        super()._dispatch(msg)


class _Server:
    def __init__(self, address: str, journal: Path) -> None:
        self.address, self.journal, self.generation = address, journal, 0
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        self.generation += 1
        cmd = [sys.executable, "-m", "agentrt.cli", "serve", "--no-engine", "--graphs", str(GRAPHS), "--tools", str(GRAPHS),
               "--bind", self.address, "--journal", str(self.journal)]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the server answers (start-up imports take seconds on a busy machine)."""
        from agentrt.client import Client

        deadline = time.monotonic() + timeout
        while True:
            try:
                with Client(self.address, timeout=1.0) as c:
                    c.status("warm-up")
                return
            except ClientTimeout:
                if time.monotonic() > deadline:
                    raise

    def kill_and_restart(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        killed = time.monotonic()
        self.proc = self._start()
        self.downtime = 0.0

        def measure() -> None:
            self.wait_ready()
            self.downtime = time.monotonic() - killed

        self.timer = threading.Thread(target=measure, daemon=True)
        self.timer.start()

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0


def _expected(kind: str, name: str, i: int) -> tuple[set[str], Any]:
    if kind in ("echo", "dup"):
        return {"succeeded"}, f"{name}-{i}"
    if kind == "cancel":  # cancelled; or, if the kill lost the cancel, run again to completion
        return {"cancelled", "succeeded"}, None
    return {"failed"}, None


KINDS = ["echo"] * 6 + ["fail", "cancel", "unencodable", "dup"]


async def _retry(call: Any, deadline: float) -> Any:
    while True:
        try:
            return await call()
        except ClientTimeout:
            if time.monotonic() > deadline:
                raise


def _maybe_kill(report: SoakReport, server: _Server, kill_after: int) -> None:
    if report.accepted >= kill_after and not report.faults["sigkill_restarts"]:
        report.faults["sigkill_restarts"] += 1
        server.kill_and_restart()  # with jobs in flight, results unsent, submits unanswered


async def _one(c: _Watched, name: str, i: int, report: SoakReport, owned: set[str], deadline: float, fault: Any) -> None:
    kind = KINDS[i % len(KINDS)]
    jobs: dict[str, tuple[str, dict[str, Any]]] = {
        "echo": ("echo", {"text": f"{name}-{i}"}), "dup": ("echo", {"text": f"{name}-{i}"}), "fail": ("fail", {}),
        "cancel": ("sleepy", {"seconds": 2.0}), "unencodable": ("unencodable", {"kind": "bigint"})}
    graph, inputs = jobs[kind]
    start = time.perf_counter()
    job = await _retry(lambda: c.submit(graph, inputs, idempotency_key=f"{name}-{i}", wait=False), deadline)
    if kind == "dup":
        assert await _retry(lambda: c.submit(graph, {"text": "ignored"}, idempotency_key=f"{name}-{i}", wait=False), deadline) == job
    owned.add(job)
    report.accepted += 1
    fault()
    if kind == "cancel":
        await _retry(lambda: c.cancel(job), deadline)
    try:
        res = await _retry(lambda: c.result(job, timeout=max(1.0, deadline - time.monotonic())), deadline)
    except ClientTimeout:
        report.lost += 1
        return
    report.latencies.append(time.perf_counter() - start)
    states, output = _expected(kind, name, i)
    if res.status not in states or (output is not None and res.output != output):
        report.wrong += 1


async def _client(address: str, name: str, n: int, window: int, report: SoakReport, server: _Server, kill_after: int, deadline: float) -> None:
    owned: set[str] = set()
    sem = asyncio.Semaphore(window)
    c = _Watched(address, timeout=5.0)
    async with c:

        async def job(i: int) -> None:
            async with sem:
                await _one(c, name, i, report, owned, deadline, lambda: _maybe_kill(report, server, kill_after))

        await asyncio.gather(*(job(i) for i in range(n)))
        report.misrouted += len(c.received - owned)


def _garbage(address: str, stop: threading.Event, report: SoakReport, every: float) -> None:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    rng = random.Random(0)
    while not stop.wait(every):
        frame = rng.choice(GARBAGE + [rng.randbytes(rng.randint(1, 64))])
        sock.send_multipart([frame, b"extra"] if rng.random() < 0.1 else [frame])
        report.faults["garbage_frames"] += 1
        while sock.poll(0):
            sock.recv()
    sock.close(0)


def _sample_rss(server: _Server, stop: threading.Event, report: SoakReport, start: float) -> None:
    while not stop.wait(0.25):
        report.rss_mb.append((time.perf_counter() - start, server.generation, server.rss_mb(), report.accepted))


def run_soak(num_jobs: int = 2000, *, clients: int = 2, window: int = 48, garbage_every: float = 0.01, time_limit: float = 300.0) -> SoakReport:
    """Run the soak and return its report (see the module docstring)."""
    report = SoakReport(jobs=num_jobs)
    address = f"tcp://127.0.0.1:{_free_port()}"
    with tempfile.TemporaryDirectory() as tmp:
        server = _Server(address, Path(tmp) / "journal.sqlite")
        server.wait_ready()
        stop = threading.Event()
        start = time.perf_counter()
        threads = [threading.Thread(target=_garbage, args=(address, stop, report, garbage_every), daemon=True),
                   threading.Thread(target=_sample_rss, args=(server, stop, report, start), daemon=True)]
        try:
            for t in threads:
                t.start()
            per = [num_jobs // clients + (k < num_jobs % clients) for k in range(clients)]
            deadline = time.monotonic() + time_limit

            async def drive() -> None:
                await asyncio.gather(*(_client(address, f"c{k}", n, window, report, server, num_jobs // 2, deadline) for k, n in enumerate(per)))

            asyncio.run(drive())
            report.seconds = time.perf_counter() - start
            if report.faults["sigkill_restarts"]:
                server.timer.join(60)
                report.downtime = server.downtime
        finally:
            stop.set()
            for t in threads:
                t.join(5)
            server.proc.kill()
            server.proc.wait(10)
    return report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:

    from benchmarks.report import markdown_table, print_table, write_section

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="300 jobs, once")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    jobs, repeat = (300, 1) if args.quick else (args.jobs, args.repeat)
    runs = [run_soak(jobs) for _ in range(repeat)]
    cols = ["run", "jobs", "accepted", "lost", "misrouted", "wrong", "jobs/s", "p50 ms", "p99 ms", "restart s",
            "RSS max MB", "RSS growth MB", "garbage frames", "SIGKILL restarts"]
    rows: list[list[Any]] = [[str(k + 1), r.jobs, r.accepted, r.lost, r.misrouted, r.wrong, r.jobs_per_s, r.quantile(0.5) * 1e3,
                              r.quantile(0.99) * 1e3, r.downtime, max((mb for _, _, mb, _ in r.rss_mb), default=0.0), r.rss_growth_mb(),
                              r.faults["garbage_frames"], r.faults["sigkill_restarts"]] for k, r in enumerate(runs)]
    if repeat > 1:
        rows.append(["median [min-max]", *[_spread([row[c] for row in rows]) if c in (6, 7, 8, 9, 11) else "" for c in range(1, len(cols))]])
    print_table("soak: mixed jobs, garbage frames, one SIGKILL + restart", cols, rows)
    if not args.no_write:
        cmd = "python benchmarks/soak.py" + (" --quick" if args.quick else f" --jobs {jobs} --repeat {repeat}")
        body = markdown_table(cols, rows) + (
            "\n\nTwo clients, 48 jobs in flight each, jobs submitted with idempotency keys and retried across the restart. "
            "Latency is submit to result; p99 is the jobs caught by the restart, whose wait is the restart time (`restart s`, "
            "mostly the new process importing torch through `agentrt.sessions` -> `engine`). RSS growth is the restarted "
            "server's over the last 30% of the jobs. One run of each row; the machine was shared with other work, so "
            "throughput differences inside the spread are noise.")
        write_section("soak", "Soak: faults injected and survived", body, cmd,
                      {"runs": [{"jobs": r.jobs, "accepted": r.accepted, "lost": r.lost, "misrouted": r.misrouted, "wrong": r.wrong,
                                 "seconds": r.seconds, "p50_s": r.quantile(0.5), "p99_s": r.quantile(0.99), "restart_s": r.downtime,
                                 "rss_mb": r.rss_mb, "faults": r.faults} for r in runs]})
    bad = [r for r in runs if r.lost or r.misrouted or r.wrong]
    if bad:
        raise SystemExit(f"soak failed: {[(r.lost, r.misrouted, r.wrong) for r in bad]} (lost, misrouted, wrong)")


def _spread(values: list[float]) -> str:
    import statistics

    return f"{statistics.median(values):,.3g} [{min(values):,.3g}-{max(values):,.3g}]"


if __name__ == "__main__":
    main()
