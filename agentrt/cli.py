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
) -> None:
    """Run one job locally with a live progress display; print its result and a per-task table."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    try:
        inputs = json.loads(input)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--input is not JSON: {exc}") from exc
    from agentrt import telemetry
    from agentrt.engine_client import EmbeddedEngine
    from agentrt.executor import Runtime
    from agentrt.types import JobSpec

    if trace is not None:
        telemetry.configure(f"jsonl:{trace}")
    registry = load_registry(graphs, tools)
    with console.status("loading the model"):
        from engine import LLM

        engine = EmbeddedEngine(LLM(model))
    runtime = Runtime(registry, engine, policy=policy)
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
    engine.llm.close()
    if result.status != "succeeded":
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
