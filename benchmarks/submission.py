"""Job submission throughput and latency: 1,000 jobs of a trivial graph from 8 concurrent clients,
journal on, over loopback TCP, server in a separate process.

    python benchmarks/submission.py [--jobs 1000] [--clients 8] [--quick]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentrt.client import Client  # noqa: E402
from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402

GRAPHS = Path(__file__).resolve().parent.parent / "tests" / "agentrt" / "server_graphs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client_worker(address: str, n: int, latencies: list[float], window: int = 32) -> None:
    """Keep up to `window` jobs in flight; record submit-to-result latency of each."""
    import msgspec

    from agentrt import protocol as p

    with Client(address, timeout=60) as c:
        sent: dict[str, float] = {}
        submitted = done = 0
        while done < n:
            while submitted < n and len(sent) < window:
                rid = f"{threading.get_ident()}-{submitted}"
                c.sock.send(p.encode(p.Submit(request_id=rid, graph="echo", inputs={"text": "x"})))
                sent[rid] = time.perf_counter()
                submitted += 1
            msg = p.decode(c.sock.recv())
            if isinstance(msg, p.Accepted):
                sent[msg.job_id] = sent.pop(msg.request_id)
            elif isinstance(msg, p.Result):
                latencies.append(time.perf_counter() - sent.pop(msg.job_id))
                done += 1
            elif isinstance(msg, p.Error):
                raise RuntimeError(msgspec.to_builtins(msg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="200 jobs")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    jobs = 200 if args.quick else args.jobs
    address = f"tcp://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "agentrt.cli", "serve", "--no-engine", "--graphs", str(GRAPHS), "--tools", str(GRAPHS),
               "--bind", address, "--journal", f"{tmp}/journal.sqlite", "--max-inflight", "100000"]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(address, timeout=30) as c:
                c.submit("echo", {"text": "warm-up"})
            latencies: list[float] = []
            per = [jobs // args.clients + (i < jobs % args.clients) for i in range(args.clients)]
            threads = [threading.Thread(target=client_worker, args=(address, n, latencies)) for n in per]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
        finally:
            server.kill()
            server.wait()
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
    cols = ["jobs", "clients", "jobs/s", "p50 ms", "p99 ms"]
    rows = [[jobs, args.clients, jobs / elapsed, p50 * 1e3, p99 * 1e3]]
    print_table("job submission (journal on, loopback TCP)", cols, rows)
    if not args.no_write:
        cmd_s = "python benchmarks/submission.py" + (" --quick" if args.quick else f" --jobs {jobs} --clients {args.clients}")
        body = markdown_table(cols, rows) + "\n\nTarget: >= 2,000 jobs/s on the 2-core machine with the journal on. Clients keep up to 32 jobs in flight each."
        write_section("submission", "Job submission over ZeroMQ", body, cmd_s, {"jobs": jobs, "clients": args.clients, "seconds": elapsed, "p50_s": p50, "p99_s": p99})


if __name__ == "__main__":
    main()
