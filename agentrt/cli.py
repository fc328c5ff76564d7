"""The `agentrt` command line (one typer app)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import anyio
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

app = typer.Typer(help="agentrt: run agent graphs on the embedded inference engine.", no_args_is_help=True)
console = Console()


@app.callback()
def _root() -> None:
    """agentrt: run agent graphs on the embedded inference engine."""


def load_registry(graphs: Path, tools: Path) -> Any:
    from agentrt.api import Registry

    reg = Registry()
    for path in (tools, graphs):
        if path.exists():
            reg.load_path(path)
    return reg


class Progress:
    """Live view of a running job: tasks running per pool, tokens generated, tokens/s."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {"gpu": 0, "cpu": 0, "none": 0, "storage": 0}
        self.pools: dict[str, str] = {}
        self.tokens = 0
        self.done = 0
        self.start = time.perf_counter()

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        pool = {"llm": "gpu", "tool": "cpu", "agent": "none", "io": "storage"}.get(event.get("task_kind", ""), "none")
        if kind == "task_started":
            self.running[pool] += 1
        elif kind == "task_finished":
            self.running[pool] -= 1
            self.done += 1
            self.tokens += (event.get("usage") or {}).get("generated_tokens", 0)

    def render(self) -> Table:
        rate = self.tokens / max(1e-9, time.perf_counter() - self.start)
        t = Table.grid(padding=(0, 2))
        t.add_row("running", "  ".join(f"{k}: {v}" for k, v in self.running.items()), f"done: {self.done}",
                  f"generated: {self.tokens} tok", f"{rate:,.1f} tok/s")
        return t


def task_table(dag: Any) -> Table:
    table = Table(title="tasks")
    for col in ("task", "kind", "state", "prompt", "cached", "computed", "generated", "device s", "cpu s", "cost $"):
        table.add_column(col, justify="left" if col in ("task", "kind", "state") else "right")
    for t in dag.tasks.values():
        u = t.usage
        table.add_row(t.name, t.kind.value, t.state.value, str(u.prompt_tokens), str(u.cached_tokens), str(u.prefill_tokens_computed),
                      str(u.generated_tokens), f"{u.device_seconds:.3f}", f"{u.cpu_seconds:.4f}", f"{u.cost_usd:.2e}")
    return table


RAY = typer.Option(None, "--ray", help="run on Ray: a cluster address (as ray.init takes it) or 'local' to start one")
ENGINE_REPLICAS = typer.Option(1, help="with --ray: engine replicas (Ray actors) behind the router")
PREFILL_REPLICAS = typer.Option(0, help="with --ray: prefill replicas (disaggregated; needs --decode-replicas)")
DECODE_REPLICAS = typer.Option(0, help="with --ray: decode replicas (disaggregated; needs --prefill-replicas)")
ROUTER = typer.Option("kv-aware", help="with --ray: router policy: kv-aware, round-robin or least-loaded")


def _engine(model: Path | None, ray: str | None, replicas: int, prefill: int, decode: int, router: str) -> tuple[Any, Any, Any]:
    """(engine client, tool executor or None, Ray cluster or None): embedded, or replicas on Ray."""
    if ray is not None:
        from agentrt.ray import RayCluster

        cluster = RayCluster.from_cli(ray, replicas, prefill, decode, router, model)
        return cluster.engine, cluster.tools, cluster
    from agentrt.engine_client import EmbeddedEngine
    from engine import LLM

    return EmbeddedEngine(LLM(model)), None, None


@app.command()
def run(
    graph: str = typer.Argument(..., help="name of a registered graph, e.g. airline_support"),
    input: str = typer.Option("{}", "--input", "-i", help="the graph's inputs as a JSON object"),
    graphs: Path = typer.Option(Path("graphs"), help="folder of graph files to load"),
    tools: Path = typer.Option(Path("tools"), help="folder of tool files to load"),
    model: Path | None = typer.Option(None, help="model directory (default: the shipped model)"),
    policy: str = typer.Option("las", help="scheduling policy: las or fcfs"),
    trace: Path | None = typer.Option(None, help="write OpenTelemetry spans to this JSONL file"),
    dag: Path | None = typer.Option(None, help="write the job's DAG as JSON here (and DOT beside it)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    ray: str | None = RAY, engine_replicas: int = ENGINE_REPLICAS, prefill_replicas: int = PREFILL_REPLICAS,
    decode_replicas: int = DECODE_REPLICAS, router: str = ROUTER,
) -> None:
    """Run one job locally with a live progress display; print its result and a per-task table."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    try:
        inputs = json.loads(input)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--input is not JSON: {exc}") from exc
    from agentrt import telemetry
    from agentrt.executor import Runtime
    from agentrt.types import JobSpec

    if trace is not None:
        telemetry.configure(f"jsonl:{trace}")
    registry = load_registry(graphs, tools)
    with console.status("loading the model"):
        engine, tool_executor, cluster = _engine(model, ray, engine_replicas, prefill_replicas, decode_replicas, router)
    runtime = Runtime(registry, engine, policy=policy, tools=tool_executor)
    progress = Progress()

    async def main() -> Any:
        with Live(progress.render(), console=console, refresh_per_second=4) as live:
            async def refresh() -> None:
                while True:
                    live.update(progress.render())
                    await anyio.sleep(0.25)

            async with anyio.create_task_group() as tg:
                tg.start_soon(refresh)
                result = await runtime.run_job(JobSpec(graph=graph, inputs=inputs), on_event=progress.on_event)
                tg.cancel_scope.cancel()
            live.update(progress.render())
        return result

    result = anyio.run(main)
    job_dag = runtime.jobs[result.job_id].dag
    console.print_json(json.dumps({"status": result.status, "output": result.output, "error": result.error}, default=str))
    console.print(task_table(job_dag))
    u = result.usage
    console.print(f"job {result.job_id}: {result.status} in {result.seconds:.2f}s; tokens prompt={u.prompt_tokens} cached={u.cached_tokens} "
                  f"computed={u.prefill_tokens_computed} generated={u.generated_tokens}; device {u.device_seconds:.2f}s; cost ${u.cost_usd:.6f}")
    if dag is not None:
        dag.write_text(job_dag.dumps())
        dag.with_suffix(".dot").write_text(job_dag.to_dot())
    if cluster is not None:
        cluster.shutdown()
    else:
        engine.llm.close()
    if result.status != "succeeded":
        raise typer.Exit(1)


trace_app = typer.Typer(help="Read span files written with --trace (JSONL).")
app.add_typer(trace_app, name="trace")


def _read_spans(file: Path) -> list[dict[str, Any]]:
    if not file.exists():
        raise typer.BadParameter(f"no such trace file: {file}")
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


@trace_app.command("show")
def trace_show(file: Path = typer.Argument(..., help="JSONL span file"), job: str | None = typer.Option(None, help="only this job id")) -> None:
    """Render each job's span tree with tokens and cost per task."""
    from rich.tree import Tree

    spans = _read_spans(file)
    if job is not None:
        spans = [s for s in spans if s["attributes"].get("agentrt.job.id") == job]
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for s in sorted(spans, key=lambda s: s["start_ns"]):
        children.setdefault(s["parent_id"] if s["parent_id"] in ids else None, []).append(s)

    def label(s: dict[str, Any]) -> str:
        a = s["attributes"]
        ms = (s["end_ns"] - s["start_ns"]) / 1e6
        parts = [f"[bold]{s['name']}[/bold] {ms:.1f} ms"]
        if "gen_ai.usage.input_tokens" in a:
            parts.append(f"in {a['gen_ai.usage.input_tokens']} (cached {a.get('gen_ai.usage.cache_read.input_tokens', 0)}) out {a['gen_ai.usage.output_tokens']}")
        cost = a.get("agentrt.cost.usd", a.get("agentrt.rollup.cost_usd"))
        if cost is not None:
            parts.append(f"${cost:.2e}" + (" (roll-up)" if "agentrt.rollup.cost_usd" in a else ""))
        if s["status"] == "ERROR":
            parts.append(f"[red]{a.get('error.type', 'error')}[/red]")
        return "  ".join(parts)

    def add(node: Any, s: dict[str, Any]) -> None:
        branch = node.add(label(s))
        for c in children.get(s["span_id"], []):
            add(branch, c)

    for root in children.get(None, []):
        tree = Tree(label(root))
        for c in children.get(root["span_id"], []):
            add(tree, c)
        console.print(tree)


@trace_app.command("summary")
def trace_summary(file: Path = typer.Argument(..., help="JSONL span file")) -> None:
    """Per graph / agent / tool / model: calls, tokens, seconds and cost (leaf costs only)."""
    rows: dict[tuple[str, str], list[float]] = {}
    for s in _read_spans(file):
        a = s["attributes"]
        op = a.get("gen_ai.operation.name", "?")
        name = a.get("agentrt.graph") or a.get("gen_ai.agent.name") or a.get("gen_ai.tool.name") or a.get("gen_ai.request.model") or s["name"]
        r = rows.setdefault((op, name), [0, 0, 0, 0.0, 0.0])
        r[0] += 1
        r[1] += a.get("gen_ai.usage.input_tokens", 0)
        r[2] += a.get("gen_ai.usage.output_tokens", 0)
        r[3] += (s["end_ns"] - s["start_ns"]) / 1e9
        r[4] += a.get("agentrt.cost.usd", 0.0)
    table = Table(title=f"trace summary: {file}")
    for col in ("operation", "name", "calls", "input tok", "output tok", "seconds", "cost $"):
        table.add_column(col)
    for (op, name), r in sorted(rows.items()):
        table.add_row(op, name, str(int(r[0])), str(int(r[1])), str(int(r[2])), f"{r[3]:.3f}", f"{r[4]:.2e}")
    console.print(table)


keys_app = typer.Typer(help="CurveZMQ keys for authenticated serving.")
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def keys_generate(name: str = typer.Argument(..., help="key name, e.g. server or client1"),
                  directory: Path = typer.Option(Path("keys"), "--dir", help="where to write NAME.key and NAME.key_secret")) -> None:
    """Generate a CURVE key pair. Give the server its .key_secret, copy client .key files into the
    server's allowed-clients folder, and give each client its .key_secret and the server's .key."""
    from agentrt.keys import generate_keypair

    public, secret = generate_keypair(directory, name)
    console.print(f"public key: {public}\nsecret key: {secret}")


@app.command()
def serve(
    graphs: Path = typer.Option(Path("graphs"), help="folder of graph files to load"),
    tools: Path = typer.Option(Path("tools"), help="folder of tool files to load"),
    bind: str = typer.Option("tcp://127.0.0.1:5555", help="ZeroMQ address to bind"),
    journal: Path = typer.Option(Path("agentrt-journal.sqlite"), help="SQLite job journal (created if absent)"),
    model: Path | None = typer.Option(None, help="model directory (default: the shipped model)"),
    no_engine: bool = typer.Option(False, "--no-engine", help="serve tool-only graphs without loading a model"),
    curve_secret: Path | None = typer.Option(None, help="server .key_secret file: enables CurveZMQ"),
    allowed_clients: Path | None = typer.Option(None, help="folder of allowed client .key files (with --curve-secret)"),
    max_inflight: int = typer.Option(1000, help="maximum jobs in flight per client"),
    trace: Path | None = typer.Option(None, help="write OpenTelemetry spans to this JSONL file"),
    ray: str | None = RAY, engine_replicas: int = ENGINE_REPLICAS, prefill_replicas: int = PREFILL_REPLICAS,
    decode_replicas: int = DECODE_REPLICAS, router: str = ROUTER,
) -> None:
    """Serve registered graphs over ZeroMQ (see docs/protocol.md) until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from agentrt import telemetry
    from agentrt.executor import Runtime
    from agentrt.server import Server, ServerConfig

    if trace is not None:
        telemetry.configure(f"jsonl:{trace}")
    registry = load_registry(graphs, tools)
    engine = tool_executor = None
    if not no_engine:
        engine, tool_executor, _ = _engine(model, ray, engine_replicas, prefill_replicas, decode_replicas, router)
    keys: dict[str, Any] = {}
    if curve_secret is not None:
        from agentrt.keys import load_keypair

        pub, sec = load_keypair(curve_secret)
        keys = {"curve_public_key": pub, "curve_secret_key": sec, "curve_allowed_clients": allowed_clients}
    config = ServerConfig(bind=bind, journal=journal, max_inflight_per_client=max_inflight, **keys)
    server = Server(Runtime(registry, engine, tools=tool_executor), config)
    console.print(f"serving {sorted(registry.graphs)} on {bind} (journal {journal})")
    anyio.run(server.serve)


def _client(address: str, curve_server: Path | None, curve_secret: Path | None) -> Any:
    from agentrt.client import Client
    from agentrt.keys import load_keypair, load_public_key

    if curve_server is None:
        return Client(address)
    if curve_secret is None:
        raise typer.BadParameter("--curve-secret (the client's .key_secret) is required with --curve-server")
    return Client(address, server_key=load_public_key(curve_server), keypair=load_keypair(curve_secret))


ADDRESS = typer.Option("tcp://127.0.0.1:5555", "--address", "-a", help="server address")
CURVE_SERVER = typer.Option(None, help="the server's public .key file (CURVE)")
CURVE_SECRET = typer.Option(None, help="this client's .key_secret file (CURVE)")


@app.command()
def submit(
    graph: str = typer.Argument(..., help="registered graph name"),
    input: str = typer.Option("{}", "--input", "-i", help="inputs as a JSON object"),
    wait: bool = typer.Option(False, help="wait for the result"),
    follow: bool = typer.Option(False, help="stream task events while waiting (implies --wait)"),
    priority: int = typer.Option(0),
    idempotency_key: str | None = typer.Option(None, help="resubmitting with the same key returns the same job"),
    address: str = ADDRESS, curve_server: Path | None = CURVE_SERVER, curve_secret: Path | None = CURVE_SECRET,
) -> None:
    """Submit a job to a running server; print its id, or its result with --wait/--follow."""
    inputs = json.loads(input)
    with _client(address, curve_server, curve_secret) as c:
        on_event = (lambda e: console.print(f"[dim]{e.kind}[/dim] {e.data.get('name', '')}")) if follow else None
        out = c.submit(graph, inputs, priority=priority, idempotency_key=idempotency_key, wait=wait or follow, on_event=on_event)
        console.print_json(json.dumps(out if isinstance(out, str) else {"job_id": out.job_id, "status": out.status, "output": out.output, "error": out.error}, default=str))


@app.command()
def status(job_id: str, address: str = ADDRESS, curve_server: Path | None = CURVE_SERVER, curve_secret: Path | None = CURVE_SECRET) -> None:
    """Print a job's state (accepted, running, succeeded, failed, cancelled, unknown)."""
    with _client(address, curve_server, curve_secret) as c:
        console.print(c.status(job_id))


@app.command()
def cancel(job_id: str, address: str = ADDRESS, curve_server: Path | None = CURVE_SERVER, curve_secret: Path | None = CURVE_SECRET) -> None:
    """Cancel a running job."""
    with _client(address, curve_server, curve_secret) as c:
        console.print(c.cancel(job_id))


if __name__ == "__main__":
    app()
