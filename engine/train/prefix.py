"""Training with a shared prefix: the system turn's KV computed once per step, suffixes trained on it.

Every airline conversation opens with the same ~1.75k-token system turn (the policy and the tool
list). Training on whole conversations spends most of its compute on that turn again and again, and
a 2-core CPU cannot afford it. Here the prefix's keys and values are computed once per step under
`no_grad` with the current weights, and a batch of suffixes (the conversations after the system turn)
is trained attending to them at their true positions (P, P+1, ...). The suffix tokens' loss and
gradients are exactly those of the full sequence's suffix positions; what is lost is the gradient
through the prefix's own activations (the model still learns how to *read* the prefix, not how to
*encode* it), which fine-tuning a model that already encodes the policy can give up.
`tests/engine/train/test_prefix.py` checks the equality with a full forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from engine.model.qwen3_moe import MoEForCausalLM

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass(slots=True)
class PrefixCache:
    """The prefix's per-layer K/V [1, P, Hkv, D] (and the MTP layer's over positions 0..P-2) and
    its last pre-norm hidden state [1, 1, H] (the MTP input at position P-1)."""

    length: int
    layers: list[KV]
    mtp: KV | None
    last_prenorm: torch.Tensor


def _attend(layer: Any, x: torch.Tensor, start: int, prefix: KV | None, rotary: Any) -> tuple[torch.Tensor, KV]:
    """One decoder layer over x [B, S, H] at positions start.., attending to `prefix` first."""
    attn = layer.attn
    batch, length = x.shape[:2]
    positions = torch.arange(start, start + length, device=x.device)
    q, k, v = attn._qkv(layer.input_norm(x), rotary.tables(positions))
    keys, values, mask = k, v, None
    if prefix is not None and prefix[0].shape[1]:
        pk, pv = (t.expand(batch, -1, -1, -1) for t in prefix)
        keys, values = torch.cat([pk, k], dim=1), torch.cat([pv, v], dim=1)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        mask = torch.cat([torch.ones(length, pk.shape[1], dtype=torch.bool, device=x.device), causal], dim=1)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), attn_mask=mask,
                                       is_causal=mask is None, scale=attn.scale, enable_gqa=True)
    h = x + attn.o_proj(o.transpose(1, 2).flatten(2))
    return h + layer.mlp(layer.post_norm(h)), (k, v)


def _stack(model: MoEForCausalLM, ids: torch.Tensor, start: int, prefix: list[KV] | None) -> tuple[torch.Tensor, list[KV]]:
    x, kvs = model.embed(ids), []
    for i, layer in enumerate(model.layers):
        x, kv = _attend(layer, x, start, None if prefix is None else prefix[i], model.rotary)
        kvs.append(kv)
    return x, kvs


def _mtp(model: MoEForCausalLM, prenorm: torch.Tensor, next_ids: torch.Tensor, start: int, prefix: KV | None) -> tuple[torch.Tensor, KV]:
    m = model.mtp
    assert m is not None
    h = torch.cat([m.enorm(model.embed(next_ids)), m.hnorm(prenorm)], dim=-1)
    x, kv = _attend(m.layer, m.eh_proj(h), start, prefix, model.rotary)
    return m.norm(x), kv


@torch.no_grad()
def encode_prefix(model: MoEForCausalLM, prefix_ids: list[int]) -> PrefixCache:
    """The prefix's KV with the model's current weights (no autograd)."""
    ids = torch.tensor([prefix_ids])
    pre, kvs = _stack(model, ids, 0, None)
    mtp_kv = _mtp(model, pre[:, :-1], ids[:, 1:], 0, None)[1] if model.mtp is not None else None
    return PrefixCache(len(prefix_ids), kvs, mtp_kv, pre[:, -1:])


def suffix_loss(model: MoEForCausalLM, cache: PrefixCache, suffix: torch.Tensor, mask: torch.Tensor,
                mtp_weight: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next-token (and MTP t+2) cross-entropy of `suffix` [B, S] following the cached prefix.

    `mask` [B, S] marks real tokens (1) and padding (0); a target counts when it is real."""
    p = cache.length
    pre, _ = _stack(model, suffix, p, cache.layers)
    keep = mask[:, 1:].bool()  # logits only where the target is a real token (the LM head dominates the cost)
    base = _ce(model.compute_logits(model.norm(pre[:, :-1][keep])), suffix[:, 1:][keep])
    if model.mtp is None or mtp_weight == 0.0 or cache.mtp is None:
        return base, None
    # MTP at position t reads pre-norm hidden t and token t+1 and predicts t+2, for t = P-1 .. P+S-3.
    hidden = torch.cat([cache.last_prenorm.expand(suffix.shape[0], -1, -1), pre[:, :-2]], dim=1)
    h2, _ = _mtp(model, hidden, suffix[:, :-1], p - 1, cache.mtp)
    return base, _ce(model.compute_logits(h2[keep]), suffix[:, 1:][keep])


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets) if targets.numel() else logits.sum() * 0.0
