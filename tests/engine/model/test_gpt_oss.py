"""gpt-oss: sinks, alternating sliding/full attention, YaRN, biases, the clamped SwiGLU and MXFP4
experts loaded packed; logits and greedy tokens equal transformers'."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tiny_models import assert_serving_equals_transformers, cpu_llm, hf_greedy, random_prompts

from engine import SamplingParams
from engine.kernels.fp4 import quantize
from engine.model.loader import load_model
from engine.moe.quantized import QuantizedExperts

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def test_fp32_logits_match_transformers(tiny_gpt_oss: Path) -> None:
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_gpt_oss, dtype=torch.float32).eval()
    ours, cfg = load_model(tiny_gpt_oss)
    assert [cfg.window(i) for i in range(3)] == [5, 0, 5] and cfg.rope.rope_type == "yarn"
    ids = torch.tensor(random_prompts(2, seed=4, lo=60, hi=61))  # past the window and YaRN's original 32
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.compute_logits(ours.forward_dense(ids))
    assert ref.abs().max() > 0.5  # not a degenerate model
    assert (ref - got).abs().max().item() <= 1e-4


def test_serving_greedy_equals_transformers_across_batching_chunking_and_prefix_hits(tiny_gpt_oss: Path) -> None:
    assert_serving_equals_transformers(tiny_gpt_oss)


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
    ids = torch.tensor(random_prompts(2, seed=9, lo=40, hi=41))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.compute_logits(ours.forward_dense(ids))
    assert (ref - got).abs().max().item() <= 1e-4
    prompt = random_prompts(1, seed=2)[0]
    assert cpu_llm(tmp_path / "mxfp4").generate([prompt], GREEDY)[0].token_ids == hf_greedy(hf, prompt, 12)


