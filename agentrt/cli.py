"""The `agentrt` command line (one typer app).

Results go to stdout, progress and tables to stderr (see agentrt/cli_output.py); client commands
import neither torch nor the engine.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from agentrt import cli_jobs
from agentrt import cli_output as out
from agentrt.cli_jobs import JSON_OUT, parse_inputs
from agentrt.cli_output import AgentrtGroup
from agentrt.cli_progress import Progress, task_rows, task_table
from agentrt.cli_ray import RayOptions, ray_cluster

ENV_HELP = """\b
Environment variables:
AGENTRT_MODEL: model directory when --model is not given
AGENTRT_GRAPHS / AGENTRT_TOOLS: folders when --graphs / --tools are not given
AGENTRT_ADDRESS: server of submit/status/cancel (default tcp://127.0.0.1:5555)
AGENTRT_DATA_DIR: public data folder (default ../shared/data)
AGENTRT_CACHE_DIR: compiled native kernels (default ~/.cache/agentrt)
AGENTRT_AUTOTUNE: 0 = default kernel thread splits, force = tune again (default: tune once per CPU)
AGENTRT_DEBUG=1: print tracebacks (as --debug)
AGENTRT_LLM_URL, AGENTRT_LLM_MODEL, AGENTRT_LLM_API_KEY: a remote OpenAI-compatible engine
AGENTRT_TOKENIZER_CACHE: real tokenizers for tests (default ~/.cache/agentrt/tokenizers)
OTEL_TRACES_EXPORTER: otlp, console or none (when --trace is not given)
OTEL_METRICS_EXPORTER: otlp, console or none (GenAI metrics)
OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, _TIMEOUT (or _TRACES_...): the collector
OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: http/protobuf|grpc
OTEL_SERVICE_NAME (default agentrt), OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true: record messages
OTEL_SDK_DISABLED=true: no spans or metrics
"""

app = typer.Typer(help="agentrt: run agent graphs on the embedded inference engine.", epilog=ENV_HELP,
                  no_args_is_help=True, cls=AgentrtGroup, pretty_exceptions_enable=False)
console = out.err  # progress, tables and messages (stderr)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out.line(f"agentrt {version('agentrt')}")
        except PackageNotFoundError:
            out.line("agentrt (not installed: version unknown)")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show the traceback of an error"),
          show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit")) -> None:
    """agentrt: run agent graphs on the embedded inference engine."""
    out.set_debug(debug)


REPO = Path(__file__).resolve().parent.parent


def resolve_folder(given: Path | None, name: str) -> Path:
    """The folder to load: `given`, else ./NAME, else the project's NAME/ folder. Raises typer.BadParameter
    naming the folders searched when none exists."""
    if given is not None:
        if not given.exists():
            raise typer.BadParameter(f"no such folder: {given}", param_hint=f"--{name}")
        return given
    candidates = [Path(name), REPO / name]
    for c in candidates:
        if c.is_dir():
            return c
    searched = ", ".join(str(c.resolve()) for c in candidates)
    raise typer.BadParameter(f"no {name} folder found (searched {searched}); pass --{name} or set AGENTRT_{name.upper()}",
                             param_hint=f"--{name}")


def load_registry(graphs: Path | None, tools: Path | None) -> Any:
    """A Registry of the tools then graphs folders (the same folder given twice is loaded once)."""
    from agentrt.api import Registry

    reg = Registry()
    loaded: set[Path] = set()
    for path in (resolve_folder(tools, "tools"), resolve_folder(graphs, "graphs")):
        if path.resolve() not in loaded:
            loaded.add(path.resolve())
            reg.load_path(path)
    return reg


def setup_tracing(trace: str | None) -> None:
    """--trace otlp|console|none|PATH (a JSONL file of OTLP/JSON); without it, OTEL_TRACES_EXPORTER decides."""
    from agentrt import telemetry

    if trace is None or trace in ("otlp", "console", "none"):
        telemetry.configure(trace)
    else:
        telemetry.configure(trace if trace.startswith("jsonl:") else f"jsonl:{trace}")


GRAPHS = typer.Option(None, envvar="AGENTRT_GRAPHS", show_default="./graphs, else the project's graphs/", help="folder of graph files")
TOOLS = typer.Option(None, envvar="AGENTRT_TOOLS", show_default="./tools, else the project's tools/", help="folder of tool files")
TRACE = typer.Option(None, help="where spans go: otlp, console, none, or a file (OTLP/JSON lines); default: $OTEL_TRACES_EXPORTER")
MODEL = typer.Option(None, help="model directory (default: $AGENTRT_MODEL, else the shipped model)")
LLM_URL = typer.Option(None, "--llm-url", envvar="AGENTRT_LLM_URL",
                       help="OpenAI-compatible endpoint to use instead of the embedded engine (env AGENTRT_LLM_URL)")
LLM_MODEL = typer.Option(None, "--llm-model", envvar="AGENTRT_LLM_MODEL", help="model name at --llm-url (env AGENTRT_LLM_MODEL)")
QUIET = typer.Option(False, "--quiet", "-q", help="no progress or tables; only the result on stdout")
RAY = typer.Option(None, "--ray", help="run on Ray: a cluster address (as ray.init takes it) or 'local' to start one")
ENGINE_REPLICAS = typer.Option(1, help="with --ray: engine replicas (Ray actors) behind the router")
PREFILL_REPLICAS = typer.Option(0, help="with --ray: prefill replicas (disaggregated; needs --decode-replicas)")
DECODE_REPLICAS = typer.Option(0, help="with --ray: decode replicas (disaggregated; needs --prefill-replicas)")
ROUTER = typer.Option("kv-aware", help="with --ray: router policy: kv-aware, round-robin or least-loaded")


@app.command()
def run(
    graph: str = typer.Argument(..., help="name of a registered graph, e.g. airline_support"),
    input: str = typer.Option("{}", "--input", "-i", help="the graph's inputs as a JSON object"),
    graphs: Path | None = GRAPHS, tools: Path | None = TOOLS, model: Path | None = MODEL,
    llm_url: str | None = LLM_URL, llm_model: str | None = LLM_MODEL,
    policy: str = typer.Option("gittins", help="scheduling policy: gittins, las or fcfs (agentrt.scheduler)"),
    trace: str | None = TRACE,
    dag: Path | None = typer.Option(None, help="write the job's DAG as JSON here (and DOT beside it)"),
    json_out: bool = JSON_OUT, quiet: bool = QUIET,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log at INFO level"),
    ray: str | None = RAY, engine_replicas: int = ENGINE_REPLICAS, prefill_replicas: int = PREFILL_REPLICAS,
    decode_replicas: int = DECODE_REPLICAS, router: str = ROUTER,
) -> None:
    """Run one job locally and print its output.

    stdout: the job's output as JSON (with --json: output, status, usage and tasks in one document);
    stderr: live progress, the per-task table and a summary line. Exit status 1 if the job fails.
    The model is loaded only when the graph makes an LLM call."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    inputs = parse_inputs(input)
    from agentrt.scheduler import POLICIES

    if policy not in POLICIES:
        raise typer.BadParameter(f"unknown policy {policy!r}; use {', '.join(POLICIES)}", param_hint="--policy")
    from agentrt import telemetry

    ray_opts = RayOptions(ray, engine_replicas, prefill_replicas, decode_replicas, router)
    runtime, engine, spec, cluster = _local_runtime(graph, inputs, graphs, tools, model, policy, trace, llm_url, llm_model, ray_opts)
    try:
        result = _run_job(runtime, spec, show=not (quiet or json_out))
    finally:
        if cluster is not None:
            cluster.shutdown()
        else:
            engine.close()
        telemetry.shutdown()
    job_dag = runtime.jobs[result.job_id].dag
    _report_run(result, task_rows(job_dag), json_out, quiet, getattr(engine, "load_seconds", 0.0))
    if dag is not None:
        dag.write_text(job_dag.dumps())
        dag.with_suffix(".dot").write_text(job_dag.to_dot())
    if result.status == "interrupted":  # a local run cannot be resumed: serve the graph to answer it
        if not json_out:
            out.message(f"job {result.job_id} stopped at an interrupt asking {json.dumps(result.interrupt, default=str)}; "
                        "`agentrt run` cannot resume it: submit it to `agentrt serve` and use `agentrt resume`")
        raise typer.Exit(out.EXIT_INTERRUPTED)
    if result.status != "succeeded":
        if not json_out:
            out.message(f"[red]job {result.job_id} {result.status}[/red]: {result.error}")
        raise typer.Exit(out.EXIT_FAILED)


def _local_runtime(graph: str, inputs: dict[str, Any], graphs: Path | None, tools: Path | None, model: Path | None,
                   policy: str, trace: str | None, llm_url: str | None, llm_model: str | None,
                   ray_opts: RayOptions) -> tuple[Any, Any, Any, Any]:
    """(runtime, engine, job spec, Ray cluster or None) for `run`; an unknown graph fails before anything runs.
    Without --ray the engine is loaded lazily (tool-only graphs never load the model)."""
    from agentrt.executor import Runtime
    from agentrt.lazy_engine import LazyEngine, widen_gpu_limits
    from agentrt.scheduler import PoolLimits
    from agentrt.types import JobSpec

    setup_tracing(trace)
    registry = load_registry(graphs, tools)
    registry.get_graph(graph)
    cluster = ray_cluster(ray_opts, model, llm_url)
    if cluster is not None:
        runtime = Runtime(registry, cluster.engine, policy=policy, tools=cluster.tools)
        return runtime, cluster.engine, JobSpec(graph=graph, inputs=inputs), cluster
    engine = LazyEngine(model, llm_url=llm_url, llm_model=llm_model)
    runtime = Runtime(registry, engine, policy=policy, limits=PoolLimits())
    engine._on_load = widen_gpu_limits(runtime)
    return runtime, engine, JobSpec(graph=graph, inputs=inputs), None


def _run_job(runtime: Any, spec: Any, show: bool) -> Any:
    import anyio
    from rich.live import Live

    progress = Progress()

    async def main() -> Any:
        if not show:
            return await runtime.run_job(spec)
        with Live(progress.render(), console=console, refresh_per_second=4, transient=not console.is_terminal) as live:
            async def refresh() -> None:
                while True:
                    live.update(progress.render())
                    await anyio.sleep(0.25)

            async with anyio.create_task_group() as tg:
                tg.start_soon(refresh)
                result = await runtime.run_job(spec, on_event=progress.on_event)
                tg.cancel_scope.cancel()
            live.update(progress.render())
        return result

    return anyio.run(main)


def _report_run(result: Any, rows: list[dict[str, Any]], json_out: bool, quiet: bool, load_seconds: float) -> None:
    import msgspec

    if json_out:
        out.result({"job_id": result.job_id, "graph": result.graph, "status": result.status, "output": result.output,
                    "error": result.error, "seconds": result.seconds, "model_load_seconds": load_seconds, "usage": msgspec.to_builtins(result.usage), "tasks": rows})
        return
    out.result(result.output)
    if quiet:
        return
    out.table(task_table(rows))
    u = result.usage
    out.message(f"job {result.job_id}: {result.status} in {result.seconds:.2f}s; tokens prompt={u.prompt_tokens} cached={u.cached_tokens} "
                f"computed={u.prefill_tokens_computed} generated={u.generated_tokens}; device {u.device_seconds:.2f}s; cost ${u.cost_usd:.6f}"
                + (f" (the time includes {load_seconds:.1f}s loading the model at the first LLM call)" if load_seconds else ""))


from agentrt.cli_trace import trace_app  # noqa: E402  (the `agentrt trace` commands)

app.add_typer(trace_app, name="trace")

llm_app = typer.Typer(help="The inference engine on its own.")
app.add_typer(llm_app, name="llm")


@llm_app.command("serve")
def llm_serve(
    model: Path | None = typer.Argument(None, help="model directory (default: the shipped model)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="TCP port"),
    served_model_name: str | None = typer.Option(None, help="the model's name in the API (default: the directory name)"),
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models, /health)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from engine.serve import serve as serve_http

    serve_http(str(model) if model else None, host=host, port=port, model_name=served_model_name)


from agentrt import cli_graphs  # noqa: E402  (`agentrt graphs`, `agentrt graph show`)

cli_graphs.register(app, load_registry, GRAPHS, TOOLS, JSON_OUT)

keys_app = typer.Typer(help="CurveZMQ keys for authenticated serving.")
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def keys_generate(name: str = typer.Argument(..., help="key name, e.g. server or client1"),
                  directory: Path = typer.Option(Path("keys"), "--dir", help="where to write NAME.key and NAME.key_secret")) -> None:
    """Generate a CURVE key pair. Give the server its .key_secret, copy client .key files into the
    server's allowed-clients folder, and give each client its .key_secret and the server's .key."""
    from agentrt.keys import generate_keypair

    public, secret = generate_keypair(directory, name)
    out.result({"public_key": str(public), "secret_key": str(secret)})


@app.command()
def serve(
    graphs: Path | None = GRAPHS, tools: Path | None = TOOLS,
    bind: str = typer.Option("tcp://127.0.0.1:5555", help="ZeroMQ address to bind"),
    journal: Path = typer.Option(Path("agentrt-journal.sqlite"), help="SQLite job journal (created if absent)"),
    model: Path | None = MODEL,
    llm_url: str | None = LLM_URL, llm_model: str | None = LLM_MODEL,
    no_engine: bool = typer.Option(False, "--no-engine", help="serve tool-only graphs without loading a model"),
    curve_secret: Path | None = typer.Option(None, help="server .key_secret file: enables CurveZMQ"),
    allowed_clients: Path | None = typer.Option(None, help="folder of allowed client .key files (with --curve-secret)"),
    max_inflight: int = typer.Option(1000, help="maximum jobs in flight per client"),
    trace: str | None = TRACE,
    ray: str | None = RAY, engine_replicas: int = ENGINE_REPLICAS, prefill_replicas: int = PREFILL_REPLICAS,
    decode_replicas: int = DECODE_REPLICAS, router: str = ROUTER,
) -> None:
    """Serve registered graphs over ZeroMQ (see docs/protocol.md) until interrupted.

    Logs go to stderr."""
    import anyio

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from agentrt import telemetry
    from agentrt.executor import Runtime
    from agentrt.server import Server, ServerConfig

    setup_tracing(trace)
    registry = load_registry(graphs, tools)
    engine = tool_executor = cluster = None
    if not no_engine:
        cluster = ray_cluster(RayOptions(ray, engine_replicas, prefill_replicas, decode_replicas, router), model, llm_url)
        if cluster is not None:
            engine, tool_executor = cluster.engine, cluster.tools
        else:
            from agentrt.backends import make_engine

            with console.status("loading the model"):
                engine = make_engine(model, llm_url, llm_model)
    keys: dict[str, Any] = {"curve_allowed_clients": allowed_clients}  # without --curve-secret: refused, not ignored
    if curve_secret is not None:
        from agentrt.keys import load_keypair

        pub, sec = load_keypair(curve_secret)
        keys |= {"curve_public_key": pub, "curve_secret_key": sec}
    config = ServerConfig(bind=bind, journal=journal, max_inflight_per_client=max_inflight, **keys)
    server = Server(Runtime(registry, engine, tools=tool_executor), config)
    out.message(f"serving {sorted(registry.graphs)} on {bind} (journal {journal})")
    try:
        anyio.run(server.serve)
    finally:
        if cluster is not None:  # the replicas (and a cluster started with --ray local)
            cluster.shutdown()
        telemetry.shutdown()


cli_jobs.register(app)


if __name__ == "__main__":
    app()
