"""Shared-prefix training computes the same suffix loss (and MTP loss) as a full forward."""

from __future__ import annotations

import torch

from engine.model.qwen3_moe import MoEForCausalLM
from engine.train.loop import default_model_config, init_weights
from engine.train.prefix import encode_prefix, suffix_loss


def tiny_model() -> MoEForCausalLM:
    cfg = default_model_config(256, 6)
    cfg.num_layers, cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts = 2, 32, 16, 4
    cfg.num_heads, cfg.num_kv_heads, cfg.head_dim = 2, 1, 16
    model = MoEForCausalLM(cfg)
    init_weights(model, 0)
    return model


def test_suffix_loss_after_a_cached_prefix_equals_the_full_sequences_suffix_loss() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    prefix = torch.randint(10, 250, (13,)).tolist()
    suffix = torch.randint(10, 250, (2, 9))
    mask = torch.ones_like(suffix)
    mask[1, 6:] = 0  # the second suffix is 6 tokens long, then padding
    base, mtp = suffix_loss(model, encode_prefix(model, prefix), suffix, mask, mtp_weight=0.3)
    assert mtp is not None
    ce1, ce2, n1, n2 = 0.0, 0.0, 0, 0
    for row, length in ((0, 9), (1, 6)):
        full = torch.tensor([prefix + suffix[row, :length].tolist()])
        pre = model.forward_dense(full, return_prenorm=True)
        logits = model.compute_logits(model.norm(pre[:, len(prefix):-1]))
        ce1 += torch.nn.functional.cross_entropy(logits[0], full[0, len(prefix) + 1:], reduction="sum").item()
        n1 += length - 1
        h2 = model.forward_mtp_dense(pre[:, :-2], full[:, 1:-1])  # MTP over the whole sequence
        l2 = model.compute_logits(h2[:, len(prefix) - 1:])
        ce2 += torch.nn.functional.cross_entropy(l2[0], full[0, len(prefix) + 1:], reduction="sum").item()
        n2 += length - 1
    assert abs(base.item() - ce1 / n1) < 1e-5
    assert abs(mtp.item() - ce2 / n2) < 1e-5


def test_gradients_reach_the_weights_but_not_through_the_cached_prefix() -> None:
    model = tiny_model()
    cache = encode_prefix(model, list(range(10, 30)))
    assert not any(k.requires_grad for kv in cache.layers for k in kv)
    base, mtp = suffix_loss(model, cache, torch.randint(10, 250, (2, 5)), torch.ones(2, 5, dtype=torch.long), mtp_weight=0.3)
    assert mtp is not None
    (base + mtp).backward()
    assert model.layers[0].attn.qkv_proj.weight.grad is not None
    assert model.mtp is not None and model.mtp.eh_proj.weight.grad is not None
