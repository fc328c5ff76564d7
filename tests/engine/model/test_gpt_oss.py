"""gpt-oss: sinks, alternating sliding/full attention, YaRN, biases, the clamped SwiGLU and MXFP4
experts loaded packed; logits and greedy tokens equal transformers'."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine import LLM, SamplingParams
from engine.kernels.fp4 import quantize
from engine.model.loader import load_model
from engine.moe.quantized import QuantizedExperts

GREEDY = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)


def _prompts(n: int, seed: int, lo: int = 3, hi: int = 30) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 97, (int(k),), generator=g).tolist() for k in torch.randint(lo, hi, (n,), generator=g)]


def _llm(path: Path, **kw: object) -> LLM:
    opts: dict[str, object] = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)
    opts.update(kw)
    return LLM(path, **opts)  # type: ignore[arg-type]


def _hf_greedy(hf: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """transformers' argmax continuation (no EOS suppression, unlike generate's min_new_tokens)."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, hf(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt):].tolist()


def test_fp32_logits_match_transformers(tiny_gpt_oss: Path) -> None:
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_gpt_oss, dtype=torch.float32).eval()
    ours, cfg = load_model(tiny_gpt_oss)
    assert [cfg.window(i) for i in range(3)] == [5, 0, 5] and cfg.rope.rope_type == "yarn"
    ids = torch.tensor(_prompts(2, seed=4, lo=60, hi=61))  # past the window and YaRN's original 32
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.compute_logits(ours.forward_dense(ids))
    assert ref.abs().max() > 0.5  # not a degenerate model
    assert (ref - got).abs().max().item() <= 1e-4


def test_serving_greedy_equals_transformers_across_batching_chunking_and_prefix_hits(tiny_gpt_oss: Path) -> None:
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_gpt_oss, dtype=torch.float32).eval()
    shared = _prompts(1, seed=7, lo=14, hi=15)[0]
    prompts = [shared + tail for tail in _prompts(3, seed=3, lo=2, hi=9)] + _prompts(2, seed=5)
    refs = [_hf_greedy(hf, p, 20) for p in prompts]
    llm = _llm(tiny_gpt_oss, max_num_batched_tokens=8)  # chunked prefill
    first = llm.generate(prompts[:1], GREEDY)
    rest = llm.generate(prompts[1:], GREEDY)  # batched, shared-prefix cache hits
    assert [o.token_ids for o in first + rest] == refs
    assert sum(o.usage.cached_tokens for o in rest) >= 2 * 12


def _mxfp4_checkpoint(src: Path, dst: Path) -> dict[str, torch.Tensor]:
    """Rewrite a dense gpt-oss checkpoint with its experts in MXFP4 (`*_blocks`/`*_scales`, rows as
    the checkpoint has them: gate/up interleaved). Returns the dequantised expert weights in
    transformers' layout, for the reference model."""
    tensors = load_file(str(src / "model.safetensors"))
    dense: dict[str, torch.Tensor] = {}
    for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        rows = tensors.pop(name).transpose(1, 2).contiguous()  # [E, out, in]
        q = quantize(rows, "mxfp4")
        e, out, inp = rows.shape
        tensors[name + "_blocks"] = q.packed.reshape(e, out, inp // 32, 16).contiguous()
        tensors[name + "_scales"] = q.scales.contiguous()
        dense[name] = q.dequantize().transpose(1, 2).contiguous()
    dst.mkdir()
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4"}
    (dst / "config.json").write_text(json.dumps(config))
    return dense


def test_mxfp4_experts_load_packed_and_match_transformers_on_the_dequantised_weights(tiny_gpt_oss: Path, tmp_path: Path) -> None:
    import transformers

    dense = _mxfp4_checkpoint(tiny_gpt_oss, tmp_path / "mxfp4")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_gpt_oss, dtype=torch.float32).eval()
    hf.load_state_dict(dense, strict=False)
    ours, _ = load_model(tmp_path / "mxfp4")
    for layer in ours.layers:
        assert isinstance(layer.mlp.quantized, QuantizedExperts) and layer.mlp.w13.numel() == 0  # never dense
    ids = torch.tensor(_prompts(2, seed=9, lo=40, hi=41))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.compute_logits(ours.forward_dense(ids))
    assert (ref - got).abs().max().item() <= 1e-4
    prompt = _prompts(1, seed=2)[0]
    assert _llm(tmp_path / "mxfp4").generate([prompt], GREEDY)[0].token_ids == _hf_greedy(hf, prompt, 20)


