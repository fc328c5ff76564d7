"""What a speculative verify step of k drafts costs against a plain decode step, and where it goes.

One request of the embedded model at an eval-split turn's context (~1.8k tokens, real text: the
longest turn of spec_decode's default workload, drawn from `split_runs("eval")`): the
forward pass over 1 (plain decode), 2, 3, 5, 9 and 17 new rows (the last token and k = n - 1
drafts, the next tokens of the same conversation), plus the greedy verification's LM head (first
chunk of 4 rows, then argmax), timed per component by wrapping the kernels' Python entry points:
the paged attention kernel, the attention prologue (split, norms, rotary, KV write), the packed
linears (QKV, output, router, LM head), the MoE experts, the router's top-k and RMSNorm; "other"
is the rest of the step (Python and torch glue). Row counts take turns every repeat, so a slow
phase of a shared machine hits them alike; figures are medians of per-thread CPU time (1 torch
thread: robust to other processes' load, unlike wall time).

Why: the chooser (engine/speculative/chooser.py) prices a verify step of k drafts at
1 + overhead + per_token * k plain steps; this measures that curve and what it is made of.

    python benchmarks/verify_cost.py [--context 1800] [--repeats 30] [--no-write]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402
from benchmarks.spec_decode import turns  # noqa: E402
from engine import LLM  # noqa: E402
from engine.kernels.cpu import attention as cpu_attention  # noqa: E402
from engine.kernels.cpu import linear as cpu_linear  # noqa: E402
from engine.kernels.cpu import moe_dense as cpu_dense  # noqa: E402
from engine.kernels.cpu import ops as cpu_ops  # noqa: E402
from engine.model.attention import AttentionMetadata  # noqa: E402

ROWS = (1, 2, 3, 5, 9, 17)
PARTS = ("attention", "prologue", "qkv+out proj", "MoE experts", "router", "rmsnorm", "LM head")
LINEAR_PART = {"qkv_proj": "qkv+out proj", "o_proj": "qkv+out proj", "gate": "router", "lm_head": "LM head"}


class Clock:
    """Per-component CPU seconds of the current step."""

    def __init__(self) -> None:
        self.parts: collections.defaultdict[str, float] = collections.defaultdict(float)

    def timed(self, part: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            out = fn(*args, **kwargs)
            self.parts[part(*args) if callable(part) else part] += time.thread_time() - start
            return out
        return run


@contextmanager
def instrumented(clock: Clock) -> Iterator[None]:
    """Wrap the kernels' entry points for the duration (restored after)."""
    patches = [(cpu_attention, "paged_attention", "attention"), (cpu_ops, "attention_prologue", "prologue"),
               (cpu_ops, "route_topk", "router"), (cpu_ops, "rms_norm", "rmsnorm")]
    saved: list[tuple[Any, str, Any]] = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    saved += [(cpu_linear.PackedLinear, "forward", cpu_linear.PackedLinear.forward), (cpu_dense.DenseExperts, "run", cpu_dense.DenseExperts.run)]
    for mod, name, part in patches:
        setattr(mod, name, clock.timed(part, getattr(mod, name)))
    label = lambda self, *_: LINEAR_PART.get(getattr(self, "label", ""), "qkv+out proj")  # noqa: E731
    cpu_linear.PackedLinear.forward = clock.timed(label, cpu_linear.PackedLinear.forward)  # type: ignore[method-assign]
    cpu_dense.DenseExperts.run = clock.timed("MoE experts", cpu_dense.DenseExperts.run)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def longest_turn() -> tuple[int, list[int]]:
    """(task id, prompt ids) of the longest turn of spec_decode's default eval workload."""
    return max(turns(4, 6, 0, 3000), key=lambda case: len(case[1]))


def workload_task_ids() -> set[int]:
    """Task ids of the default workload (tests/benchmarks/test_workload_split.py): eval split only."""
    return {longest_turn()[0]}


def build(context: int) -> tuple[Any, Any, list[int], list[int]]:
    """The model, its KV cache with `context` tokens of an eval turn prefilled, the block table and the turn's tokens."""
    prompt = longest_turn()[1]
    if len(prompt) < context + max(ROWS):
        raise SystemExit(f"--context {context} needs a turn of {context + max(ROWS)} tokens; the longest has {len(prompt)}")
    llm = LLM(kv_cache_memory_gb=0.25, device="cpu")
    model, kv = llm.core.runner.model, llm.core.runner.kv_cache
    for name, module in model.named_modules():
        if isinstance(module, cpu_linear.PackedLinear):
            module.label = name.rsplit(".", 1)[-1]
    table = list(range(-(-(context + max(ROWS)) // kv.block_size)))
    with torch.inference_mode():
        for lo in range(0, context, 512):
            hi = min(context, lo + 512)
            meta = AttentionMetadata.build([hi - lo], [hi], [table], kv.block_size, "cpu")
            model.forward_prenorm(torch.tensor(prompt[lo:hi]), torch.arange(lo, hi), kv, meta)
    return model, kv, table, prompt


def step(model: Any, kv: Any, table: list[int], prompt: list[int], context: int, rows: int) -> float:
    """CPU seconds of one forward over `rows` new rows after `context` tokens, with greedy verification's first LM-head chunk."""
    meta = AttentionMetadata.build([rows], [context + rows], [table], kv.block_size, "cpu")
    start = time.thread_time()
    with torch.inference_mode():
        hidden = model.norm(model.forward_prenorm(torch.tensor(prompt[context : context + rows]), torch.arange(context, context + rows), kv, meta))
        model.compute_logits(hidden[: min(rows, 4)]).argmax(-1).tolist()
    return time.thread_time() - start


def measure(context: int, repeats: int) -> list[list[Any]]:
    torch.set_num_threads(1)
    model, kv, table, prompt = build(context)
    totals: dict[int, list[float]] = {n: [] for n in ROWS}
    parts: dict[int, dict[str, list[float]]] = {n: collections.defaultdict(list) for n in ROWS}
    clock = Clock()
    with instrumented(clock):
        for rep in range(repeats + 3):  # the first 3 rounds warm caches and are dropped
            for n in ROWS:
                clock.parts.clear()
                seconds = step(model, kv, table, prompt, context, n)
                if rep >= 3:
                    totals[n].append(seconds)
                    for p in PARTS:
                        parts[n][p].append(clock.parts[p])
                    parts[n]["other"].append(seconds - sum(clock.parts.values()))
    plain = statistics.median(totals[1])
    rows = []
    for n in ROWS:
        med = statistics.median(totals[n])
        rows.append([n, n - 1, med * 1e3, med / plain, *[statistics.median(parts[n][p]) * 1e3 for p in (*PARTS, "other")]])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=1800, help="tokens of context before the step's rows")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="5 repeats, no write")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.no_write = 5, True
    cols = ["rows", "drafts k", "step ms (CPU)", "x plain step", *[f"{p} ms" for p in PARTS], "other ms"]
    load_before = os.getloadavg()[0]
    rows = measure(args.context, args.repeats)
    load = f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    print_table(f"verify step cost at {args.context} tokens of context, 1 thread, median of {args.repeats}", cols, rows)
    if not args.no_write:
        body = (markdown_table(cols, rows) + f"\n\nOne request at {args.context} tokens of an eval-split turn (real text); "
                "rows = the last token + k drafts (the turn's next tokens); LM head = greedy verification's first chunk of "
                f"<= 4 rows. Medians of per-thread CPU time over {args.repeats} rounds, row counts interleaved, 1 torch thread; {load}.")
        write_section("verify_cost", "Speculative verify step cost (embedded model, CPU)", body,
                      f"python benchmarks/verify_cost.py --context {args.context} --repeats {args.repeats}",
                      {"rows": {str(r[0]): dict(zip(cols[2:], r[2:], strict=True)) for r in rows}})


if __name__ == "__main__":
    main()
