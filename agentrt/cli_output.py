"""How the `agentrt` CLI talks to people and to scripts.

Results go to stdout (plain JSON or plain text, never styled); progress, tables and messages go to
stderr; an error is one line, `agentrt: error: ...`, exit status 2 for a usage error and 1 for
anything else (a failed job included), with the traceback only under `--debug`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from typer.core import TyperGroup

# typer carries its own copy of click: its exception classes are the ones raised.
_click = importlib.import_module(typer.BadParameter.__module__)
ClickException, UsageError, NoArgsIsHelpError = _click.ClickException, _click.UsageError, _click.NoArgsIsHelpError

# stderr: progress, tables, messages. Results never go through rich (they must pipe cleanly).
err = Console(stderr=True)
_state = {"debug": False, "quiet": False}

EXIT_FAILED = 1  # a failed job, an unreachable server, a bad file: anything but a usage error
EXIT_USAGE = 2  # what click uses for bad options and arguments
EXIT_INTERRUPTED = 3  # a waited-for job stopped at ctx.interrupt(...): `agentrt resume JOB --input JSON` continues it


def set_debug(on: bool) -> None:
    _state["debug"] = on


def debug() -> bool:
    return bool(_state["debug"]) or os.environ.get("AGENTRT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def result(value: Any) -> None:
    """Write a result to stdout as one JSON document (a graph's output, a --json document)."""
    line(json.dumps(value, default=str))


def line(text: str) -> None:
    """Write a plain result line to stdout (a job id, a state)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def message(text: str) -> None:
    """A line for people on stderr (rich markup allowed)."""
    err.print(text, soft_wrap=True)


def table(t: Table, console: Console | None = None) -> None:
    """Print a table on stderr: fitted to the terminal's width (cells fold, nothing is cut off); when
    stderr is not a terminal, at the table's natural width so nothing is squeezed into 80 columns."""
    console = console or err
    if console.is_terminal:
        narrowest = sum(max(c.min_width or 0, 1) for c in t.columns) + 3 * len(t.columns) + 1  # cells, padding, borders
        if narrowest <= console.width:
            console.print(t)
        else:  # too narrow for the columns: one "column: value" block per row
            console.print(records(t))
        return
    natural = Measurement.get(console, console.options.update(width=10_000), t).maximum
    Console(file=console.file, width=max(natural, 40), color_system=None).print(t)


def records(t: Table) -> Table:
    """The rows of `t` as blocks of `column: value` lines (for terminals too narrow for its columns)."""
    out = Table.grid(padding=(0, 1))
    out.add_column(style="bold", overflow="fold")
    out.add_column(overflow="fold")
    cells = [list(c.cells) for c in t.columns]
    for i in range(t.row_count):
        for col, column_cells in zip(t.columns, cells, strict=True):
            out.add_row(str(col.header), column_cells[i])
        out.add_row("", "")
    if t.title:
        out.title = t.title
    return out


def new_table(title: str | None, columns: list[str], numeric: set[str] | None = None) -> Table:
    """A table whose cells fold (never ellipsis) when the terminal is narrow; numeric columns right-aligned."""
    t = Table(title=title)
    for col in columns:
        right = numeric is not None and col in numeric
        t.add_column(col, justify="right" if right else "left", overflow="fold", min_width=min(len(col), 6 if right else 8))
    return t


def error_line(exc: BaseException) -> str:
    """`agentrt: error: ...` for an exception: our own errors by message, others with their type."""
    from agentrt.errors import AgentrtError

    if isinstance(exc, ClickException):
        text = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, UsageError) and ctx is not None:
            text += f" (see `{ctx.command_path} --help`)"
    elif isinstance(exc, (AgentrtError, OSError)) or type(exc).__module__.startswith("engine"):
        text = str(exc) or type(exc).__name__
    else:
        text = f"{type(exc).__name__}: {exc}"
    return "agentrt: error: " + " ".join(text.split())


class AgentrtGroup(TyperGroup):
    """The root command: turns every exception into one line on stderr and a documented exit status."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        except NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(EXIT_USAGE)
        except ClickException as exc:
            _report(exc)
            sys.exit(exc.exit_code)
        except (typer.Abort, KeyboardInterrupt):
            sys.stderr.write("agentrt: interrupted\n")
            sys.exit(130)
        except Exception as exc:  # every other error: one line (and the traceback with --debug)
            _report(exc)
            sys.exit(EXIT_FAILED)
        sys.exit(rv if isinstance(rv, int) else 0)


def _report(exc: BaseException) -> None:
    if debug() and not isinstance(exc, UsageError):
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.write(error_line(exc) + "\n")
    from agentrt.errors import AgentrtError

    if not debug() and not isinstance(exc, (ClickException, AgentrtError, OSError)):
        sys.stderr.write("agentrt: run with --debug (or AGENTRT_DEBUG=1) for the traceback\n")
    sys.stderr.flush()
