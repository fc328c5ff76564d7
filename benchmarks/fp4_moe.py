"""FP4 MoE experts on the embedded model, CPU: expert weight bytes, held-out accuracy (perplexity,
KL divergence of next-token distributions, greedy agreement) and decode tokens/s at batch 1 and 16,
for bf16 (the shipped weights), NVFP4 and MXFP4, in one run.

    python benchmarks/fp4_moe.py [--windows 16] [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.config import DEFAULT_MODEL_DIR  # noqa: E402
from engine.model.loader import load_model  # noqa: E402
from engine.moe.quantized import quantize_model_experts  # noqa: E402
from engine.tokenizer import ChatTokenizer  # noqa: E402
from engine.train.data import load_airline, render_conversations  # noqa: E402


def windows(n: int, seq_len: int = 1024) -> list[torch.Tensor]:
    data = load_airline()
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    out = []
    for text in render_conversations(data.held_out, data.tools):
        ids = tok.encode(text)
        out += [torch.tensor([ids[i : i + seq_len]]) for i in range(0, len(ids) - seq_len // 4, seq_len)]
    return out[:n]


@torch.no_grad()
def logits_of(fmt: str | None, wins: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
    model, _ = load_model(DEFAULT_MODEL_DIR, dtype=torch.float32)
    expert_bytes = sum(m.w13.numel() + m.w2.numel() for m in model.modules() if hasattr(m, "w13") and m.w13.dim() == 3) * 2
    if fmt is not None:
        expert_bytes = quantize_model_experts(model, fmt)
    return [model.compute_logits(model.forward_dense(w))[0, :-1] for w in wins], expert_bytes


def decode_speed(fmt: str | None, batch: int) -> float:
    llm = LLM(quantization=fmt)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 8000, (32,), generator=g).tolist() for _ in range(batch)]
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=4))
    t0 = time.perf_counter()
    llm.generate(prompts, params)
    return batch * 64 / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    wins = windows(2 if args.quick else args.windows)
    base, base_bytes = logits_of(None, wins)
    targets = torch.cat([w[0, 1:] for w in wins])
    base_cat = torch.cat(base)
    base_ppl = math.exp(torch.nn.functional.cross_entropy(base_cat, targets).item())
    rows, data = [], {}
    for fmt in (None, "nvfp4", "mxfp4"):
        lg, nbytes = (base, base_bytes) if fmt is None else logits_of(fmt, wins)
        cat = torch.cat(lg)
        ppl = math.exp(torch.nn.functional.cross_entropy(cat, targets).item())
        kl = torch.nn.functional.kl_div(cat.log_softmax(-1), base_cat.log_softmax(-1), log_target=True, reduction="batchmean").item()
        agree = (cat.argmax(-1) == base_cat.argmax(-1)).float().mean().item()
        b1, b16 = decode_speed(fmt, 1), decode_speed(fmt, 16)
        name = fmt or "bf16"
        rows.append([name, nbytes / 2**20, base_bytes / nbytes, ppl, (ppl / base_ppl - 1) * 100, kl, agree, b1, b16])
        data[name] = {"expert_bytes": nbytes, "perplexity": ppl, "kl": kl, "greedy_agreement": agree, "tok_s_b1": b1, "tok_s_b16": b16}
    cols = ["experts", "expert MiB", "x smaller", "held-out ppl", "ppl +%", "KL", "greedy agree", "b1 tok/s", "b16 tok/s"]
    print_table(f"FP4 MoE experts, embedded model, {targets.numel()} held-out tokens (CPU)", cols, rows)
    if not args.no_write and not args.quick:
        body = markdown_table(cols, rows) + ("\n\nTargets: perplexity increase <= 1.5% (NVFP4) and <= 3% (MXFP4). bf16 = the shipped "
                                             "weights run in fp32. FP4 weights stay packed; each step dequantises only the experts it uses.")
        write_section("fp4_moe", "FP4 MoE experts (CPU)", body, f"python benchmarks/fp4_moe.py --windows {args.windows}", data)


if __name__ == "__main__":
    main()
