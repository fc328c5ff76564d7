"""Speculative decoding on the embedded model: replay assistant turns of the tau-bench airline runs
(prompt = the conversation so far) at temperature 0 and 0.7, each drafter vs none, in one run.

Reports mean accepted length (tokens emitted per target forward of a speculating request), decode
tokens/s (from the first streamed token to the last, so prefill is excluded) and the speedup. Drafters available: ngram (prompt lookup).

    python benchmarks/spec_decode.py [--turns 24] [--max-tokens 96] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.config import DEFAULT_MODEL_DIR, data_file  # noqa: E402
from engine.tokenizer import ChatTokenizer, render_chat  # noqa: E402


def turns(num: int, seed: int, max_prompt: int) -> list[list[int]]:
    runs = json.loads(data_file("tau-bench-airline", "trajectories.json").read_text())
    tools = json.loads(data_file("tau-bench-airline", "tools.json").read_text())
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    cases = []
    for run in runs:
        for i, m in enumerate(run["traj"]):
            if m["role"] == "assistant":
                ids = tok.encode(render_chat(run["traj"][:i], tools))
                if len(ids) <= max_prompt:
                    cases.append(ids)
    random.Random(seed).shuffle(cases)
    return cases[:num]


async def _one(llm: LLM, prompt: list[int], params: SamplingParams) -> tuple[float, int, Any]:
    """Decode seconds (first token to last) and decode tokens of one request."""
    first = last = None
    final = None
    async for chunk in llm.stream(prompt, params):
        now = time.perf_counter()
        first = first if first is not None else now
        last, final = now, chunk
    assert final is not None and first is not None and last is not None
    return last - first, final.usage.generated_tokens - 1, final.usage


DRAFT_TOKENS = {"suffix": 16, "ngram": 8, "mtp": 1, "draft": 4}


@dataclass(slots=True)
class Tally:
    seconds: float = 0.0
    decode_tokens: int = 0
    generated: int = 0
    proposed: int = 0
    accepted: int = 0

    def add(self, secs: float, toks: int, usage: Any) -> None:
        self.seconds += secs
        self.decode_tokens += toks
        self.generated += usage.generated_tokens
        self.proposed += usage.spec_proposed_tokens
        self.accepted += usage.spec_accepted_tokens

    @property
    def tokens_per_s(self) -> float:
        return self.decode_tokens / self.seconds

    @property
    def tokens_per_step(self) -> float:  # target forwards that emitted tokens: one per step + accepted drafts
        return self.generated / max(1, self.generated - self.accepted)

    @property
    def acceptance(self) -> float:
        return self.accepted / max(1, self.proposed)


def run(prompts: list[list[int]], drafters: list[str | None], temperature: float, max_tokens: int, device: str = "cpu") -> dict[str | None, Tally]:
    """Every configuration on every turn, interleaved turn by turn (each turn runs under each
    configuration back to back), so machine noise hits all configurations alike."""
    end = ChatTokenizer(DEFAULT_MODEL_DIR).end_id
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, stop_token_ids=(end,), seed=0)
    llms = {d: LLM(speculative=d, num_speculative_tokens=DRAFT_TOKENS.get(d or "", 4), kv_cache_memory_gb=0.25, device=device) for d in drafters}
    for llm in llms.values():
        llm.generate(prompts[:1], params)  # warm-up (and the shared system prompt gets cached for all alike)
    tallies = {d: Tally() for d in drafters}
    for p in prompts:  # one request at a time: decode latency is what speculation buys
        for d, llm in llms.items():
            tallies[d].add(*asyncio.run(_one(llm, p, params)))
    for llm in llms.values():
        llm.close()
    return tallies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--drafters", default="suffix,ngram,mtp,draft", help="comma-separated drafters to compare with none")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    prompts = turns(4 if args.quick else args.turns, 0, 3000)
    rows, data = [], {}
    drafters = args.drafters.split(",")
    for temperature in (0.0, 0.7):
        tallies = run(prompts, [None, *drafters], temperature, args.max_tokens, args.device)
        base = tallies[None].tokens_per_s
        rows.append([f"{temperature}", "none", base, 1.0, "-", 1.0])
        for drafter in drafters:
            t = tallies[drafter]
            rows.append([f"{temperature}", drafter, t.tokens_per_s, t.tokens_per_step, t.acceptance, t.tokens_per_s / base])
            data[f"{drafter}@{temperature}"] = {"tokens_per_s": t.tokens_per_s, "base_tokens_per_s": base,
                                                 "mean_accepted_length": t.tokens_per_step, "acceptance": t.acceptance}
    cols = ["temperature", "drafter", "decode tok/s", "tokens per step", "draft acceptance", "speedup"]
    print_table(f"speculative decoding, {len(prompts)} replayed assistant turns ({args.device})", cols, rows)
    if not args.no_write and not args.quick:
        cmd = f"python benchmarks/spec_decode.py --turns {args.turns} --max-tokens {args.max_tokens} --drafters {args.drafters}"
        cmd += f" --device {args.device}" if args.device != "cpu" else ""
        section, where = ("spec_decode", "") if args.device == "cpu" else (f"spec_decode_{args.device}", f", {args.device}")
        body = markdown_table(cols, rows) + "\n\nTarget: >= 2.5x decode speedup at temperature 0 with the best drafter. Draft tokens per step (max): " + ", ".join(f"{d} {DRAFT_TOKENS[d]}" for d in args.drafters.split(",")) + "."
        write_section(section, f"Speculative decoding (embedded model, batch 1{where})", body, cmd, data)


if __name__ == "__main__":
    main()
