"""Shared reporting for benchmarks: a rich table on screen, a section in docs/benchmarks.md, JSON.

Each benchmark owns one section of docs/benchmarks.md, delimited by HTML comments, and rewrites
only that section, so benchmarks can be re-run independently.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
JSON_DIR = ROOT / "docs" / "benchmarks"


def cpu() -> str:
    """The CPU model and the vector ISA the C kernels use on it (every table names the CPU it ran on)."""
    from engine.kernels.cpu import cpuinfo

    f = cpuinfo.detect()
    isa = "AVX-512" if "avx512f" in f.flags else "AVX2" if "avx2" in f.flags else "no AVX2: torch ops"
    kernels = "C kernels" if cpuinfo.c_kernels_supported(f)[0] else "torch ops"
    return f"{f.name}, {f.arch}, {isa}, {kernels}"


def machine() -> str:
    """A one-line description of where the figures were measured."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} + CPU {cpu()}, torch {torch.__version__}"
        threads = torch.get_num_threads()
        tv = torch.__version__
    except ImportError:  # pragma: no cover
        threads, tv = 0, "n/a"
    return f"CPU {cpu()}, {os.cpu_count()} cores ({threads} torch threads), torch {tv}"


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title, caption=f"CPU: {cpu()}")
    for col in columns:
        table.add_column(col, justify="right" if col != columns[0] else "left")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    Console().print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) >= 1 else f"{v:.3g}"
    return str(v)


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, title: str, body: str, command: str, data: dict[str, Any]) -> None:
    """Replace (or append) section `name` of docs/benchmarks.md and write docs/benchmarks/<name>.json."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- section:{name} -->\n## {title}\n\n"
        f"Measured {stamp} on {machine()}.\n\nReproduce: `{command}`\n\n{body}\n<!-- /section:{name} -->"
    )
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nLatest figures; each section is rewritten by its benchmark.\n"
    pattern = re.compile(rf"<!-- section:{re.escape(name)} -->.*?<!-- /section:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    JSON_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"name": name, "measured": stamp, "machine": machine(), "command": command, **data}
    (JSON_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
