"""The agentic benchmark: cost per job of replayed tau-bench airline runs, each optimisation
stacked on the last, side by side with LangGraph over transformers and LangGraph over agentrt's own
engine, all in one run.

Workload: eval-split runs only (engine/train/data.py: tasks the default model never trained on).
Each job replays one recorded run: every assistant turn is an LLM call whose prompt is the real
conversation so far; its output is the model's own greedy continuation, stopped at the model's end
token or at the recorded turn's length, whichever comes first (never forced past the end token).
The turn's recorded tool calls are executed by the airline tools on the job's own database copy.
Jobs arrive as a seeded Poisson process. A run is replayed up to the turn whose prompt would
overflow the model's context window (the same turns in every configuration).

Accounting, the same for every row: an LLM call costs the wall time of the engine's loop while it
works (steps with their scheduling, drafting and model time, plus building outputs with
detokenisation; `LLM.busy_seconds`) or, for transformers, the wall time of `generate()`; a tool
call costs its CPU time. Each row runs --repeats times (rows interleaved) and reports the median
with min-max; a step whose min-max overlaps the row above's is "no measurable change at this load".

    python benchmarks/agentic.py [--jobs 8] [--rate 0.5] [--repeats 3] [--quick] [--trajectories FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentrt import EmbeddedEngine, JobSpec, PoolLimits, Registry, Runtime, graph  # noqa: E402
from agentrt.cost import CostModel  # noqa: E402
from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.config import DEFAULT_MODEL_DIR  # noqa: E402
from engine.tokenizer import ChatTokenizer, render_chat, render_message  # noqa: E402
from engine.train.data import airline_tools, split_runs  # noqa: E402
from tools.airline import TOOLS, use_database  # noqa: E402
from tools.airline_db import airline_db  # noqa: E402

CONTEXT = 4096
COST = CostModel()
DEFAULTS = {"jobs": 8, "seed": 0}


@dataclass(slots=True)
class Turn:
    prompt_ids: list[int]  # the recorded conversation so far, without the assistant tag
    out_len: int  # the recorded turn's length (capped): the most this call may generate
    tool_calls: list[tuple[str, dict[str, Any]]]


@dataclass(slots=True)
class Plan:
    turns: list[Turn]
    task_id: int | None = None
    arrival: float = 0.0


@dataclass(slots=True)
class Stats:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    computed_tokens: int = 0
    generated_tokens: int = 0
    engine_seconds: float = 0.0  # what LLM calls are charged: the engine loop's busy wall time
    runner_seconds: float = 0.0  # of which the model forward passes (agentrt's runner only)
    tool_cpu_seconds: float = 0.0
    makespan: float = 0.0

    @property
    def cost_usd(self) -> float:
        return COST.llm_call(self.engine_seconds) + COST.tool_call(self.tool_cpu_seconds)


def choose_runs(runs: list[dict[str, Any]], num_jobs: int, seed: int) -> tuple[list[dict[str, Any]], random.Random]:
    """The seeded sample of runs to replay, and the generator (it goes on to draw arrivals)."""
    rng = random.Random(seed)
    return rng.sample(runs, min(num_jobs, len(runs))), rng


def workload_task_ids() -> set[int]:
    """Task ids of the default workload (tests/benchmarks/test_workload_split.py)."""
    chosen, _ = choose_runs(split_runs("eval"), DEFAULTS["jobs"], DEFAULTS["seed"])
    return {r["task_id"] for r in chosen}


def build_plans(path: Path | None, num_jobs: int, seed: int, max_turns: int | None, max_out: int) -> list[Plan]:
    """Plans of `num_jobs` runs: eval-split airline runs, or the runs in `path` (tau-bench format)."""
    runs = split_runs("eval") if path is None else json.loads(path.read_text())
    tools = airline_tools() if path is None or path.name == "trajectories.json" else [t.schema() for t in TOOLS]
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    chosen, rng = choose_runs(runs, num_jobs, seed)
    plans = []
    for run in chosen:
        traj, turns = run["traj"], []
        for i, m in enumerate(traj):
            if m["role"] != "assistant":
                continue
            prompt = tok.encode(render_chat(traj[:i], tools, add_generation_prompt=False))
            out_len = min(max_out, max(1, len(tok.encode(render_message(m))) - 1))
            if len(prompt) + 1 + out_len > CONTEXT or (max_turns is not None and len(turns) >= max_turns):
                break
            calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in m.get("tool_calls") or ()]
            turns.append(Turn(prompt, out_len, calls))
        plans.append(Plan(turns, run.get("task_id")))
    t = 0.0
    for plan in plans:
        t += rng.expovariate(1.0)  # unit-rate arrivals; run_config scales them by 1 / --rate
        plan.arrival = t
    return plans


PLANS: list[Plan] = []


@graph
async def replay(ctx: Any, job: int) -> int:
    """Replay plan `job`: one LLM call per recorded assistant turn, then its recorded tool calls.
    One session per job, registered with it: its pin moves to each turn's prefix and is released
    when the job ends."""
    session = ctx.new_session()
    with use_database(airline_db("auto").copy()):
        for turn in PLANS[job].turns:
            session.token_ids = list(turn.prompt_ids)  # replay: the recorded conversation, not our output
            await ctx.generate(None, session=session, max_tokens=turn.out_len, name="turn")
            for name, args in turn.tool_calls:
                try:
                    await ctx.call(name, **args)
                except Exception:  # recorded calls may break rules on our DB state; the model sees errors
                    pass
    return len(PLANS[job].turns)


def warm_llm(options: dict[str, Any]) -> LLM:
    """An engine with its code paths warmed on a non-workload prompt, its busy clock reset."""
    llm = LLM(**options)
    llm.generate([llm.encode("warm-up: the quick brown fox")], SamplingParams(temperature=0.0, max_tokens=4))
    llm.busy_seconds = 0.0
    return llm


def make_runtime(policy: str, engine_options: dict[str, Any]) -> Runtime:
    reg = Registry()
    for t in TOOLS:
        reg.register(t)
    reg.register(replay)
    return Runtime(reg, EmbeddedEngine(warm_llm(engine_options)), policy=policy, limits=PoolLimits(gpu=4, cpu=4))


async def run_config(plans: list[Plan], concurrent: bool, policy: str, scale: float, engine_options: dict[str, Any]) -> Stats:
    rt = make_runtime(policy, engine_options)
    llm: LLM = rt.engine.llm  # type: ignore[union-attr]
    stats = Stats()

    def on_event(ev: dict[str, Any]) -> None:
        if ev["kind"] == "llm_output":
            stats.ttfts.append(ev["ttft"])

    async def one(i: int, start: float) -> None:
        res = await rt.run_job(JobSpec(graph="replay", inputs={"job": i}), on_event=on_event)
        assert res.status == "succeeded", res.error
        stats.latencies.append(time.perf_counter() - start - plans[i].arrival * scale)
        u = res.usage
        stats.prompt_tokens += u.prompt_tokens
        stats.cached_tokens += u.cached_tokens
        stats.computed_tokens += u.prefill_tokens_computed
        stats.generated_tokens += u.generated_tokens
        stats.runner_seconds += u.device_seconds
        stats.tool_cpu_seconds += u.cpu_seconds

    start = time.perf_counter()
    if concurrent:
        async def delayed(i: int) -> None:
            await asyncio.sleep(max(0.0, start + plans[i].arrival * scale - time.perf_counter()))
            await one(i, start)

        await asyncio.gather(*[delayed(i) for i in range(len(plans))])
    else:
        for i in range(len(plans)):
            await asyncio.sleep(max(0.0, start + plans[i].arrival * scale - time.perf_counter()))
            await one(i, start)
    stats.makespan = time.perf_counter() - start
    stats.engine_seconds = llm.busy_seconds
    llm.generate([[1]], SamplingParams(max_tokens=1))  # one more step applies the jobs' last unpins
    assert not llm.core.pins, f"sessions left pinned after their jobs ended: {sorted(llm.core.pins)}"
    llm.close()
    return stats


def run_floor(config: tuple[str, bool, str, dict[str, Any]], scale: float) -> Stats:
    """What a configuration costs if decoding were free: the same turns with every output cut to one
    token, i.e. only the prefill no stack can avoid (new tool results, user and recorded assistant
    messages)."""
    full = [[t.out_len for t in p.turns] for p in PLANS]
    for p in PLANS:
        for t in p.turns:
            t.out_len = 1
    try:
        _, concurrent, policy, opts = config
        return asyncio.run(run_config(PLANS, concurrent, policy, scale, opts))
    finally:
        for p, lens in zip(PLANS, full, strict=True):
            for t, n in zip(p.turns, lens, strict=True):
                t.out_len = n


def run_langgraph(plans: list[Plan], scale: float, engine_options: dict[str, Any] | None) -> Stats:
    """The same replay as a LangGraph functional graph, one job at a time, its LLM calls on
    transformers `generate` (engine_options None) or on agentrt's engine (`LLM.generate`, the given
    options). Charged like every row: LLM calls by their engine's busy wall time, tools by CPU time."""
    from langgraph.func import entrypoint, task

    generate, engine_seconds = langgraph_llm(engine_options)
    stats = Stats()
    dbs: dict[int, Any] = {}
    by_name = {t.name: t for t in TOOLS}

    @task
    def llm_turn(prompt: list[int], out_len: int) -> tuple[int, int]:
        return generate(prompt, out_len)

    @task
    def tool_turn(job: int, name: str, args: dict[str, Any]) -> float:
        t0 = time.thread_time()
        with use_database(dbs[job]):
            try:
                by_name[name](**by_name[name].validate(args))
            except Exception:
                pass
        return time.thread_time() - t0

    @entrypoint()
    def job_graph(job: int) -> tuple[int, int, float]:
        computed = generated = 0
        cpu = 0.0
        for turn in plans[job].turns:
            c, g = llm_turn(turn.prompt_ids, turn.out_len).result()
            computed, generated = computed + c, generated + g
            for name, args in turn.tool_calls:
                cpu += tool_turn(job, name, args).result()
        return computed, generated, cpu

    start = time.perf_counter()
    for i, plan in enumerate(plans):
        time.sleep(max(0.0, start + plan.arrival * scale - time.perf_counter()))
        dbs[i] = airline_db("auto").copy()
        computed, generated, cpu = job_graph.invoke(i)
        stats.latencies.append(time.perf_counter() - start - plan.arrival * scale)
        stats.tool_cpu_seconds += cpu
        stats.computed_tokens += computed
        stats.generated_tokens += generated
        stats.prompt_tokens += sum(len(t.prompt_ids) + 1 for t in plan.turns)
    stats.makespan = time.perf_counter() - start
    stats.engine_seconds = engine_seconds()
    stats.cached_tokens = stats.prompt_tokens - stats.computed_tokens
    return stats


def langgraph_llm(engine_options: dict[str, Any] | None) -> tuple[Any, Any]:
    """(generate(prompt, max_new) -> (prompt tokens computed, tokens generated), busy seconds so far)
    on transformers (None) or on agentrt's engine with `engine_options`; greedy, stopping at the
    model's end token or max_new."""
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    assistant, end = tok.special["<|assistant|>"], tok.end_id
    if engine_options is not None:
        llm = warm_llm(engine_options)

        def gen_engine(prompt: list[int], max_new: int) -> tuple[int, int]:
            out = llm.generate([prompt + [assistant]], SamplingParams(temperature=0.0, max_tokens=max_new, stop_token_ids=(end,)))[0]
            return out.usage.prompt_tokens - out.usage.cached_tokens, out.usage.generated_tokens

        return gen_engine, lambda: llm.busy_seconds
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32).eval()
    busy = [0.0]

    def gen_hf(prompt: list[int], max_new: int) -> tuple[int, int]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(torch.tensor([prompt + [assistant]]), max_new_tokens=max_new, do_sample=False, eos_token_id=end, pad_token_id=0)
        busy[0] += time.perf_counter() - t0
        return len(prompt) + 1, out.shape[1] - len(prompt) - 1

    gen_hf([assistant], 2)  # warm-up, like the engines'
    busy[0] = 0.0
    return gen_hf, lambda: busy[0]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def med(runs: list[Stats], f: Any) -> float:
    return statistics.median(f(s) for s in runs)


def per_job_cost(runs: list[Stats], n: int) -> tuple[float, float, float]:
    costs = [s.cost_usd / n for s in runs]
    return statistics.median(costs), min(costs), max(costs)


def step(runs: list[Stats], prev: list[Stats] | None, n: int) -> Any:
    """$/job of the row above over this row's (ratio of medians), or "no measurable change at this
    load" when the two rows' min-max ranges overlap."""
    if prev is None:
        return "-"
    (m, lo, hi), (pm, plo, phi) = per_job_cost(runs, n), per_job_cost(prev, n)
    return "no measurable change at this load" if lo <= phi and plo <= hi else pm / m


def row(name: str, runs: list[Stats], n: int, base: list[Stats], prev: list[Stats] | None = None) -> list[Any]:
    cost, lo, hi = per_job_cost(runs, n)
    ttft = [s for s in runs if s.ttfts]
    return [name, med(runs, lambda s: n / s.makespan * 60), med(runs, lambda s: pct(s.latencies, 0.5)), med(runs, lambda s: pct(s.latencies, 0.99)),
            med(ttft, lambda s: pct(s.ttfts, 0.5)) if ttft else "n/a", int(med(runs, lambda s: s.computed_tokens)),
            med(runs, lambda s: s.cached_tokens / max(1, s.prompt_tokens)), int(med(runs, lambda s: s.generated_tokens)),
            med(runs, lambda s: s.engine_seconds / n), med(runs, lambda s: s.runner_seconds / n) if runs[0].runner_seconds else "n/a",
            f"{cost:.3g} ({lo:.3g}-{hi:.3g})", per_job_cost(base, n)[0] / cost, step(runs, prev, n)]


COLUMNS = ["config", "jobs/min", "p50 s", "p99 s", "TTFT p50", "prefill", "hit", "generated", "engine s/job", "runner s/job",
           "$/job median (min-max)", "x(1)", "x prev"]


def configurations(kv_gb: float, drafter: str) -> tuple[list[tuple[str, bool, str, dict[str, Any]]], int]:
    """(1) one job at a time, no prefix cache; (2) + concurrent jobs on continuous batching;
    (3) + prefix/KV reuse across turns; (4) + program-level least-attained-service scheduling;
    (5) + speculative decoding; (6) + FP4 (NVFP4) experts; (7) + host-memory KV tier under the
    device KV budget. Every configuration gets the same device KV budget; also returns its blocks."""
    import torch

    from engine.model.config import ModelConfig
    from engine.runner import kv_bytes_per_block

    kv_blocks = int(kv_gb * 2**30 // kv_bytes_per_block(ModelConfig.from_hf(DEFAULT_MODEL_DIR), 16, torch.float32))
    dev = {"num_kv_blocks": kv_blocks}
    spec = {"speculative": drafter, "num_speculative_tokens": 16 if drafter == "suffix" else 4}
    return [
        ("(1) naive", False, "fcfs", dev | {"enable_prefix_caching": False}),
        ("(2) +batching", True, "fcfs", dev | {"enable_prefix_caching": False}),
        ("(3) +prefix reuse", True, "fcfs", dev),
        ("(4) +LAS", True, "las", dev),
        (f"(5) +spec ({drafter})", True, "las", dev | spec),
        ("(6) +FP4 experts", True, "las", dev | spec | {"quantization": "nvfp4"}),
        ("(7) +KV tiers", True, "las", dev | spec | {"quantization": "nvfp4", "host_kv_blocks": 4 * kv_blocks}),
    ], kv_blocks


LG_ENGINE, LG_HF, FLOOR = "LangGraph + agentrt engine", "LangGraph + transformers", "(7), 1-token outputs"


def measure(configs: list[tuple[str, bool, str, dict[str, Any]]], repeats: int, scale: float, quick: bool) -> dict[str, list[Stats]]:
    """Every row `repeats` times, rows interleaved so slow phases of a shared machine hit them alike.
    LangGraph + agentrt engine runs on row (5)'s engine (unquantised, like transformers)."""
    results: dict[str, list[Stats]] = {name: [] for name, *_ in configs}
    for _ in range(max(1, repeats)):
        for name, concurrent, policy, opts in configs:
            results[name].append(asyncio.run(run_config(PLANS, concurrent, policy, scale, opts)))
        results.setdefault(LG_ENGINE, []).append(run_langgraph(PLANS, scale, configs[4][3]))
        if not quick:
            results.setdefault(FLOOR, []).append(run_floor(configs[-1], scale))
            results.setdefault(LG_HF, []).append(run_langgraph(PLANS, scale, None))
    return results


def check(results: dict[str, list[Stats]]) -> None:
    """Recorded usage adds up, and no output ran past its recorded turn's length."""
    cap = sum(t.out_len for p in PLANS for t in p.turns)
    for name, runs in results.items():
        for s in runs:
            assert s.cached_tokens + s.computed_tokens == s.prompt_tokens, f"{name}: usage does not add up"
            assert 0 < s.generated_tokens <= cap, f"{name}: {s.generated_tokens} tokens generated, cap {cap}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=DEFAULTS["jobs"])
    ap.add_argument("--rate", type=float, default=0.5, help="mean job arrivals per second (Poisson)")
    ap.add_argument("--max-output", type=int, default=128, help="cap on a replayed turn's output tokens")
    ap.add_argument("--trajectories", type=Path, default=None, help="runs in tau-bench trajectories.json format (default: the eval split)")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--kv-gb", type=float, default=0.125, help="device KV cache budget of every configuration (GiB)")
    ap.add_argument("--drafter", default="suffix", help="drafter of rows (5)-(7)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of every row, interleaved; median and min-max are reported")
    ap.add_argument("--quick", action="store_true", help="2 jobs, 3 turns each, short outputs, 1 repeat; no transformers baseline")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    jobs = 2 if args.quick else args.jobs
    PLANS[:] = build_plans(args.trajectories, jobs, args.seed, 3 if args.quick else None, 16 if args.quick else args.max_output)
    configs, kv_blocks = configurations(args.kv_gb, args.drafter)
    results = measure(configs, 1 if args.quick else args.repeats, 1.0 / args.rate, args.quick)
    check(results)
    names = [c[0] for c in configs] + [n for n in (FLOOR, LG_HF, LG_ENGINE) if n in results]
    base = results[names[0]]
    stacked = [c[0] for c in configs]
    rows = [row(name, results[name], jobs, base, results[stacked[i - 1]] if 0 < i < len(stacked) else None) for i, name in enumerate(names)]
    if LG_HF in results:  # the engine's share with the orchestrator held fixed
        rows[names.index(LG_ENGINE)][-1] = step(results[LG_ENGINE], results[LG_HF], jobs)
    turns = sum(len(p.turns) for p in PLANS)
    tasks = sorted({p.task_id for p in PLANS if p.task_id is not None})
    print_table(f"agentic replay: {jobs} runs of tasks {tasks}, {turns} LLM turns", COLUMNS, rows)
    if not args.no_write and not args.quick:
        write_doc(args, rows, results, turns, tasks, kv_blocks)


def write_doc(args: argparse.Namespace, rows: list[list[Any]], results: dict[str, list[Stats]], turns: int, tasks: list[int], kv_blocks: int) -> None:
    cmd = (f"python benchmarks/agentic.py --jobs {args.jobs} --rate {args.rate} --max-output {args.max_output} --seed {args.seed} "
           f"--kv-gb {args.kv_gb} --drafter {args.drafter} --repeats {args.repeats}")
    split = "eval split (tasks the default model never trained on)" if args.trajectories is None else f"runs of {args.trajectories}"
    body = (markdown_table(COLUMNS, rows) + f"\n\nData: {split}, {args.jobs} runs of tasks {tasks}, {turns} replayed LLM turns "
            f"(runs cut where the prompt would pass the model's {CONTEXT}-token context). Outputs stop at the model's end token or "
            "the recorded turn's length (generated: tokens produced). Charged alike in every row: LLM calls by the engine loop's "
            "busy wall time (steps incl. scheduling, drafting, model, output building and detokenisation; for transformers, "
            "`generate()` wall time), tools by CPU time. runner s/job: of that, agentrt's model forward passes. "
            f"Device KV budget {args.kv_gb} GiB ({kv_blocks} blocks of 16 tokens) in every agentrt row; (7) adds a host tier of 4x that. "
            f"Every row ran {args.repeats} times, rows interleaved; figures are medians, $/job with min-max. x prev: $/job of the row "
            "above over this row's (for LangGraph + agentrt engine: of LangGraph + transformers), or \"no measurable change at this "
            "load\" where the two rows' min-max ranges overlap. LangGraph rows run one job at a time; LangGraph + agentrt engine uses "
            "row (5)'s engine (unquantised, like transformers). (7), 1-token outputs: the full stack with every output cut to one "
            "token, the prefill no stack can avoid. The machine (2 cores) was shared with other work while this ran.")
    data = {name: [{"engine_seconds": s.engine_seconds, "runner_seconds": s.runner_seconds, "tool_cpu_seconds": s.tool_cpu_seconds,
                    "cost_usd": s.cost_usd, "makespan": s.makespan, "generated_tokens": s.generated_tokens,
                    "computed_tokens": s.computed_tokens, "latencies": s.latencies} for s in runs] for name, runs in results.items()}
    write_section("agentic", "Agentic benchmark: $ per job, stacked optimisations", body, cmd, {"tasks": tasks, "turns": turns, "rows": data})


if __name__ == "__main__":
    main()
