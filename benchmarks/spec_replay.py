"""Offline replay of speculative drafting on eval turns: tokens per verify step, exact; speedup, modelled.

At temperature 0 the tokens a request emits per verify step depend only on the drafts and the
model's greedy output, not on timing. This replays the greedy outputs of eval-split turns (the
same turns as benchmarks/spec_decode.py, from `split_runs("eval")`, decoded once with plain decoding) through the engine's own
`Speculator` and chooser, step by step, and counts tokens per step and acceptance exactly. The
speedup is then modelled: emitted tokens over the summed cost of the steps, a verify step of k
drafts costing what `benchmarks/verify_cost.py` measured for k + 1 rows (its JSON; the engine's
linear cost model when absent).

Rows: `chain` is what the engine does by default (one draft per step); `tree` is tree verification
(`EngineConfig.spec_tree`): the engine's own draft tree (`Speculator.draft_tree`: a best-first tree
over the suffix trie's branches and the prompt-lookup chain, as many nodes as maximise expected
tokens per cost under the engine's linear cost model), accepted along the longest path the output
follows; its modelled cost is that of as many rows. `tree:measured` sizes the same trees by the
measured step costs instead of the linear model (to check the engine's cost model). `warm` seeds the tree first with the train-split
RECORDED assistant turns (spec_decode.warm_documents, i.e. spec_decode's `--warm-source recorded`; the
speed benchmark's default warm row seeds the model's own served history instead, which drafts far
better: 6.87 vs 3.47 tokens per step on the benchmark's turns). `--holdout` replays the eval turns the speed benchmark
does not (for checking settings on turns that are not the benchmark's).

    python benchmarks/spec_replay.py [--holdout] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import JSON_DIR, print_table  # noqa: E402
from benchmarks.spec_decode import turns, warm_documents  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.config import DEFAULT_MODEL_DIR, EngineConfig  # noqa: E402
from engine.runner import MAX_TREE_NODES  # noqa: E402
from engine.speculative.chooser import VerifyCost  # noqa: E402
from engine.speculative.speculator import Speculator  # noqa: E402
from engine.tokenizer import ChatTokenizer  # noqa: E402

MAX_DRAFT = 16  # as spec_decode's suffix row
MAX_TOKENS = 96


@dataclass(frozen=True, slots=True)
class Turn:
    prompt: list[int]
    output: list[int]  # plain greedy decoding's tokens


def workload_task_ids() -> set[int]:
    """Task ids of the default workload (tests/benchmarks/test_workload_split.py): spec_decode's."""
    return {task for task, _ in turns(4, 6, 0, 3000)}


def step_costs() -> dict[int, float]:
    """{rows: cost in plain steps}: verify_cost.py's measurement, else the engine's linear model."""
    path = JSON_DIR / "verify_cost.json"
    if path.exists():
        rows = json.loads(path.read_text())["rows"]
        return {int(n): float(r["x plain step"]) for n, r in rows.items()}
    cfg = EngineConfig()
    model = VerifyCost(cfg.spec_verify_overhead, cfg.spec_token_cost)
    return {1: 1.0, **{k + 1: model.of(k) for k in (1, 2, 4, 8, 16)}}


def cost_of(rows: int, costs: dict[int, float]) -> float:
    """Cost of a step of `rows` rows, linear between measured row counts and past the last two."""
    ns = sorted(costs)
    for a, b in zip(ns, ns[1:], strict=False):
        if a <= rows <= b:
            return costs[a] + (costs[b] - costs[a]) * (rows - a) / (b - a)
    if rows > ns[-1] and len(ns) > 1:  # a tree of up to 32 rows: the last slope goes on
        a, b = ns[-2], ns[-1]
        return costs[b] + (costs[b] - costs[a]) * (rows - b) / (b - a)
    return costs[ns[-1]] if rows > ns[-1] else costs[ns[0]]


def plain_outputs(cases: list[tuple[int, list[int]]]) -> list[Turn]:
    """Plain greedy decoding of every turn (one engine, no speculation)."""
    llm = LLM(kv_cache_memory_gb=0.25, device="cpu")
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop_token_ids=(ChatTokenizer(DEFAULT_MODEL_DIR).end_id,))
    out = [Turn(ids, list(llm.generate([ids], params)[0].token_ids)) for _, ids in cases]
    llm.close()
    return out


def accepted_chain(draft: list[int], rest: list[int]) -> int:
    a = 0
    while a < len(draft) and a < len(rest) and draft[a] == rest[a]:
        a += 1
    return a


def replay(turns_: list[Turn], mode: str, warm: list[list[int]] | None, costs: dict[int, float]) -> dict[str, float]:
    """Replay every turn in order through one Speculator; returns tokens per step, acceptance, modelled speedup."""
    spec = Speculator(("suffix",), VerifyCost(EngineConfig().spec_verify_overhead, EngineConfig().spec_token_cost))
    if warm:
        spec.preload(warm)
    steps = tokens = proposed = accepted = 0
    cost = 0.0
    for n, turn in enumerate(turns_):
        spec.observe(n, turn.prompt)
        seq = SimpleNamespace(token_ids=[*turn.prompt, turn.output[0]], params=SamplingParams(temperature=0.0), spec=None,
                              mtp_draft=None, draft_ids=[], draft_parents=None, usage=SimpleNamespace(spec_proposed_tokens=0, spec_accepted_tokens=0))
        pos = 1  # the prefill step sampled the first token
        while pos < len(turn.output):
            k = min(MAX_DRAFT, MAX_TOKENS - pos - 1)
            rows, acc = draft_and_accept(spec, seq, turn.output[pos:], k, mode, costs)
            emit = min(acc + 1, len(turn.output) - pos)
            seq.token_ids += turn.output[pos : pos + emit]
            pos, steps, tokens, cost = pos + emit, steps + 1, tokens + emit, cost + cost_of(rows + 1, costs)
            proposed, accepted = proposed + rows, accepted + acc
        spec.observe(n, turn.prompt + turn.output)
    return {"tokens_per_step": tokens / steps, "acceptance": accepted / max(1, proposed), "modelled_speedup": tokens / cost,
            "rows_per_step": (steps + proposed) / steps}


def draft_and_accept(spec: Speculator, seq: Any, rest: list[int], k: int, mode: str, costs: dict[int, float]) -> tuple[int, int]:
    """(draft rows verified, drafts accepted) for one step."""
    if k <= 0:
        return 0, 0
    if mode == "chain":
        spec.draft(seq, k)
        acc = accepted_chain(seq.draft_ids, rest)
        if seq.draft_ids:
            Speculator.record(seq, acc)
        rows, seq.draft_ids = len(seq.draft_ids), []
        return rows, acc
    # what the engine verifies with spec_tree=True ("tree"), or the tree chosen by the measured step costs
    spec.draft_tree(seq, k, MAX_TREE_NODES, (lambda n: cost_of(n + 1, costs)) if mode == "tree:measured" else None)
    if not seq.draft_ids:
        return 0, 0
    kids = {(p, tok): i for i, (p, tok) in enumerate(zip(seq.draft_parents, seq.draft_ids, strict=True))}
    acc, node = 0, -1
    while acc < len(rest) and (node := kids.get((node, rest[acc]), -2)) != -2:
        acc += 1
    Speculator.record(seq, acc)
    rows, seq.draft_ids, seq.draft_parents = len(seq.draft_ids), [], None
    return rows, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holdout", action="store_true", help="the eval turns of runs 5-16, which the speed benchmark does not replay")
    ap.add_argument("--costs", default=None, help="step costs as rows:cost pairs, e.g. 1:1,2:1.12,5:1.33,17:2.32 "
                    "(default: docs/benchmarks/verify_cost.json, else the engine's linear model)")
    ap.add_argument("--quick", action="store_true", help="1 run, 2 turns, no warm rows")
    args = ap.parse_args()
    runs, per_run = (1, 2) if args.quick else (16 if args.holdout else 4, 6)
    cases = turns(runs, per_run, 0, 3000)
    if args.holdout:
        cases = cases[len(turns(4, 6, 0, 3000)) :]
    recorded = plain_outputs(cases)
    costs = step_costs() if args.costs is None else {int(a): float(b) for a, b in (p.split(":") for p in args.costs.split(","))}
    warm = None if args.quick else warm_documents()
    rows = []
    for tree_kind in ("cold", "warm") if warm else ("cold",):
        for mode in ("chain", "tree", "tree:measured"):
            r = replay(recorded, mode, warm if tree_kind == "warm" else None, costs)
            rows.append([tree_kind, mode, r["tokens_per_step"], r["rows_per_step"], r["acceptance"], r["modelled_speedup"]])
    source = args.costs or ("verify_cost.json" if (JSON_DIR / "verify_cost.json").exists() else "linear model")
    title = f"drafting replayed on {len(recorded)} eval turns ({'holdout' if args.holdout else 'spec_decode workload'}), step costs: {source}"
    print_table(title, ["suffix tree", "verification", "tokens per step", "rows per step", "acceptance", "modelled speedup"], rows)


if __name__ == "__main__":
    main()
