"""What the CLI's client commands (submit, status, cancel) share: connecting with a timeout, waiting
for a result without hanging on a dead server, and errors that name the job or the address.

Imports only the client side of agentrt (no engine, no torch)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agentrt.errors import AgentrtError

TERMINAL_STATES = ("succeeded", "failed", "cancelled")


class UnknownJobError(AgentrtError):
    """The server has no job of this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"unknown job {job_id!r}: the server has no job of that id")
        self.job_id = job_id


class NoServerError(AgentrtError):
    """No server answered at the address within the timeout."""


class CliClient:
    """A `Client` whose calls turn a missing answer into NoServerError naming the address."""

    def __init__(self, client: Any, address: str, timeout: float) -> None:
        self.client, self.address, self.timeout = client, address, timeout

    def __enter__(self) -> CliClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    @contextmanager
    def _answer(self) -> Iterator[None]:
        try:
            yield
        except TimeoutError as exc:
            raise NoServerError(f"no answer from a server at {self.address} within {self.timeout:g}s "
                                f"(is `agentrt serve` running there? raise --timeout to wait longer)") from exc

    def submit(self, graph: str, inputs: dict[str, Any], **kwargs: Any) -> Any:
        with self._answer():
            return self.client.submit(graph, inputs, **kwargs)

    def status(self, job_id: str) -> str:
        with self._answer():
            return str(self.client.status(job_id))

    def resume(self, job_id: str, value: Any, *, wait: bool, on_event: Callable[[Any], None] | None) -> Any:
        """The job's next Result (wait) or state; UnknownJobError, or AgentrtError when it is not waiting."""
        from agentrt.client import RemoteError

        with self._answer():
            try:
                return self.client.resume(job_id, value, wait=wait, on_event=on_event)
            except RemoteError as exc:
                if exc.code == "not_found":
                    raise UnknownJobError(job_id) from None
                raise AgentrtError(f"job {job_id!r} cannot be resumed: {exc}") from None

    def cancel(self, job_id: str) -> str:
        """What the server answers to a cancel; a finished job's own state without asking to cancel it."""
        state = self.status(job_id)
        if state == "unknown" or state in TERMINAL_STATES:
            return state
        with self._answer():
            return str(self.client.cancel(job_id))


def connect(address: str, curve_server: Path | None, curve_secret: Path | None, timeout: float) -> CliClient:
    """A CliClient on `address`; CURVE when the server key file is given (then the secret is required)."""
    import typer

    from agentrt.client import Client, default_token_file

    kwargs: dict[str, Any] = {}
    if "timeout" in inspect.signature(Client).parameters:
        kwargs["timeout"] = timeout
    if curve_server is None:  # the token file keeps this user's identity across commands (docs/protocol.md)
        from agentrt.client import default_token_file

        kwargs["token_file"] = default_token_file()
    else:
        if curve_secret is None:
            raise typer.BadParameter("--curve-secret (the client's .key_secret) is required with --curve-server",
                                     param_hint="--curve-secret")
        from agentrt.keys import load_keypair, load_public_key

        kwargs.update(server_key=load_public_key(curve_server), keypair=load_keypair(curve_secret))
    return CliClient(Client(address, **kwargs), address, timeout)


def wait_for_result(c: CliClient, job_id: str, timeout: float, wait_timeout: float | None,
                    on_event: Callable[[Any], None] | None) -> Any:
    """The job's Result. The client re-fetches every `timeout` seconds of silence (so a dead server is
    noticed: NoServerError) and gives up after `wait_timeout` seconds (None: no limit)."""
    from agentrt.errors import ClientTimeout, ServerUnavailableError

    try:
        return c.client.result(job_id, on_event, timeout=wait_timeout)
    except ServerUnavailableError as exc:
        raise NoServerError(f"no answer from a server at {c.address} within {timeout:g}s "
                            f"(is `agentrt serve` running there? raise --timeout to wait longer)") from exc
    except ClientTimeout as exc:
        raise AgentrtError(f"job {job_id} has no result after --wait-timeout {wait_timeout:g}s "
                           f"(it keeps running; `agentrt status {job_id}` to check)") from exc


def show_result(res: Any, json_out: bool) -> None:
    """A waited-for job's outcome: its output on stdout (exit 0); an interrupted job's payload on
    stdout (exit 3, how to resume on stderr); a failure on stderr (exit 1). --json: one document."""
    import typer

    from agentrt import cli_output as out

    if json_out:
        doc = {"job_id": res.job_id, "status": res.status, "output": res.output, "error": res.error}
        out.result(doc | ({"interrupt": res.interrupt} if res.status == "interrupted" else {}))
    elif res.status == "succeeded":
        out.result(res.output)
    elif res.status == "interrupted":
        out.result({"interrupt": res.interrupt})
        out.message(f"agentrt: job {res.job_id} is waiting for input; continue it with `agentrt resume {res.job_id} --input JSON`")
    if res.status == "interrupted":
        raise typer.Exit(out.EXIT_INTERRUPTED)
    if res.status != "succeeded":
        if not json_out:
            out.message(f"agentrt: job {res.job_id} {res.status}: {res.error}")
        raise typer.Exit(out.EXIT_FAILED)


class EventPrinter:
    """--follow: each event as a line on stderr, except `llm_token`s, whose text is written as it comes."""

    def __init__(self) -> None:
        self.streaming: str | None = None  # the task whose tokens are being written

    def __call__(self, e: Any) -> None:
        from agentrt import cli_output as out

        task = e.data.get("task_id")
        if e.kind == "llm_token":
            if self.streaming != task:
                out.err.file.write(("\n" if self.streaming else "") + f"{e.data.get('name', '')}> ")
                self.streaming = task
            out.err.file.write(e.data.get("text", ""))
            out.err.file.flush()
            return
        if self.streaming is not None:
            out.err.file.write("\n")
            self.streaming = None
        out.message(f"[dim]{e.kind}[/dim] {e.data.get('name', '')}")
