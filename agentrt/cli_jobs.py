"""The client commands of the `agentrt` command line: submit, resume, status and cancel a job on a
running server (`agentrt serve`). They import neither torch nor the engine (agentrt.cli_client holds
the connection, its timeouts and how results are shown)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from agentrt import cli_output as out

JSON_OUT = typer.Option(False, "--json", help="print one JSON document on stdout and nothing on stderr")


def parse_inputs(text: str) -> dict[str, Any]:
    try:
        inputs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON ({exc}): {text[:80]!r}", param_hint="--input") from None
    if not isinstance(inputs, dict):
        raise typer.BadParameter(f"must be a JSON object, got {type(inputs).__name__}", param_hint="--input")
    return inputs


def _client(address: str, curve_server: Path | None, curve_secret: Path | None, timeout: float) -> Any:
    from agentrt.cli_client import connect

    return connect(address, curve_server, curve_secret, timeout)


ADDRESS = typer.Option("tcp://127.0.0.1:5555", "--address", "-a", envvar="AGENTRT_ADDRESS", help="server address")
CURVE_SERVER = typer.Option(None, help="the server's public .key file (CURVE)")
CURVE_SECRET = typer.Option(None, help="this client's .key_secret file (CURVE)")
TIMEOUT = typer.Option(10.0, "--timeout", min=0.001, help="seconds to wait for the server to answer (exit 1 when none does)")


def _answer(json_out: bool, **fields: str) -> None:
    """A client command's answer: the last field as a plain line, or all of them as one JSON object."""
    if json_out:
        out.result(fields)
    else:
        out.line(list(fields.values())[-1])


def submit(
    graph: str = typer.Argument(..., help="registered graph name"),
    input: str = typer.Option("{}", "--input", "-i", help="inputs as a JSON object"),
    wait: bool = typer.Option(False, help="wait for the result; exit 1 unless the job succeeds"),
    follow: bool = typer.Option(False, help="stream task events to stderr while waiting (implies --wait)"),
    priority: int = typer.Option(0),
    idempotency_key: str | None = typer.Option(None, help="resubmitting with the same key returns the same job"),
    thread: str | None = typer.Option(None, "--thread", help="continue this conversation (a thread id of yours)"),
    wait_timeout: float | None = typer.Option(None, help="with --wait: give up after this many seconds (default: wait while the server answers)"),
    address: str = ADDRESS, curve_server: Path | None = CURVE_SERVER, curve_secret: Path | None = CURVE_SECRET,
    timeout: float = TIMEOUT, json_out: bool = JSON_OUT,
) -> None:
    """Submit a job to a running server.

    stdout: its id; with --wait, its output as JSON (--json: id, status, output and error).
    Exit status 1 when a waited-for job fails or is cancelled, 3 when it waits at an interrupt."""
    from agentrt.cli_client import EventPrinter, show_result, wait_for_result

    inputs = parse_inputs(input)
    on_event = EventPrinter() if follow and not json_out else None
    with _client(address, curve_server, curve_secret, timeout) as c:
        job_id = c.submit(graph, inputs, priority=priority, idempotency_key=idempotency_key, wait=False, on_event=on_event,
                          **({"thread_id": thread} if thread is not None else {}))
        if not (wait or follow):
            _answer(json_out, job_id=job_id)
            return
        res = wait_for_result(c, job_id, timeout, wait_timeout, on_event)
    show_result(res, json_out)


def resume(
    job_id: str = typer.Argument(..., help="a job whose status is interrupted"),
    input: str = typer.Option("null", "--input", "-i", help="what its ctx.interrupt(...) returns, as JSON"),
    wait: bool = typer.Option(True, help="wait for the job's next outcome (--no-wait: print its state)"),
    follow: bool = typer.Option(False, help="stream task events to stderr while waiting"),
    address: str = ADDRESS, curve_server: Path | None = CURVE_SERVER, curve_secret: Path | None = CURVE_SECRET,
    timeout: float = TIMEOUT, json_out: bool = JSON_OUT,
) -> None:
    """Continue a job stopped at ctx.interrupt(...) with an input.

    stdout and exit status as `submit --wait` (exit 3 when it is interrupted again). Exit status 1 when
    the job is unknown or not waiting."""
    from agentrt.cli_client import EventPrinter, show_result

    try:
        value = json.loads(input)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--input") from None
    on_event = EventPrinter() if follow and not json_out else None
    with _client(address, curve_server, curve_secret, timeout) as c:
        res = c.resume(job_id, value, wait=wait, on_event=on_event)
    if not wait:
        _answer(json_out, job_id=job_id, state=res)
        return
    show_result(res, json_out)


def status(job_id: str, address: str = ADDRESS, curve_server: Path | None = CURVE_SERVER, curve_secret: Path | None = CURVE_SECRET,
           timeout: float = TIMEOUT, json_out: bool = JSON_OUT) -> None:
    """Print a job's state (accepted, running, succeeded, failed, cancelled).

    Exit status 1 for an unknown job."""
    from agentrt.cli_client import UnknownJobError

    with _client(address, curve_server, curve_secret, timeout) as c:
        state = c.status(job_id)
    if state == "unknown":
        raise UnknownJobError(job_id)
    _answer(json_out, job_id=job_id, state=state)


def cancel(job_id: str, address: str = ADDRESS, curve_server: Path | None = CURVE_SERVER, curve_secret: Path | None = CURVE_SECRET,
           timeout: float = TIMEOUT, json_out: bool = JSON_OUT) -> None:
    """Cancel a running job and print what the server answers.

    A finished job is not cancelled: its state is printed. Exit status 1 for an unknown job."""
    from agentrt.cli_client import UnknownJobError

    with _client(address, curve_server, curve_secret, timeout) as c:
        state = c.cancel(job_id)
    if state == "unknown":
        raise UnknownJobError(job_id)
    _answer(json_out, job_id=job_id, state=state)


def register(app: typer.Typer) -> None:
    """Add the client commands to `app` (in this order, after the commands registered before)."""
    for command in (submit, resume, status, cancel):
        app.command()(command)
