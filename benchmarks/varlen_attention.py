"""The Triton varlen paged attention kernel vs the torch path it replaces on CUDA (per-sequence
loop with gathers), on the steps it serves: prefill chunks, speculative verification rows, a mixed
step, a shared-prefix batch. bf16, Qwen3-like heads (32 query, 8 KV, head_dim 128), 16-token blocks.

    python benchmarks/varlen_attention.py [--device cuda] [--quick] [--no-write]

`--quick` runs tiny shapes once on any device (on CPU in Triton's interpreter) and checks that the
two paths agree; the timings are only meaningful on a GPU.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402
from engine.kernels.triton.varlen_attention import varlen_paged_attention  # noqa: E402
from engine.model.attention import AttentionMetadata  # noqa: E402
from engine.model.paged_attention import paged_attention_torch  # noqa: E402

# name: (query rows per sequence, context length per sequence, shared prefix tokens)
CASES: dict[str, tuple[list[int], list[int], int]] = {
    "prefill 1x2048": ([2048], [2048], 0),
    "chunk 4x512 over 2k": ([512] * 4, [2560] * 4, 0),
    "verify 16x(4 rows) over 1k": ([4] * 16, [1024] * 16, 0),
    "mixed: 2 chunks + 30 verify": ([256, 256] + [5] * 30, [1024, 768] + [900] * 30, 0),
    "shared 3k prefix, 8x64 rows": ([64] * 8, [3136] * 8, 3072),
}
QUICK: dict[str, tuple[list[int], list[int], int]] = {"mixed": ([5, 1, 3], [9, 4, 20], 0), "shared": ([2, 2], [18, 18], 16)}


def build(rows: list[int], ctx: list[int], shared: int, device: str, dtype: torch.dtype, heads: tuple[int, int, int],
          block: int = 16) -> tuple[Any, ...]:
    hq, hkv, d = heads
    g = torch.Generator().manual_seed(0)
    shared_blocks = list(range(shared // block))
    tables, nxt = [], len(shared_blocks)
    for c in ctx:
        own = -(-c // block) - len(shared_blocks)
        tables.append(shared_blocks + list(range(nxt, nxt + own)))
        nxt += own
    k = torch.randn(nxt, block, hkv, d, generator=g).to(device, dtype)
    v = torch.randn(nxt, block, hkv, d, generator=g).to(device, dtype)
    q = torch.randn(sum(rows), hq, d, generator=g).to(device, dtype)
    meta = AttentionMetadata.build(rows, ctx, tables, block, device)
    return q, k, v, meta


def _time_us(fn: Any, device: str, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - start) * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cases, heads, repeats = (QUICK, (4, 2, 16), 1) if args.quick else (CASES, (32, 8, 128), args.repeats)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    cols = ["step", "rows", "torch us (median)", "torch spread", "kernel us (median)", "kernel spread", "speedup", "max abs diff"]
    rows: list[list[Any]] = []
    data: dict[str, Any] = {}
    for name, (qrows, ctx, shared) in cases.items():
        q, k, v, meta = build(qrows, ctx, shared, args.device, dtype, heads)
        scale = heads[2] ** -0.5
        kernel = functools.partial(varlen_paged_attention, q, k, v, meta.block_tables, meta.context_lens_t,
                                   meta.cu_query_lens_t, meta.max_query_len, scale)
        ref = functools.partial(paged_attention_torch, q, k, v, meta, scale)
        diff = (kernel().float() - ref().float()).abs().max().item()
        t_ref, t_ker = _time_us(ref, args.device, repeats), _time_us(kernel, args.device, repeats)
        m_ref, m_ker = statistics.median(t_ref), statistics.median(t_ker)
        rows.append([name, sum(qrows), m_ref, max(t_ref) - min(t_ref), m_ker, max(t_ker) - min(t_ker), m_ref / m_ker, diff])
        data[name] = {"torch_us": t_ref, "kernel_us": t_ker, "max_abs_diff": diff}
    print_table(f"varlen paged attention vs the torch loop ({args.device}, {dtype})", cols, rows)
    if args.quick:
        assert all(r[-1] < 1e-3 for r in rows), rows
    elif not args.no_write and args.device == "cuda":
        body = markdown_table(cols, rows) + (f"\n\nbf16, {heads[0]} query / {heads[1]} KV heads, head_dim {heads[2]}, 16-token blocks; "
                                             f"{repeats} timed calls each after one warm-up; spread = max - min.")
        write_section("varlen_attention_cuda", "Varlen paged attention kernel (GPU)", body, "python benchmarks/varlen_attention.py", data)


if __name__ == "__main__":
    main()
