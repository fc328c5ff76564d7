"""Offline replay of speculative drafting on eval turns: tokens per verify step, exact; speedup, modelled.

At temperature 0 the tokens a request emits per verify step depend only on the drafts and the
model's greedy output, not on timing. This replays the greedy outputs of eval-split turns (the
same turns as benchmarks/spec_decode.py, from `split_runs("eval")`, decoded once with plain decoding) through the engine's own
`Speculator` and chooser, step by step, and counts tokens per step and acceptance exactly. The
speedup is then modelled: emitted tokens over the summed cost of the steps, a verify step of k
drafts costing what `benchmarks/verify_cost.py` measured for k + 1 rows (its JSON; the engine's
linear cost model when absent).

Rows: `chain` is what the engine does (one draft per step); `tree` is a simulation only (the engine
cannot verify trees): a best-first tree over the suffix trie's branches and the prompt-lookup chain,
as many nodes as maximise expected tokens per cost, accepted along the longest path the output
follows; its cost is that of as many rows. `warm` seeds the tree first with the train-split
assistant turns (spec_decode.warm_documents). `--holdout` replays the eval turns the speed benchmark
does not (for checking settings on turns that are not the benchmark's).

    python benchmarks/spec_replay.py [--holdout] [--quick]
"""

from __future__ import annotations

import argparse
import heapq
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
from engine.speculative.chooser import VerifyCost  # noqa: E402
from engine.speculative.speculator import Speculator  # noqa: E402
from engine.speculative.suffix import SuffixTree  # noqa: E402
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
    """Cost of a step of `rows` rows, linear between measured row counts (flat past the last)."""
    ns = sorted(costs)
    for a, b in zip(ns, ns[1:], strict=False):
        if a <= rows <= b:
            return costs[a] + (costs[b] - costs[a]) * (rows - a) / (b - a)
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


def tree_paths(trie: SuffixTree, context: list[int], budget: int, match_prior: float, max_match: int) -> dict[tuple[int, ...], float]:
    """Up to `budget` trie paths after the longest match, best first: {path: estimated chance}."""
    length, node = trie.match(context, max_match)
    if node < 0:
        return {}
    conf, out = length / (length + match_prior), dict[tuple[int, ...], float]()
    heap: list[tuple[float, tuple[int, ...], int]] = [(-1.0, (), node)]
    while heap and len(out) < budget:
        neg, path, nd = heapq.heappop(heap)
        if path:
            out[path] = -neg
        if len(path) < min(budget, trie.max_depth - length):
            for tok, child in trie.children(nd).items():
                heapq.heappush(heap, (neg * trie.count(child) / trie.count(nd) * conf, (*path, tok), child))
    return out


def choose_tree(cands: dict[tuple[int, ...], float], costs: dict[int, float]) -> set[tuple[int, ...]]:
    """The prefix-closed set of candidate paths (best first) with the most expected tokens per cost."""
    chosen: list[tuple[int, ...]] = []
    kept: set[tuple[int, ...]] = set()
    best, best_n, expected = 1.0, 0, 1.0
    for path, p in sorted(cands.items(), key=lambda kv: -kv[1]):
        if len(path) > 1 and path[:-1] not in kept:
            continue
        chosen.append(path)
        kept.add(path)
        expected += p
        if expected / cost_of(len(chosen) + 1, costs) > best:
            best, best_n = expected / cost_of(len(chosen) + 1, costs), len(chosen)
    return set(chosen[:best_n])


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
                              mtp_draft=None, draft_ids=[], usage=SimpleNamespace(spec_proposed_tokens=0, spec_accepted_tokens=0))
        pos = 1  # the prefill step sampled the first token
        while pos < len(turn.output):
            k = min(MAX_DRAFT, MAX_TOKENS - pos - 1)
            rows, acc = draft_and_accept(spec, seq, turn.output[pos:], k, mode, costs)
            emit = min(acc + 1, len(turn.output) - pos)
            seq.token_ids += turn.output[pos : pos + emit]
            pos, steps, tokens, cost = pos + emit, steps + 1, tokens + emit, cost + cost_of(rows + 1, costs)
            proposed, accepted = proposed + rows, accepted + acc
        spec.observe(n, turn.prompt + turn.output)
    return {"tokens_per_step": tokens / steps, "acceptance": accepted / max(1, proposed), "modelled_speedup": tokens / cost}


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
    assert spec.suffix is not None
    sd = spec.suffix
    cands = {p: c for p, c in tree_paths(sd.tree, seq.token_ids, 64, sd.match_prior, sd.max_match).items() if len(p) <= k}
    _, local, probs = sd.prompt_draft(seq.token_ids, k)
    for i in range(len(local)):
        cands[tuple(local[: i + 1])] = max(cands.get(tuple(local[: i + 1]), 0.0), probs[i])
    tree = choose_tree(cands, costs)
    acc = 0
    while acc < len(rest) and tuple(rest[: acc + 1]) in tree:
        acc += 1
    return len(tree), acc


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
        for mode in ("chain", "tree"):
            r = replay(recorded, mode, warm if tree_kind == "warm" else None, costs)
            rows.append([tree_kind, mode + (" (simulated)" if mode == "tree" else ""), r["tokens_per_step"], r["acceptance"], r["modelled_speedup"]])
    source = args.costs or ("verify_cost.json" if (JSON_DIR / "verify_cost.json").exists() else "linear model")
    title = f"drafting replayed on {len(recorded)} eval turns ({'holdout' if args.holdout else 'spec_decode workload'}), step costs: {source}"
    print_table(title, ["suffix tree", "verification", "tokens per step", "acceptance", "modelled speedup"], rows)


if __name__ == "__main__":
    main()
