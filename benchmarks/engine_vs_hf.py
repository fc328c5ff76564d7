"""The engine vs Hugging Face transformers on the same random weights, per architecture family.

Three workloads, each run by both in this one process, one after the other:
  decode-b1      one request, 32-token prompt, N new tokens (greedy)
  decode-b16     16 requests, 32-token prompts, N new tokens each
  shared-prefix  32 requests sharing a 1,024-token prefix (+16 distinct tokens), 32 new tokens each
Prints tokens/s and the engine/transformers ratio (medians over the alternating repeats, with the
min-max of the per-repeat ratios); updates docs/benchmarks.md.

--arch picks the family: qwen3_moe (the default, ~50M params), qwen3, llama, gpt_oss, deepseek_v3;
tiny random configs that keep the real models' shape ratios (GQA ratio, experts/top-k, MLA ranks,
sliding-window layers), scaled down to a few tens of millions of parameters.

    python benchmarks/engine_vs_hf.py [--arch ARCH] [--quick] [--dtype float32|bfloat16] [--device cpu|cuda]

--autotune-ab measures the engine alone (decode-b1, decode-b16) with the CPU kernels' default work
split and with the one autotuned for this CPU, alternating, and reports median [min-max] of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, print_table, write_section  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402

VOCAB = 8192


ARCHS = ("qwen3_moe", "qwen3", "llama", "gpt_oss", "deepseek_v3")


def _config(arch: str, quick: bool) -> tuple[type, object]:
    """(transformers model class, config) of `arch` at benchmark size (hidden 512, 6 layers; quick: 256, 2)."""
    import transformers

    h, layers = (256, 2) if quick else (512, 6)
    common = dict(vocab_size=VOCAB, hidden_size=h, num_hidden_layers=layers, max_position_embeddings=4096,
                  tie_word_embeddings=False, eos_token_id=1, bos_token_id=0)
    if arch == "qwen3_moe":  # Qwen3-30B-A3B ratios: 128 experts top-8 -> 16 top-2 here
        return transformers.Qwen3MoeForCausalLM, transformers.Qwen3MoeConfig(
            num_attention_heads=8, num_key_value_heads=4, head_dim=64, num_experts=16, num_experts_per_tok=2,
            moe_intermediate_size=256, intermediate_size=1024, norm_topk_prob=True, **common)
    if arch == "qwen3":  # Qwen3-8B: GQA 4:1, intermediate ~3x hidden
        return transformers.Qwen3ForCausalLM, transformers.Qwen3Config(
            num_attention_heads=8, num_key_value_heads=2, head_dim=64, intermediate_size=3 * h, **common)
    if arch == "llama":  # Llama-3-8B: GQA 4:1, intermediate 3.5x, llama3 RoPE scaling
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 1024, "rope_theta": 500000.0}
        return transformers.LlamaForCausalLM, transformers.LlamaConfig(
            num_attention_heads=8, num_key_value_heads=2, intermediate_size=7 * h // 2, rope_parameters=rope, **common)
    if arch == "gpt_oss":  # gpt-oss-20b: GQA 8:1, 32 experts top-4 -> 16 top-4, window 128 on alternate layers, YaRN
        rope = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                "original_max_position_embeddings": 4096, "rope_theta": 150000.0}
        return transformers.GptOssForCausalLM, transformers.GptOssConfig(
            num_attention_heads=8, num_key_value_heads=1, head_dim=64, num_local_experts=16, num_experts_per_tok=4,
            intermediate_size=h, sliding_window=128, rope_parameters=rope,
            layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)], **common)
    if arch == "deepseek_v3":  # DeepSeek-V3: MLA (q rank ~0.2 h, kv rank ~0.07 h + rope 64), 256 experts top-8 in 8 groups
        return transformers.DeepseekV3ForCausalLM, transformers.DeepseekV3Config(
            num_attention_heads=8, num_key_value_heads=8, q_lora_rank=h // 4, kv_lora_rank=h // 8, qk_nope_head_dim=32,
            qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=32, num_experts_per_tok=4, n_group=4, topk_group=2,
            n_shared_experts=1, moe_intermediate_size=128, intermediate_size=2 * h, first_k_dense_replace=1,
            routed_scaling_factor=2.5, **common)
    raise ValueError(f"unknown arch {arch!r}; one of {', '.join(ARCHS)}")


def build_checkpoint(path: Path, quick: bool, arch: str = "qwen3_moe") -> int:
    cls, cfg = _config(arch, quick)
    torch.manual_seed(0)
    model = cls(cfg)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def workloads(quick: bool) -> dict[str, tuple[list[list[int]], int]]:
    g = torch.Generator().manual_seed(0)
    new = 16 if quick else 128
    prefix = torch.randint(2, VOCAB, (256 if quick else 1024,), generator=g).tolist()

    def rand(n: int, k: int) -> list[list[int]]:
        return [torch.randint(2, VOCAB, (k,), generator=g).tolist() for _ in range(n)]

    return {
        "decode-b1": (rand(1, 32), new),
        "decode-b16": (rand(16, 32), new),
        "shared-prefix": ([prefix + s for s in rand(8 if quick else 32, 16)], 8 if quick else 32),
    }


def run_hf(model: torch.nn.Module, prompts: list[list[int]], new: int) -> float:
    device = next(model.parameters()).device
    ids = torch.tensor(prompts, device=device)  # equal lengths: no padding needed
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert out.shape == (len(prompts), ids.shape[1] + new)
    return elapsed


def run_engine(llm: LLM, prompts: list[list[int]], new: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(o.token_ids) == new for o in outs)
    return elapsed


def _split_settings(tuned: dict[str, Any] | None) -> None:
    """Put the CPU kernels' autotuned work split (`tuned`: family -> its Choice) or, with None, their
    defaults in force."""
    from engine.kernels.cpu import autotune, native

    for kernels in native.TUNABLE:
        if kernels.space is not None and kernels.choice is not None and (tuned is None or kernels.name in tuned):
            kernels.apply(tuned[kernels.name] if tuned else autotune.Choice(kernels.space.default, "default"))


def autotune_ab(llm: LLM, loads: dict[str, tuple[list[list[int]], int]], repeats: int) -> tuple[list[list[object]], dict[str, object]]:
    """Engine tok/s with the kernels' default work split and with the autotuned one, alternating in
    every repeat (the order flips each time): per workload the median [min-max] of each and the ratio
    of the medians."""
    from engine.kernels.cpu import native

    rows: list[list[object]] = []
    for prompts, _ in loads.values():
        run_engine(llm, prompts[:1], 2)  # warm-up; every kernel family the model uses settles its split here
    saved = {k.name: k.choice for k in native.TUNABLE if k.choice is not None}
    data: dict[str, object] = {"choices": _choices()}
    for name, (prompts, new) in loads.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(repeats):
            for tuned in (False, True) if r % 2 == 0 else (True, False):
                _split_settings(saved if tuned else None)
                llm.core.scheduler.radix.reset()  # type: ignore[union-attr]
                times[tuned].append(run_engine(llm, prompts, new))
        _split_settings(saved)
        tokens = len(prompts) * new
        rate = {k: sorted(tokens / t for t in v) for k, v in times.items()}
        med = {k: statistics.median(v) for k, v in rate.items()}
        rows.append([name, len(prompts)] + [f"{med[k]:,.1f} [{v[0]:,.1f}-{v[-1]:,.1f}]" for k, v in rate.items()]
                    + [med[True] / med[False]])
        data[name] = {"requests": len(prompts), "new_tokens": tokens, "defaults_s": times[False], "tuned_s": times[True]}
    return rows, data


def _choices() -> dict[str, object]:
    from engine.kernels.cpu import native

    return {k.name: {"source": k.choice.source, **dict(zip(k.space.knobs, k.choice.params, strict=True))}
            for k in native.TUNABLE if k.choice is not None and k.space is not None}


def _write_ab(args: argparse.Namespace, title: str, rows: list[list[object]], data: dict[str, object]) -> None:
    cols = ["workload", "requests", "defaults tok/s, median [min-max]", "autotuned tok/s, median [min-max]", "tuned / defaults"]
    print_table(title, cols, rows)
    if args.no_write:
        return
    cmd = f"python benchmarks/engine_vs_hf.py --autotune-ab --arch {args.arch}" + (" --quick" if args.quick else "") + f" --repeats {args.repeats}"
    chosen = "; ".join(f"{n}: {', '.join(f'{k}={v}' for k, v in c.items())}" for n, c in data["choices"].items())  # type: ignore[union-attr]
    body = (markdown_table(cols, rows) + f"\n\nThe engine alone, {args.repeats} runs per setting alternating (order flipped "
            f"each repeat); the work split in force when tuned: {chosen}. The defaults are the split the kernels had "
            "before the autotune. A ratio whose two ranges overlap is no measurable change." + (f" {args.note}" if args.note else ""))
    write_section(f"engine_vs_hf_autotune_{args.device}", title, body, cmd, data)


def _row(name: str, requests: int, tokens: int, t_hf: list[float], t_engine: list[float]) -> list[object]:
    """A table row: medians of tok/s and of the per-repeat speedups, and the speedups' min-max."""
    ratios = [h / e for h, e in zip(t_hf, t_engine, strict=True)]
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    return [name, requests, tokens / statistics.median(t_hf), tokens / statistics.median(t_engine), statistics.median(ratios), spread]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="qwen3_moe", choices=ARCHS)
    ap.add_argument("--quick", action="store_true", help="small model and workloads (smoke test)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs per workload; medians and the ratio's min-max are reported")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--note", default="", help="a sentence added to the docs section (e.g. how loaded the machine was)")
    ap.add_argument("--autotune-ab", action="store_true",
                    help="CPU: the engine with its kernels' default work split vs the autotuned one (no transformers)")
    args = ap.parse_args()
    if args.autotune_ab:
        _main_ab(args)
        return
    import transformers

    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        num_params = build_checkpoint(Path(tmp), args.quick, args.arch)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype).to(args.device).eval()
        llm = LLM(tmp, device=args.device, dtype=args.dtype, kv_cache_memory_gb=2.0)
        rows, data = [], {}
        for name, (prompts, new) in workloads(args.quick).items():
            run_engine(llm, prompts[:1], 2)  # warm-up both
            run_hf(hf, prompts[:1], 2)
            t_engine, t_hf = [], []
            for _ in range(args.repeats):  # alternate the two: noise hits both alike
                llm.core.scheduler.radix.reset()  # type: ignore[union-attr]  # no cache carried between runs
                t_engine.append(run_engine(llm, prompts, new))
                t_hf.append(run_hf(hf, prompts, new))
            rows.append(_row(name, len(prompts), len(prompts) * new, t_hf, t_engine))
            data[name] = {"requests": len(prompts), "new_tokens": len(prompts) * new, "hf_s": t_hf, "engine_s": t_engine,
                          "speedup_median": rows[-1][4]}
    cols = ["workload", "requests", "transformers tok/s", "engine tok/s", "speedup", "speedup min-max"]
    family = "" if args.arch == "qwen3_moe" else f"{args.arch}, "
    title = f"engine vs transformers ({family}{num_params / 1e6:.1f}M params, {args.dtype}, {args.device})"
    print_table(title, cols, rows)
    if not args.no_write:
        arch = "" if args.arch == "qwen3_moe" else f" --arch {args.arch}"
        cmd = f"python benchmarks/engine_vs_hf.py{arch}" + (" --quick" if args.quick else "") + f" --dtype {args.dtype} --device {args.device} --repeats {args.repeats}"
        targets = ("Targets: >= 1.5x at decode-b1, >= 3x at decode-b16, >= 8x on shared-prefix (time to finish all). "
                   f"Medians of {args.repeats} alternating runs per side; min-max: the per-run speedups."
                   + (" Quick mode: hidden 256, 2 layers, 16 new tokens, an 8 x 272-token shared prefix." if args.quick else "")
                   + (f" {args.note}" if args.note else ""))
        section = f"engine_vs_hf_{args.device}" if args.arch == "qwen3_moe" else f"engine_vs_hf_{args.arch}_{args.device}"
        write_section(section, title, markdown_table(cols, rows) + "\n\n" + targets, cmd, data)


def _main_ab(args: argparse.Namespace) -> None:
    loads = {k: v for k, v in workloads(args.quick).items() if k != "shared-prefix"}
    with tempfile.TemporaryDirectory() as tmp:
        num_params = build_checkpoint(Path(tmp), args.quick, args.arch)
        llm = LLM(tmp, device="cpu", dtype=args.dtype, kv_cache_memory_gb=2.0)
        rows, data = autotune_ab(llm, loads, args.repeats)
    title = f"CPU kernels: autotuned vs default work split ({args.arch}, {num_params / 1e6:.1f}M params, {args.dtype})"
    _write_ab(args, title, rows, data)


if __name__ == "__main__":
    main()
