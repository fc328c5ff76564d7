"""Speculative decoding on the embedded model, on airline work it never trained on.

Replays the assistant turns of eval-split tau-bench airline runs (engine/train/data.py; the
default and draft models never saw these tasks): prompt = the recorded conversation so far, output
= the model's own greedy continuation up to --max-tokens or its end token. One run per eval task
(distinct tasks, so no run's drafter state holds a near-copy of a later run), turns of a run in
conversation order, runs one after another, one request at a time (batch 1).

Every repeat builds a fresh engine for every configuration (no drafter or cache state from another
configuration or an earlier repeat); within a repeat the configurations take turns request by
request, so a slow phase of the shared machine hits them alike. At temperature 0 each
configuration's output tokens must equal plain decoding's on every turn, or the run fails.

Reports, per configuration: decode speedup (first streamed token to last, prefill excluded) and
end-to-end speedup (submission to last token, prefill included), both against plain decoding in the
same repeat, as the median and min-max over repeats; tokens per target step and draft acceptance.

A configuration of several drafters joined by "+" (e.g. suffix+mtp) enables them all on one engine;
the engine then picks the drafter and draft length per request and per step (engine/speculative/chooser.py).

--warm-tree adds a row "warm:suffix": a fresh suffix engine whose global tree is first seeded with
a served history, as a server that has already served other work holds it (SuffixDecoding's global
tree across requests). By default (--warm-source served) the history is the model's own outputs on
the TRAIN-split runs (never an eval task): every assistant turn of every train run up to the first
whose prompt passes the prompt limit, generated once per benchmark run by a separate engine at
--history-temperature (default 0: the measured requests' setting) with the same --max-tokens, each
output indexed with the last tokens of its prompt, exactly what the engine indexes of a request it
served (SuffixDrafter.prompt_context). Only the drafter is seeded: the measured engine's prefix cache
holds nothing of the history. --warm-source recorded seeds the recorded assistant turns of the same
runs instead (text another model wrote, not outputs this model produces). The row sits beside the
cold "suffix" row, whose tree starts empty. --tree adds "suffix-tree" (and
"warm:suffix-tree"): the same engines with tree verification (EngineConfig.spec_tree: one verify
step checks a token tree, greedy, lossless; CPU AVX2 two-pass kernel only, the run stops elsewhere).

    python benchmarks/spec_decode.py [--turns-per-run 6] [--repeats 3] [--max-tokens 96] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.config import DEFAULT_MODEL_DIR  # noqa: E402
from engine.speculative.suffix import SuffixDrafter  # noqa: E402
from engine.tokenizer import ChatTokenizer, render_chat  # noqa: E402
from engine.train.data import airline_tools, split_runs  # noqa: E402

DRAFT_TOKENS = {"suffix": 16, "ngram": 8, "mtp": 1, "draft": 4}
WARM = "warm:"  # a configuration whose suffix tree is seeded with train-split assistant turns first
TREE = "-tree"  # a configuration verifying draft trees (EngineConfig.spec_tree) instead of chains
DEFAULTS = {"runs": 4, "turns_per_run": 6, "seed": 0, "max_prompt": 3000}


def pick_runs(num_runs: int, seed: int) -> list[dict[str, Any]]:
    """`num_runs` eval runs: one trial per eval task (seeded) before any task repeats."""
    runs = split_runs("eval")
    rng = random.Random(seed)
    by_task: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_task.setdefault(r["task_id"], []).append(r)
    for trials in by_task.values():
        rng.shuffle(trials)
    tasks = sorted(by_task)
    rng.shuffle(tasks)
    rounds = [[by_task[t][i] for t in tasks if i < len(by_task[t])] for i in range(max(map(len, by_task.values())))]
    return [r for rnd in rounds for r in rnd][:num_runs]


def workload_task_ids() -> set[int]:
    """Task ids of the default workload (tests/benchmarks/test_workload_split.py)."""
    return {r["task_id"] for r in pick_runs(DEFAULTS["runs"], DEFAULTS["seed"])}


def turns(num_runs: int, turns_per_run: int, seed: int, max_prompt: int) -> list[tuple[int, list[int]]]:
    """(task id, prompt ids) of the first `turns_per_run` assistant turns of each picked run, in
    conversation order; a run stops at the first turn whose prompt passes `max_prompt` tokens."""
    tools = airline_tools()
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    out = []
    for run in pick_runs(num_runs, seed):
        traj = run["traj"]
        idx = [i for i, m in enumerate(traj) if m["role"] == "assistant"][:turns_per_run]
        for i in idx:
            ids = tok.encode(render_chat(traj[:i], tools))
            if len(ids) > max_prompt:
                break
            out.append((run["task_id"], ids))
    return out


def warm_runs() -> list[dict[str, Any]]:
    """The runs whose assistant turns seed a warm tree: the train split only."""
    return split_runs("train")


def warm_documents() -> list[list[int]]:
    """Token ids of every RECORDED assistant turn of the train-split runs, each with the 15 tokens
    before its assistant header (--warm-source recorded)."""
    tools = airline_tools()
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    head, end = tok.special["<|assistant|>"], tok.end_id
    docs = []
    for run in warm_runs():
        ids = tok.encode(render_chat(run["traj"], tools, add_generation_prompt=False))
        starts = [i for i, t in enumerate(ids) if t == head]
        for s in starts:
            stop = next((j for j in range(s, len(ids)) if ids[j] == end), len(ids) - 1)
            docs.append(ids[max(0, s - 15) : stop + 1])
    return docs


def history_prompts(max_prompt: int, limit: int | None = None) -> list[list[int]]:
    """Prompts of the served history (--warm-source served): every assistant turn of every
    train-split run, in conversation order, up to the first whose prompt passes `max_prompt`
    tokens (as `turns` cuts eval runs); the first `limit` when given."""
    tools = airline_tools()
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    out: list[list[int]] = []
    for run in warm_runs():
        traj = run["traj"]
        for i in (i for i, m in enumerate(traj) if m["role"] == "assistant"):
            ids = tok.encode(render_chat(traj[:i], tools))
            if len(ids) > max_prompt:
                break
            out.append(ids)
            if limit is not None and len(out) >= limit:
                return out
    return out


def served_documents(prompts: list[list[int]], params: SamplingParams, device: str) -> list[list[int]]:
    """The model's own outputs on `prompts`, each with the last tokens of its prompt: what the suffix
    drafter of an engine that served these requests indexed (SuffixDrafter.observe keeps
    `prompt_context` prompt tokens before each output). Generated by a separate engine (the suffix
    drafter only speeds it up: greedy outputs equal plain decoding's; sampled ones keep its law)."""
    llm = LLM(speculative="suffix", num_speculative_tokens=DRAFT_TOKENS["suffix"], kv_cache_memory_gb=1.0, device=device)
    try:
        keep = SuffixDrafter().prompt_context
        start = time.perf_counter()
        outs = llm.generate(prompts, params)
        print(f"served history: {len(prompts)} train-split turns, {sum(len(o.token_ids) for o in outs)} tokens generated "
              f"in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        return [p[-keep:] + list(o.token_ids) for p, o in zip(prompts, outs, strict=True)]
    finally:
        llm.close()


@dataclass(slots=True)
class Tally:
    decode_seconds: float = 0.0
    e2e_seconds: float = 0.0
    decode_tokens: int = 0
    generated: int = 0
    proposed: int = 0
    accepted: int = 0
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> float:  # target forwards that emitted tokens: one per step + accepted drafts
        return self.generated / max(1, self.generated - self.accepted)

    @property
    def acceptance(self) -> float:
        return self.accepted / max(1, self.proposed)


async def _one(llm: LLM, prompt: list[int], params: SamplingParams, tally: Tally) -> None:
    """Run one request; add its decode seconds (first token to last), end-to-end seconds and usage."""
    start = time.perf_counter()
    first = last = None
    final = None
    async for chunk in llm.stream(prompt, params):
        now = time.perf_counter()
        first = first if first is not None else now
        last, final = now, chunk
    assert final is not None and first is not None and last is not None
    tally.decode_seconds += last - first
    tally.e2e_seconds += last - start
    tally.decode_tokens += final.usage.generated_tokens - 1
    tally.generated += final.usage.generated_tokens
    tally.proposed += final.usage.spec_proposed_tokens
    tally.accepted += final.usage.spec_accepted_tokens
    tally.outputs.append(list(final.token_ids))


def draft_tokens(drafter: str) -> int:
    """Draft tokens per step (max) of a configuration: the most of its drafters."""
    return max(DRAFT_TOKENS[d] for d in drafter.removeprefix(WARM).removesuffix(TREE).split("+"))


def fresh_engine(drafter: str | None, device: str, warm: list[list[int]] | None = None) -> LLM:
    spec = drafter.removeprefix(WARM).removesuffix(TREE).replace("+", ",") if drafter else None
    tree = bool(drafter and drafter.endswith(TREE))
    llm = LLM(speculative=spec, num_speculative_tokens=draft_tokens(drafter) if drafter else 4, kv_cache_memory_gb=0.25, device=device,
              spec_tree=tree)
    if tree and not llm.core.runner.tree_verification:
        raise SystemExit(f"{drafter}: tree verification does not run on this machine (see ModelRunner._trees_supported)")
    # Warm-up on a prompt of no eval turn (a bare system line) and a short output: it loads kernels
    # and code paths without putting any eval conversation into the drafter or the prefix cache.
    llm.generate([llm.encode("<|system|>You are a helpful assistant.")], SamplingParams(temperature=0.0, max_tokens=8))
    if drafter and drafter.startswith(WARM):
        assert warm is not None, "a warm configuration needs the train-split documents"
        llm.preload_drafts(warm)
    return llm


def one_repeat(prompts: list[list[int]], drafters: list[str | None], params: SamplingParams, device: str,
               warm: list[list[int]] | None = None) -> dict[str | None, Tally]:
    """Fresh engines for every configuration; turns in order, configurations taking turns per request."""
    llms = {d: fresh_engine(d, device, warm) for d in drafters}
    tallies = {d: Tally() for d in drafters}
    for p in prompts:
        for d, llm in llms.items():
            asyncio.run(_one(llm, p, params, tallies[d]))
    for llm in llms.values():
        llm.close()
    return tallies


def check_lossless(tallies: dict[str | None, Tally], task_ids: list[int]) -> None:
    """At temperature 0 every configuration must reproduce plain decoding token for token."""
    plain = tallies[None].outputs
    for d, t in tallies.items():
        bad = [i for i, (a, b) in enumerate(zip(t.outputs, plain, strict=True)) if a != b]
        if bad:
            raise SystemExit(f"drafter {d}: output differs from plain decoding on turns {bad} (tasks {[task_ids[i] for i in bad]})")


def spread(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def fmt_spread(xs: list[float]) -> str:
    med, lo, hi = spread(xs)
    return f"{med:.2f} ({lo:.2f}-{hi:.2f})" if len(xs) > 1 else f"{med:.2f}"


def measure(cases: list[tuple[int, list[int]]], drafters: list[str], temperature: float, args: argparse.Namespace) -> tuple[list[list[Any]], dict[str, Any]]:
    end = ChatTokenizer(DEFAULT_MODEL_DIR).end_id
    params = SamplingParams(temperature=temperature, max_tokens=args.max_tokens, stop_token_ids=(end,), seed=0)
    prompts, task_ids = [p for _, p in cases], [t for t, _ in cases]
    reps = []
    warm = args.warm_docs if any(d.startswith(WARM) for d in drafters) else None
    for _ in range(args.repeats):
        tallies = one_repeat(prompts, [None, *drafters], params, args.device, warm)
        if temperature == 0.0:
            check_lossless(tallies, task_ids)
        reps.append(tallies)
    rows, data = [], {}
    for d in [None, *drafters]:
        dec = [r[d].decode_tokens / r[d].decode_seconds / (r[None].decode_tokens / r[None].decode_seconds) for r in reps]
        e2e = [r[None].e2e_seconds / r[d].e2e_seconds for r in reps]
        tok_s = [r[d].decode_tokens / r[d].decode_seconds for r in reps]
        last = reps[-1][d]
        rows.append([f"{temperature}", d or "none", fmt_spread(tok_s), fmt_spread(dec), fmt_spread(e2e),
                     last.tokens_per_step if d else 1.0, last.acceptance if d else "-"])
        data[f"{d or 'none'}@{temperature}"] = {"decode_tokens_per_s": tok_s, "decode_speedup": dec, "e2e_speedup": e2e,
                                                "tokens_per_step": last.tokens_per_step, "acceptance": last.acceptance,
                                                "generated_tokens": last.generated}
    return rows, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=DEFAULTS["runs"], help="eval runs replayed (one per eval task first)")
    ap.add_argument("--turns-per-run", type=int, default=DEFAULTS["turns_per_run"])
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--temperatures", default="0.0", help="comma-separated; outputs are checked against plain decoding at 0 only")
    ap.add_argument("--drafters", default="suffix,ngram,mtp,draft", help="comma-separated configurations to compare with none; a+b enables both drafters on one engine")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--quick", action="store_true", help="1 run, 2 turns, 24 tokens, 1 repeat, no write")
    ap.add_argument("--warm-tree", action="store_true",
                    help="add a row 'warm:suffix': the suffix tree first seeded with a served history of train-split turns")
    ap.add_argument("--warm-source", choices=("served", "recorded"), default="served",
                    help="served: the model's own outputs on the train-split turns (default); recorded: their recorded assistant turns")
    ap.add_argument("--history-temperature", type=float, default=0.0, help="sampling temperature of the served history")
    ap.add_argument("--tree", action="store_true",
                    help="add rows 'suffix-tree' (and 'warm:suffix-tree' with --warm-tree): tree verification (spec_tree)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.turns_per_run, args.max_tokens, args.repeats = 1, 2, 24, 1
    cases = turns(args.runs, args.turns_per_run, args.seed, DEFAULTS["max_prompt"])
    drafters = args.drafters.split(",")
    if args.warm_tree and f"{WARM}suffix" not in drafters:
        drafters.append(f"{WARM}suffix")
    args.warm_docs = None
    if args.warm_tree and args.warm_source == "recorded":
        args.warm_docs = warm_documents()
    elif args.warm_tree:
        hist = SamplingParams(temperature=args.history_temperature, max_tokens=args.max_tokens,
                              stop_token_ids=(ChatTokenizer(DEFAULT_MODEL_DIR).end_id,), seed=0)
        args.warm_docs = served_documents(history_prompts(DEFAULTS["max_prompt"], 8 if args.quick else None), hist, args.device)
    if args.tree:
        drafters += [f"{d}{TREE}" for d in ("suffix", f"{WARM}suffix") if d in drafters and f"{d}{TREE}" not in drafters]
    rows: list[list[Any]] = []
    data: dict[str, Any] = {}
    for temperature in map(float, args.temperatures.split(",")):
        r, d = measure(cases, drafters, temperature, args)
        rows += r
        data |= d
    tasks = sorted({t for t, _ in cases})
    cols = ["temperature", "drafter", "decode tok/s", "decode speedup", "end-to-end speedup", "tokens per step", "draft acceptance"]
    print_table(f"speculative decoding, {len(cases)} eval turns of tasks {tasks}, {args.repeats} repeat(s) ({args.device})", cols, rows)
    if not args.no_write and not args.quick:
        write_doc(args, cols, rows, data, cases, tasks)


def warm_note(args: argparse.Namespace) -> str:
    what = (f"the model's own outputs (temperature {args.history_temperature}, up to {args.max_tokens} tokens) on "
            f"{len(args.warm_docs)} assistant turns of the train-split runs, generated in this run: a server that has served "
            "that work" if args.warm_source == "served" else "the recorded assistant turns of the train-split runs")
    return (f"warm:suffix: the suffix drafter on an engine whose global tree was first seeded with {what} (no eval task; "
            "only the drafter is seeded, not the prefix cache), beside the cold suffix row whose tree starts empty. ")


def write_doc(args: argparse.Namespace, cols: list[str], rows: list[list[Any]], data: dict[str, Any], cases: list[Any], tasks: list[int]) -> None:
    cmd = (f"python benchmarks/spec_decode.py --runs {args.runs} --turns-per-run {args.turns_per_run} --max-tokens {args.max_tokens} "
           f"--repeats {args.repeats} --temperatures {args.temperatures} --drafters {args.drafters} --seed {args.seed}")
    cmd += f" --device {args.device}" if args.device != "cpu" else ""
    cmd += " --warm-tree" if args.warm_tree else ""
    cmd += f" --warm-source {args.warm_source}" if args.warm_tree and args.warm_source != "served" else ""
    cmd += f" --history-temperature {args.history_temperature}" if args.warm_tree and args.history_temperature else ""
    cmd += " --tree" if args.tree else ""
    section, where = ("spec_decode", "") if args.device == "cpu" else (f"spec_decode_{args.device}", f", {args.device}")
    body = (markdown_table(cols, rows) + f"\n\nData: eval split only ({len(cases)} assistant turns of tasks {tasks}, one run per task, "
            "turns in conversation order; the models never trained on these tasks). A fresh engine per configuration and repeat; "
            "at temperature 0 every configuration's output tokens equalled plain decoding's on every turn (checked; the run fails "
            "otherwise). Figures: median (min-max) over repeats; speedups are against plain decoding in the same repeat. "
            "Tokens per step and acceptance: last repeat. Target: >= 2.5x decode speedup at temperature 0 with the best drafter. "
            "Draft tokens per step (max): " + ", ".join(f"{d} {draft_tokens(d)}" for d in args.drafters.split(",")) + "; "
            "a+b: both drafters on one engine, the engine choosing drafter and length per request and step. "
            + (warm_note(args) if args.warm_tree else "") +
            ("-tree: the same drafter verifying a draft tree per step (its global tree's branches and the prompt-lookup chain; "
             "EngineConfig.spec_tree) instead of one chain. " if args.tree else "") +
            f"Load average when the run ended: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other processes' load makes "
            "absolute tok/s noisy; the ratios are taken within each repeat).")
    write_section(section, f"Speculative decoding (embedded model, batch 1{where})", body, cmd, data | {"tasks": tasks, "turns": len(cases)})


if __name__ == "__main__":
    main()
