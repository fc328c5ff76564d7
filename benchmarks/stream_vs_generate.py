"""`LLM.stream` vs `LLM.generate` decode tokens/s at batch 1 on the embedded model, side by side.

`stream` steps the engine on a background thread and hands each step's output to the event loop;
`generate` steps on the caller's thread. On an H100 (2026-11-22) stream decoded at 123 tok/s and
generate at 555: the gap is a per-step cost of the hand-off, not of the model. The third column
runs stream with a 0.1 ms interpreter switch interval (`sys.setswitchinterval`, default 5 ms): if
the gap is the two threads queueing for the GIL (a woken thread waits up to the switch interval
for the other to let go), it closes there. The process-wide setting is only changed inside this
benchmark, never by the engine.

`--emulated-step-ms X` replaces the model step by X ms of GIL-free waiting (what a device sync
does) after 0.3 ms of Python work: the hand-off cost on its own, measurable without a GPU.

    python benchmarks/stream_vs_generate.py [--device cuda] [--tokens 128] [--repeats 5] [--quick]
                                            [--emulated-step-ms 1.5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402

ONE = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)


def generate_rate(llm: LLM, prompt: list[int], params: SamplingParams) -> float:
    """Decode tokens/s of `generate`: (tokens - 1) / (time of the run - time of a 1-token run), so
    prefill and the first token are excluded the same way for both APIs."""
    start = time.perf_counter()
    llm.generate([prompt], ONE)
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = llm.generate([prompt], params)[0]
    return (len(out.token_ids) - 1) / max(1e-9, time.perf_counter() - start - first)


async def _stream(llm: LLM, prompt: list[int], params: SamplingParams) -> tuple[float, int]:
    """Seconds from the call to the final output, and the tokens generated."""
    start = time.perf_counter()
    count = 0
    async for out in llm.stream(prompt, params):
        count = len(out.token_ids)
    return time.perf_counter() - start, count


def stream_rate(llm: LLM, prompt: list[int], params: SamplingParams, switch: float | None = None) -> float:
    """Decode tokens/s of `stream`, measured like `generate_rate` (timing the consumer's first and
    last chunk instead would flatter stream: outputs that queue up behind the GIL arrive in a burst)."""
    default = sys.getswitchinterval()
    if switch is not None:
        sys.setswitchinterval(switch)
    try:
        first, _ = asyncio.run(_stream(llm, prompt, ONE))
        total, count = asyncio.run(_stream(llm, prompt, params))
    finally:
        sys.setswitchinterval(default)
    return (count - 1) / max(1e-9, total - first)


def emulate_steps(llm: LLM, step_ms: float) -> None:
    """Replace the runner's model step by `step_ms` of GIL-free sleep after 0.3 ms of Python work;
    every sampling sequence gets token 7."""
    def execute(batch: Any) -> tuple[list[list[int]], list[int], float]:
        start = time.perf_counter()
        while time.perf_counter() - start < 3e-4:  # scheduling and kernel launches hold the GIL
            pass
        time.sleep(step_ms / 1000)  # the device step: torch.cuda.synchronize releases the GIL
        return [[7] if batch.samples(i) else [] for i in range(len(batch))], [0] * len(batch), step_ms / 1000

    llm.core.runner.execute = execute  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--emulated-step-ms", type=float, default=None, help="replace the model step (see above)")
    args = ap.parse_args()
    tokens, repeats = (8, 1) if args.quick else (args.tokens, args.repeats)
    llm = LLM(device=args.device)
    if args.emulated_step_ms is not None:
        emulate_steps(llm, args.emulated_step_ms)
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    prompt = list(range(100, 164))
    llm.generate([prompt], params)  # warm-up: kernels compiled, graphs captured
    runs: dict[str, list[float]] = {"generate": [], "stream": [], "stream, 0.1 ms switch": []}
    for _ in range(repeats):  # alternating, so drift on a shared machine hits every column alike
        runs["generate"].append(generate_rate(llm, prompt, params))
        runs["stream"].append(stream_rate(llm, prompt, params))
        runs["stream, 0.1 ms switch"].append(stream_rate(llm, prompt, params, switch=1e-4))
    llm.close()
    base = statistics.median(runs["generate"])
    cols = ["api", "median tok/s", "min", "max", "vs generate"]
    rows = [[k, statistics.median(v), min(v), max(v), statistics.median(v) / base] for k, v in runs.items()]
    what = f"emulated {args.emulated_step_ms} ms steps" if args.emulated_step_ms is not None else args.device
    print_table(f"decode tok/s at batch 1, {tokens} tokens, {repeats} alternating runs ({what})", cols, rows)
    if not args.no_write and not args.quick and args.emulated_step_ms is None:
        body = markdown_table(cols, rows) + f"\n\nBatch 1, {tokens} new tokens, greedy; {repeats} alternating runs each."
        write_section(f"stream_vs_generate_{args.device}", f"stream vs generate ({args.device})", body,
                      f"python benchmarks/stream_vs_generate.py --device {args.device}", {"runs": runs})


if __name__ == "__main__":
    main()
