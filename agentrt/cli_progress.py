"""What `agentrt run` shows while and after a job runs: the live progress view and the per-task table."""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table
from rich.text import Text

from agentrt import cli_output as out


class Progress:
    """Live view of a running job: tasks running per pool, tokens generated, tokens/s."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {"gpu": 0, "cpu": 0, "none": 0, "storage": 0}
        self.tokens = 0
        self.done = 0
        self.start = time.perf_counter()
        self.text: dict[str, str] = {}  # running LLM task -> its text so far (llm_token events)
        self.names: dict[str, str] = {}

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        pool = {"llm": "gpu", "tool": "cpu", "agent": "none", "io": "storage"}.get(event.get("task_kind", ""), "none")
        if kind == "llm_token":
            task = event["task_id"]
            self.text[task] = self.text.get(task, "") + event.get("text", "")
            self.names[task] = event.get("name", "")
        elif kind == "task_started":
            self.running[pool] += 1
        elif kind == "task_finished":
            self.text.pop(event.get("task_id", ""), None)
            self.running[pool] -= 1
            self.done += 1
            self.tokens += (event.get("usage") or {}).get("generated_tokens", 0)

    def render(self) -> Table:
        rate = self.tokens / max(1e-9, time.perf_counter() - self.start)
        t = Table.grid(padding=(0, 2))
        t.add_row("running", "  ".join(f"{k}: {v}" for k, v in self.running.items()), f"done: {self.done}",
                  f"generated: {self.tokens} tok", f"{rate:,.1f} tok/s")
        for task, text in list(self.text.items())[-4:]:  # the live tokens of the LLM calls running now
            tail = " ".join(text.split())[-100:]
            t.add_row(Text(f"{self.names[task]} {task}"), Text(tail), "", "", "")
        return t


TASK_COLUMNS = ["task", "kind", "state", "prompt", "cached", "computed", "generated", "device s", "cpu s", "cost $"]


def task_rows(dag: Any) -> list[dict[str, Any]]:
    rows = []
    for t in dag.tasks.values():
        u = t.usage
        rows.append({"task": t.name, "id": t.id, "kind": t.kind.value, "state": t.state.value, "prompt_tokens": u.prompt_tokens,
                     "cached_tokens": u.cached_tokens, "computed_tokens": u.prefill_tokens_computed, "generated_tokens": u.generated_tokens,
                     "device_seconds": u.device_seconds, "cpu_seconds": u.cpu_seconds, "cost_usd": u.cost_usd})
    return rows


def task_table(rows: list[dict[str, Any]]) -> Table:
    table = out.new_table("tasks", TASK_COLUMNS, numeric=set(TASK_COLUMNS[3:]))
    for r in rows:
        table.add_row(r["task"], r["kind"], r["state"], str(r["prompt_tokens"]), str(r["cached_tokens"]), str(r["computed_tokens"]),
                      str(r["generated_tokens"]), f"{r['device_seconds']:.3f}", f"{r['cpu_seconds']:.4f}", f"{r['cost_usd']:.2e}")
    return table
