"""Routing benchmark: the KV-aware router against round-robin and least-loaded, side by side.

Two workloads: tau-bench airline agent runs (each run a job, replayed whole: every recorded
assistant turn an LLM call whose prompt is the conversation so far; the context grows to 2-7k
tokens) and the Mooncake trace (each request a job; each 512-token hash id becomes
`--model-block-tokens` seeded tokens, first `--model-blocks` ids; requests of the trace's 8 most
shared prefix groups). Measured on engine replicas on a local Ray cluster, per policy on fresh
replicas, plus one replica alone (the hit-rate ceiling): prefix hit rate (cached / prompt tokens,
as the engines report it), the hit rate on the tokens past the prefix all agent runs share
(system prompt + tool schemas: the conversation's own tokens), mean and p99 job completion time,
per-replica load (tokens computed; imbalance = max / mean - 1), conversation turns the router
moved off their pinned replica, engine preemptions. Tool calls of the agent runs are not executed
(LLM calls only).

The model (`--model`): by default a tiny random Qwen3-MoE built here (seeded, nothing downloaded)
with the shipped model's tokenizer (the same token ids) and a context that fits the longest run,
so whole runs are replayed (16 eval runs: 184 turns, 3000 prompt tokens on average, up to 6941).
`--model default` serves the shipped model, whose 4096-token context cuts 7 of the runs (153 turns,
2591 on average). Routing, caching and load are counted in tokens; the weights only set how long
a token takes.

What any router can reach on the agent replay, by arithmetic (`hit_rate_bound`, printed and in
the JSON as `agent_bound`): every prompt opens with the same 1751-token system prompt + tool
schemas, which every replica keeps cached, so no policy's hit rate on all prompt tokens falls
below that prefix's share of them, and none beats a cache that never evicts. Whole runs: the
shared share is 0.584 and the never-evicting hit rate 0.942, so kv-aware / round-robin on all
tokens is at most 1.61x (cut at 4096 tokens: 0.676 and 0.939, at most 1.39x). Per replica count,
`round_robin_unbounded` is round-robin's expected hit rate with a cache that never evicts (each
turn on a random replica): the ratio kv-aware can show without memory pressure (1.05x at 2
replicas, 1.14x at 4, whole runs). Between that and the ceiling, the ratio is set by how much of
the conversations round-robin's caches lose, i.e. by the KV budget.

The KV budget (`kv_blocks_per_replica`, the same for every policy) is the regime routing exists
for: the live conversations do not fit one replica's cache, and do fit the cluster's when each
replica keeps its own share. `--concurrency` jobs in flight; the live working set is the shared
prefix plus that many conversations, each at its own tokens' mean over all turns (what a
conversation in flight holds at a random moment); per replica: `--kv-headroom` x (the shared
prefix + `concurrency / replicas` conversations), and at least the longest single call. The
one-replica row gets replicas x that (the same total cache). With affinity each replica holds its
share; round-robin sends every conversation to every replica, which would need `replicas` times
the conversations' share on each, so it evicts and recomputes. The Mooncake replay's working set
is far below that budget (no pressure there). `--sim` adds the no-model simulator
(benchmarks/routing_sim.py) on the full Mooncake trace at 8-64 replicas. The arithmetic (bounds, KV budget) is in benchmarks/routing_bounds.py.

    python benchmarks/routing.py [--replicas 2 4] [--model tiny|default] [--jobs 16] [--max-turns N] [--context N] [--concurrency 8]
        [--kv-headroom 1.25] [--workloads agent mooncake] [--trajectories FILE] [--sim] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentrt.ray.router import POLICIES  # noqa: E402
from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402
from benchmarks.routing_bounds import (  # noqa: E402
    KV_RULE,
    Job,
    conversation_hit_rate,
    hit_rate_bound,
    kv_blocks_per_replica,
    round_robin_unbounded,
    shared_prefix_len,
)
from benchmarks.routing_sim import budget_sweep, run_sim  # noqa: E402
from engine.config import DEFAULT_MODEL_DIR, data_file  # noqa: E402
from engine.tokenizer import ChatTokenizer, render_chat, render_message  # noqa: E402

CONTEXT = 4096  # the shipped model's context (max_position_embeddings): a run ends at its first turn past it
TINY_SEED = 0
BLOCK = 16  # engine KV block size (tokens)


def eval_runs(trajectories: Path | None) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """The agent runs to replay and the tool schemas: `trajectories` whole, else the held-out
    (eval) tasks of the tau-bench airline split in engine/train/data.py."""
    if trajectories is not None:
        runs = [r["traj"] for r in json.loads(trajectories.read_text())]
        return runs, json.loads(data_file("tau-bench-airline", "tools.json").read_text())
    from engine.train.data import airline_tools, split_runs

    return [r["traj"] for r in split_runs("eval")], airline_tools()


def workload_task_ids() -> set[int]:
    """Task ids of the default agent workload (tests/benchmarks/test_workload_split.py)."""
    from engine.train.data import split_runs

    return {r["task_id"] for r in split_runs("eval")}


def agent_jobs(runs: list[list[dict[str, Any]]], tools: list[dict[str, Any]], max_turns: int | None, max_out: int,
               context: int | None = CONTEXT) -> list[Job]:
    """One job per run: every recorded assistant turn (the first `max_turns`, None: all) whose
    prompt and output fit in `context` tokens (None: every turn, the run whole)."""
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    jobs = []
    for traj in runs:
        turns: list[tuple[list[int], int]] = []
        for i, m in enumerate(traj):
            if m["role"] != "assistant":
                continue
            prompt = tok.encode(render_chat(traj[:i], tools, add_generation_prompt=True))
            out = min(max_out, max(1, len(tok.encode(render_message(m)))))
            if (context is not None and len(prompt) + out >= context) or (max_turns is not None and len(turns) >= max_turns):
                break
            turns.append((prompt, out))
        jobs.append(Job(turns))
    return jobs


def mooncake(limit: int | None = None) -> list[dict[str, Any]]:
    lines = data_file("mooncake", "synthetic_trace.jsonl").read_text().splitlines()
    reqs = [json.loads(line) for line in lines if line.strip()]
    return reqs[:limit] if limit else reqs


def shared_prefix_requests(reqs: list[dict[str, Any]], num_groups: int, limit: int) -> list[dict[str, Any]]:
    """The first `limit` requests, in trace order, whose first block is one of the `num_groups`
    most common first blocks: the trace's conversations that share prefixes (a window from the
    start of the trace shares almost none in its first blocks)."""
    counts: dict[int, int] = {}
    for r in reqs:
        counts[r["hash_ids"][0]] = counts.get(r["hash_ids"][0], 0) + 1
    top = set(sorted(counts, key=lambda h: -counts[h])[:num_groups])
    return [r for r in reqs if r["hash_ids"][0] in top][:limit]


def mooncake_jobs(reqs: list[dict[str, Any]], blocks: int, block_tokens: int) -> list[Job]:
    def tokens(hid: int) -> list[int]:
        rng = random.Random(hid)
        return [rng.randrange(16, 8000) for _ in range(block_tokens)]

    return [Job([([t for h in r["hash_ids"][:blocks] for t in tokens(h)], 4)]) for r in reqs]


# ---- the model the replicas serve -------------------------------------------------------------
def tiny_context(jobs: list[Job]) -> int:
    """A context that fits every call of `jobs` (prompt + output), rounded up to 1024 tokens."""
    longest = max((len(p) + out for job in jobs for p, out in job.turns), default=1)
    return -(-(longest + 1) // 1024) * 1024


def build_model(kind: str, context: int, out: Path) -> tuple[str | None, str]:
    """The engine's `model` option and a description of it. "default": the shipped model (its
    context is 4096 tokens). "tiny": a tiny random Qwen3-MoE (hidden 32, 1 layer, 2 experts; seeded,
    built here with transformers, nothing downloaded) with the shipped model's tokenizer, so the
    token ids are the same, and `context` tokens of context: whole runs fit. Routing, caching and
    load are about tokens, not weights; the tiny model only makes every token cheaper to compute."""
    if kind == "default":
        return None, f"the shipped default model ({CONTEXT}-token context)"
    from engine.chat.fixtures import tiny_model

    path = tiny_model("qwen3", out, TINY_SEED, tokenizer=DEFAULT_MODEL_DIR, max_position_embeddings=context)
    return str(path), (f"a tiny random Qwen3-MoE (hidden 32, 1 layer, 2 experts, seed {TINY_SEED}; the shipped model's "
                       f"tokenizer) with a {context}-token context")


# ---- measured: replicas on Ray ----------------------------------------------------------------
async def replay(engine: Any, jobs: list[Job], concurrency: int) -> tuple[list[float], list[tuple[int, int]]]:
    """Run every job (its turns in order, each turn's conversation pinned like a session's);
    `concurrency` jobs at a time. Returns job completion times and (prompt, cached) tokens per call."""
    from agentrt.engine_client import LLMRequest

    slots = asyncio.Semaphore(concurrency)
    jct: list[float] = []
    calls: list[tuple[int, int]] = []

    async def one(i: int, job: Job) -> None:
        async with slots:
            start = time.perf_counter()
            for prompt, out in job.turns:
                res = await engine.generate(LLMRequest(prompt_ids=prompt, max_tokens=out, ignore_eos=True))
                calls.append((res.usage.prompt_tokens, res.usage.cached_tokens))
                # The next turn extends the prompt with the recorded reply, not the generated one:
                # the prompt is the part of the conversation that is used again.
                engine.pin(f"job{i}", prompt, 30.0)
            engine.unpin(f"job{i}")
            jct.append(time.perf_counter() - start)

    await asyncio.gather(*(one(i, j) for i, j in enumerate(jobs)))
    return jct, calls


def summarise(jct: list[float], calls: list[tuple[int, int]], shared: int, work: dict[str, int], replicas: int) -> dict[str, Any]:
    loads = [work.get(name, 0) for name in sorted(work)] + [0] * (replicas - len(work))
    mean = statistics.fmean(loads) if loads else 0.0
    ordered = sorted(jct)
    hit = sum(c for _, c in calls) / max(1, sum(p for p, _ in calls))
    return {"hit_rate": hit, "conv_hit_rate": conversation_hit_rate(calls, shared), "jct_mean_s": statistics.fmean(jct),
            "jct_p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "imbalance": max(loads) / mean - 1 if mean else 0.0, "load": loads}


def measure(workloads: dict[str, list[Job]], replicas: int, policy: str, concurrency: int, overlap_weight: float,
            num_kv_blocks: int, affinity_slack: int | None = 1, model: str | None = None,
            balance_slack: float | None = None) -> dict[str, dict[str, Any]]:
    from agentrt.ray import RayCluster, RayConfig

    options: dict[str, Any] = {"num_threads": 1, "num_kv_blocks": num_kv_blocks, "block_size": BLOCK}
    if model is not None:
        options["model"] = model
    config = RayConfig(address="local", num_replicas=replicas, router=policy, overlap_weight=overlap_weight,
                       affinity_slack=affinity_slack, balance_slack=balance_slack, num_cpus_per_replica=0.5,
                       engine_options=options)
    out = {}
    with RayCluster(config) as cluster:
        engine = cluster.engine
        assert engine is not None
        for name, jobs in workloads.items():
            before, moved, preempted = dict(engine.stats.tokens_by_replica), engine.stats.num_moved, preemptions(engine)
            jct, calls = asyncio.run(replay(engine, jobs, concurrency))
            work = {r: t - before.get(r, 0) for r, t in engine.stats.tokens_by_replica.items()}
            out[name] = summarise(jct, calls, shared_prefix_len(jobs), work, replicas)
            out[name] |= {"moved": engine.stats.num_moved - moved, "preemptions": preemptions(engine) - preempted}
    return out


def preemptions(engine: Any) -> int:
    """Requests the replicas preempted so far (their KV did not fit beside the others')."""
    import ray

    return int(sum(s["num_preemptions"] for s in ray.get([h.stats.remote() for h in engine.pool.handles.values()])))


# ---- report ---------------------------------------------------------------------------------------
def targets(single: dict[str, Any], pol: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, on every prompt token (`hit_rate`) and on the conversation's own tokens."""
    kv, rr = pol["kv-aware"], pol["round-robin"]
    out: dict[str, Any] = {"kv_imbalance": kv["imbalance"]}
    for key, label in (("hit_rate", ""), ("conv_hit_rate", "conv_")):
        vs_single = kv[key] / max(1e-9, single[key])
        vs_rr = kv[key] / max(1e-9, rr[key])
        out |= {f"kv_{label}hit_vs_single": vs_single, f"kv_{label}hit_vs_round_robin": vs_rr,
                f"{label}met": vs_single >= 0.95 and vs_rr >= 1.5 and kv["imbalance"] <= 0.2}
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def rows_of(single: dict[str, Any], pol: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rr = pol["round-robin"]
    nan = float("nan")
    rows = [["1 replica", single["hit_rate"], single.get("conv_hit_rate", nan), single["jct_mean_s"], single["jct_p99_s"],
             0.0, "-", "-", "-", single.get("moved", "-"), single.get("preemptions", "-")]]
    for name, r in pol.items():
        conv = r.get("conv_hit_rate", nan)
        rows.append([name, r["hit_rate"], conv, r["jct_mean_s"], r["jct_p99_s"], r["imbalance"],
                     _ratio(r["hit_rate"], rr["hit_rate"]), _ratio(conv, rr.get("conv_hit_rate", nan)),
                     rr["jct_mean_s"] / r["jct_mean_s"], r.get("moved", "-"), r.get("preemptions", "-")])
    return rows


COLUMNS = ["policy", "hit rate", "conv. hit rate", "JCT mean s", "JCT p99 s", "imbalance", "hit vs RR", "conv. hit vs RR",
           "JCT speed-up vs RR", "moved", "preempt"]


def bound_note(data: dict[str, Any]) -> str:
    b = data.get("agent_bound")
    if not b:
        return ""
    return (f"Agent replay ({data.get('model', '')}): {b['turns']} turns, {b['mean_prompt_tokens']:.0f} prompt tokens on "
            f"average; the shared prefix is {b['shared_share']:.3f} of the prompt tokens and a never-evicting cache would hit "
            f"{b['ideal_hit_rate']:.3f}, so kv-aware / round-robin on all tokens is at most "
            f"{b['max_ratio_vs_round_robin']:.2f}x for any router (benchmarks/routing.py docstring).\n\n")


def replica_bound_note(bound: dict[str, Any], rr_free: float, n: int) -> str:
    """The per-replica-count reading: round-robin without memory pressure, and the ceiling."""
    return (f"Bound at {n} replicas: round-robin with a never-evicting cache (each turn on a random replica) would hit "
            f"{rr_free:.3f}, so kv-aware / round-robin is {bound['ideal_hit_rate'] / rr_free:.2f}x without memory pressure "
            f"and at most {bound['max_ratio_vs_round_robin']:.2f}x when round-robin keeps only the shared prefix.")


def measured(args: argparse.Namespace, data: dict[str, Any], sections: list[str]) -> None:
    """Per replica count: one replica with the pooled KV budget (the hit-rate ceiling), then each
    policy on fresh replicas with the per-replica budget. The first count's agent figures are
    `policies` in the JSON; every count is under `by_replicas`."""
    runs, tools = eval_runs(args.trajectories)
    context = args.context if args.context is not None else (CONTEXT if args.model == "default" else None)
    agent = agent_jobs(runs[: args.jobs], tools, args.max_turns, args.max_out, context)
    with tempfile.TemporaryDirectory(prefix="routing-model-") as tmp:
        model, data["model"] = build_model(args.model, context or tiny_context(agent), Path(tmp) / "model")
        data["context"] = context  # None: runs replayed whole
        print(f"model: {data['model']}; runs {'whole' if context is None else f'cut at {context} tokens'}")
        measure_counts(args, agent, model, data, sections)


def measure_counts(args: argparse.Namespace, agent: list[Job], model: str | None, data: dict[str, Any],
                   sections: list[str]) -> None:
    workloads = {"agent": agent}
    if "mooncake" in args.workloads:
        workloads["mooncake"] = mooncake_jobs(shared_prefix_requests(mooncake(), 8, args.mooncake_requests),
                                              args.model_blocks, args.model_block_tokens)
    if "agent" not in args.workloads:
        del workloads["agent"]
    data["by_replicas"] = {}
    data["concurrency"], data["kv_headroom"] = args.concurrency, args.kv_headroom
    data["kv_rule"] = KV_RULE.format(factor=args.kv_headroom)
    data["overlap_weight"], data["affinity_slack"] = args.overlap_weight, args.affinity_slack
    data["balance_slack"] = args.balance_slack
    data["agent_shared_prefix_tokens"] = shared_prefix_len(agent)
    data["agent_bound"] = hit_rate_bound(agent, BLOCK)
    print(bound_note(data).strip())
    for n in args.replicas:
        blocks = kv_blocks_per_replica(agent, n, args.concurrency, args.kv_headroom, BLOCK)
        single = measure(workloads, 1, "kv-aware", args.concurrency, args.overlap_weight, n * blocks, model=model)
        pols = {p: measure(workloads, n, p, args.concurrency, args.overlap_weight, blocks, args.affinity_slack, model,
                           args.balance_slack) for p in POLICIES}
        rr_free = round_robin_unbounded(agent, n, BLOCK)
        data["by_replicas"][str(n)] = {"kv_blocks_per_replica": blocks, "block_size": BLOCK,
                                       "round_robin_never_evicting_hit_rate": rr_free}
        for name in workloads:
            pol = {p: pols[p][name] for p in POLICIES}
            title = (f"{name} replay, {n} replicas on local Ray, {blocks} KV blocks of {BLOCK} tokens each "
                     f"(1 replica: {n * blocks})")
            note = replica_bound_note(data["agent_bound"], rr_free, n) if name == "agent" else ""
            print_table(title, COLUMNS, rows_of(single[name], pol))
            if note:
                print(note)
            sections.append(f"**{title}**\n\n{markdown_table(COLUMNS, rows_of(single[name], pol))}" + (f"\n\n{note}" if note else ""))
            entry = {"policies": pol, "single_replica": single[name], "targets": targets(single[name], pol)}
            data["by_replicas"][str(n)][name] = entry
            if n == args.replicas[0]:
                data["policies" if name == "agent" else f"{name}_policies"] = pol
                data[f"{name}_targets"], data[f"{name}_single_replica"] = entry["targets"], single[name]
                data["kv_blocks_per_replica"] = blocks


SWEEP_COLUMNS = ["jobs in flight", "headroom", "replicas", "KV blocks / replica", "1 replica", "kv-aware", "round-robin",
                 "kv vs 1 replica", "kv vs RR", "kv imbalance"]


def sweep_section(args: argparse.Namespace, data: dict[str, Any], sections: list[str]) -> None:
    """The agent replay in the simulator over KV budgets: how far kv-aware / round-robin can go on
    this data at any budget that serves the longest call (routing_sim.budget_sweep)."""
    runs, tools = eval_runs(args.trajectories)
    jobs = agent_jobs(runs[: args.jobs], tools, args.max_turns, args.max_out,
                      args.context if args.context is not None else (CONTEXT if args.model == "default" else None))
    rows = budget_sweep(jobs, BLOCK, [2, 4] if not args.quick else [2], [8, 16] if not args.quick else [2],
                        [1.0, 1.25, 1.5] if not args.quick else [1.25], balance_slack=args.balance_slack)
    data["agent_budget_sweep"] = rows
    table = [[r["concurrency"], r["headroom"], r["replicas"], r["kv_blocks_per_replica"], r["single"], r["kv-aware"],
              r["round-robin"], r["kv_vs_single"], r["kv_vs_round_robin"], r["imbalance"]] for r in rows]
    title = "simulated agent replay over KV budgets (hit rates; budget rule as above, floored at the longest call)"
    print_table(title, SWEEP_COLUMNS, table)
    sections.append(f"**{title}**\n\n{markdown_table(SWEEP_COLUMNS, table)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, nargs="+", default=[2], help="engine replica counts to measure (2-4)")
    ap.add_argument("--jobs", type=int, default=16, help="agent runs to replay (eval split: 16 runs)")
    ap.add_argument("--max-turns", type=int, default=None, help="assistant turns replayed per run, at most (default: all)")
    ap.add_argument("--model", choices=("tiny", "default"), default="tiny",
                    help="tiny: a tiny random model whose context fits whole runs; default: the shipped model (4096-token context)")
    ap.add_argument("--context", type=int, default=None,
                    help="context cap in tokens (default: none for tiny, 4096 for default): a run ends at its first turn that does not fit")
    ap.add_argument("--workloads", nargs="+", choices=("agent", "mooncake"), default=["agent", "mooncake"])
    ap.add_argument("--max-out", type=int, default=8, help="output tokens per LLM call, at most")
    ap.add_argument("--mooncake-requests", type=int, default=64, help="from the 8 most shared prefix groups")
    ap.add_argument("--model-blocks", type=int, default=8, help="Mooncake hash ids kept per request")
    ap.add_argument("--model-block-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8, help="jobs in flight")
    ap.add_argument("--kv-headroom", type=float, default=1.25,
                    help="per-replica KV budget = headroom x (shared prefix + its share of the live conversations at their mean length)")
    ap.add_argument("--trajectories", type=Path, default=None, help="runs in tau-bench trajectories.json format (default: eval split)")
    ap.add_argument("--sim", action="store_true",
                    help="also simulate the full Mooncake trace at 8-64 replicas and the agent replay over KV budgets")
    ap.add_argument("--sim-replicas", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--sim-capacity-tokens", type=float, default=5e5, help="KV capacity per simulated replica")
    ap.add_argument("--sim-prefill-s", type=float, default=1e-4, help="simulated seconds per prefilled token")
    ap.add_argument("--sim-decode-s", type=float, default=2e-2, help="simulated seconds per output token")
    ap.add_argument("--sim-load", type=float, default=0.9, help="offered uncached work / simulated capacity")
    ap.add_argument("--overlap-weight", type=float, default=1.0, help="kv-aware: weight of blocks to prefill vs active blocks")
    ap.add_argument("--affinity-slack", type=lambda v: None if v == "none" else int(v), default=1,
                    help="kv-aware: prefix affinity while in-flight requests differ by at most this ('none': cost only)")
    ap.add_argument("--balance-slack", type=lambda v: None if v == "none" else float(v), default=None,
                    help="kv-aware: rebalance conversations past (1 + this) x the mean recent work (default: off; 0.15 for agent replays)")
    ap.add_argument("--no-cluster", action="store_true", help="skip the measured (Ray) part")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test); writes no docs")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.max_turns, args.mooncake_requests, args.sim_replicas = 2, 2, 4, [8]
    data: dict[str, Any] = {}
    sections: list[str] = []
    if not args.no_cluster:
        measured(args, data, sections)
    if args.sim or args.quick:
        reqs = mooncake(None if not args.quick else 200)
        sim = run_sim(reqs, args.sim_replicas, args.sim_capacity_tokens, args.sim_prefill_s, args.sim_decode_s, args.sim_load,
                      args.overlap_weight, args.affinity_slack, args.balance_slack)
        data["sim"] = sim
        for n, res in sim.items():
            single = {"hit_rate": res["single_replica_hit_rate"], "jct_mean_s": float("nan"), "jct_p99_s": float("nan")}
            title = f"simulated Mooncake trace, {n} replicas (simulated seconds)"
            print_table(title, COLUMNS, rows_of(single, {p: res[p] for p in POLICIES}))
            sections.append(f"**{title}**\n\n{markdown_table(COLUMNS, rows_of(single, {p: res[p] for p in POLICIES}))}")
        sweep_section(args, data, sections)
    if args.quick:
        print(json.dumps({k: list(v) if isinstance(v, dict) else v for k, v in data.items()}))
        return
    command = "python " + " ".join(sys.argv)
    body = ("One run per policy, so JCTs carry run-to-run noise. "
            "Targets (agent replay): kv-aware hit rate within 5% of one replica's and >= 1.5x round-robin's, "
            f"imbalance <= 0.2. Model: {data.get('model', '-')}; agent runs "
            f"{'replayed whole' if data.get('context') is None else 'cut at ' + str(data['context']) + ' tokens'}. "
            "Regime: memory pressure (see the module docstring of benchmarks/routing.py): "
            f"{args.concurrency} jobs in flight; {data.get('kv_rule', '-')} (the "
            f"{data.get('agent_shared_prefix_tokens', 0)}-token shared prefix; a conversation's own tokens at their mean "
            "over all turns). conv. hit rate = hit rate on the tokens past the shared prefix; "
            "moved = conversation turns routed off their pinned replica; preempt = engine preemptions. "
            f"kv-aware: overlap weight {args.overlap_weight}, affinity slack {args.affinity_slack}, "
            f"balance slack {args.balance_slack}.\n\n"
            + bound_note(data)
            + "\n\n".join(sections))
    write_section("routing", "Routing: KV-aware vs round-robin vs least-loaded (agentrt[ray])", body, command, data)


if __name__ == "__main__":
    main()
