"""`python -m engine.quantize` — write a pre-quantised FP4 checkpoint of a model's MoE experts.

    python -m engine.quantize --model engine/assets/default_model --format nvfp4 --out /tmp/model-nvfp4
    python -m engine.quantize --format mxfp4 --out /tmp/model-mxfp4     # the shipped default model

MXFP4 is written in gpt-oss's tensor layout (`*_blocks`, `*_scales`), NVFP4 in NVIDIA ModelOpt's
(`weight`, `weight_scale`, `weight_scale_2`); see engine/model/fp4_checkpoint.py. Attention, router,
norms, embeddings and the MTP block stay bf16. `LLM(out_dir)` then loads the experts packed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

from engine.config import DEFAULT_MODEL_DIR
from engine.errors import ModelLoadError
from engine.model.layers import MoE
from engine.model.loader import load_model, save_model
from engine.moe.quantized import QuantizedExperts


def quantize_model_experts(model: nn.Module, fmt: str) -> int:
    """Replace every MoE layer's expert weights by packed FP4 (attention and router stay as they
    are). Returns the expert weight bytes after quantisation."""
    total = 0
    for module in model.modules():
        if isinstance(module, MoE) and module.quantized is None:
            module.quantized = QuantizedExperts(module.w13.data, module.w2.data, fmt)
            module.w13 = nn.Parameter(torch.empty(0), requires_grad=False)  # free the dense copies
            module.w2 = nn.Parameter(torch.empty(0), requires_grad=False)
            total += module.quantized.nbytes
    return total


def quantize_checkpoint(model_dir: Path, fmt: str, out: Path) -> int:
    """Quantise `model_dir`'s decoder experts to `fmt` and save to `out`; returns the expert bytes."""
    if fmt not in ("nvfp4", "mxfp4"):
        raise ValueError(f"format must be 'nvfp4' or 'mxfp4', got {fmt!r}")
    if out.resolve() == model_dir.resolve():
        raise ValueError("--out must differ from --model (the source would be overwritten)")
    model, _ = load_model(model_dir, dtype=torch.float32)
    total = quantize_model_experts(model.layers, fmt)  # decoder layers only: the MTP block stays dense
    save_model(model, out)
    if (model_dir / "tokenizer.json").exists():
        shutil.copy(model_dir / "tokenizer.json", out / "tokenizer.json")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m engine.quantize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="HF-format model directory (default: the shipped model)")
    ap.add_argument("--format", choices=("nvfp4", "mxfp4"), required=True)
    ap.add_argument("--out", type=Path, required=True, help="directory to write the pre-quantised checkpoint to")
    args = ap.parse_args()
    try:
        total = quantize_checkpoint(args.model, args.format, args.out)
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    print(f"wrote {args.out} ({args.format} experts: {total / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
