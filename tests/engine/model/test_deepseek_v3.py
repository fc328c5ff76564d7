"""DeepSeek-V3: MLA over a latent paged cache, noaux_tc routing, shared experts, dense first layers,
YaRN; logits and greedy tokens equal transformers'; the checkpoint's MTP layer drives lossless
speculation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import assert_serving_equals_transformers, cpu_llm, make_deepseek, random_prompts

from engine import SamplingParams
from engine.model.loader import load_model

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.mark.parametrize("q_lora_rank", [16, None])
def test_fp32_logits_match_transformers(q_lora_rank: int | None, tmp_path: Path) -> None:
    hf = make_deepseek(q_lora_rank)
    hf.save_pretrained(tmp_path)
    ours, cfg = load_model(tmp_path)
    assert (cfg.num_kv_heads, cfg.head_dim, cfg.kv_dims) == (1, 28, (28, 0))  # the latent: rank 20 + rope 8
    assert [cfg.is_sparse(i) for i in range(3)] == [False, True, True]
    ids = torch.tensor(random_prompts(2, seed=4, lo=50, hi=51))  # past YaRN's original 32 positions
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.compute_logits(ours.forward_dense(ids))
    assert ref.abs().max() > 0.5
    assert (ref - got).abs().max().item() <= 1e-4


def test_serving_greedy_equals_transformers_and_the_cache_holds_only_latents(tiny_deepseek: Path) -> None:
    llm = assert_serving_equals_transformers(tiny_deepseek)
    assert llm.core.kv_bytes_per_token == 3 * (20 + 8) * 4  # layers x latent width x fp32
    assert llm.core.runner.kv_cache.v.numel() == 0


def _with_mtp(src: Path, dst: Path, seed: int = 5) -> None:
    """Add a DeepSeek-layout MTP layer (model.layers.3.*: a decoder layer, enorm/hnorm/eh_proj,
    shared_head; embed_tokens / shared_head.head copies of the main ones) to a checkpoint."""
    donor = make_deepseek(seed=seed, num_hidden_layers=4).state_dict()
    tensors = load_file(str(src / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    for name, t in donor.items():
        if name.startswith("model.layers.3."):
            tensors[name] = t.contiguous()
    tensors["model.layers.3.enorm.weight"] = 1 + 0.1 * torch.randn(48, generator=g)
    tensors["model.layers.3.hnorm.weight"] = 1 + 0.1 * torch.randn(48, generator=g)
    tensors["model.layers.3.eh_proj.weight"] = 0.1 * torch.randn(48, 96, generator=g)
    tensors["model.layers.3.shared_head.norm.weight"] = torch.ones(48)
    tensors["model.layers.3.embed_tokens.weight"] = tensors["model.embed_tokens.weight"].clone()
    tensors["model.layers.3.shared_head.head.weight"] = tensors["lm_head.weight"].clone()
    dst.mkdir()
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())


def test_checkpoint_mtp_layer_loads_and_speculation_is_lossless(tiny_deepseek: Path, tmp_path: Path) -> None:
    _with_mtp(tiny_deepseek, tmp_path / "mtp")
    assert json.loads((tmp_path / "mtp" / "config.json").read_text())["num_nextn_predict_layers"] == 1
    model, cfg = load_model(tmp_path / "mtp")
    assert cfg.mtp_num_layers == 1 and model.mtp is not None
    prompts = random_prompts(3, seed=8, lo=5, hi=20)
    plain = [o.token_ids for o in cpu_llm(tmp_path / "mtp").generate(prompts, GREEDY)]
    spec = cpu_llm(tmp_path / "mtp", speculative="mtp", num_speculative_tokens=1)
    assert [o.token_ids for o in spec.generate(prompts, GREEDY)] == plain


def test_a_separate_mtp_head_is_refused(tiny_deepseek: Path, tmp_path: Path) -> None:
    from engine.errors import ModelLoadError

    _with_mtp(tiny_deepseek, tmp_path / "mtp")
    tensors = load_file(str(tmp_path / "mtp" / "model.safetensors"))
    tensors["model.layers.3.shared_head.head.weight"] += 1.0
    save_file(tensors, str(tmp_path / "mtp" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="shared_head.head"):
        load_model(tmp_path / "mtp")


