"""DeepseekV3ForCausalLM: multi-head latent attention (MLA) over a latent paged cache, and MoE with
shared experts and noaux_tc routing, on the shared decoder.

MLA: per token the cache holds only the latent `[normed c_kv (kv_lora_rank), rotated k_pe
(qk_rope_head_dim)]` (one "KV head" whose V is the first kv_lora_rank values of the same entry),
so KV bytes per token are the latent's. Attention runs absorbed: each head's no-RoPE query is
multiplied into the latent space by its slice of kv_b_proj (W_UK), scores are taken against the
latent entries (plus the RoPE part), the probability-weighted latents are mapped to values by
W_UV, then o_proj. The score q_nope . (W_UK c) equals (W_UK^T q_nope) . c, so this is the same
attention as the expanded form, read from kv_lora_rank + rope numbers per token. Prefill and
decode both use it (one code path; the paged kernels see an MQA with head_dim = the latent width).

Routing (noaux_tc): sigmoid scores; the choice adds `e_score_correction_bias`; experts are picked
top-k among the `topk_group` groups whose two best (biased) scores sum highest; the weights are
the unbiased scores, renormalised when norm_topk_prob, times routed_scaling_factor. Layers below
first_k_dense_replace have a dense MLP. YaRN comes from the config (engine/model/rope.py), with
the softmax scale multiplied by mscale(factor, mscale_all_dim)^2 as the reference does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from engine.model.attention import AttentionMetadata
from engine.model.config import ModelConfig
from engine.model.layers import DecoderLayer, DenseMLP, MoE, RMSNorm, Rotary, apply_rotary
from engine.model.paged_attention import attend_window, paged_attention
from engine.model.qwen3_moe import MoEForCausalLM


def _softmax_scale(cfg: ModelConfig) -> float:
    scale = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
    r = cfg.rope
    if r.rope_type != "default" and r.mscale_all_dim and r.factor > 1:
        m = 0.1 * r.mscale_all_dim * math.log(r.factor) + 1.0
        scale *= m * m
    return scale


class LatentAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        h, self.heads = cfg.hidden_size, cfg.num_heads
        self.dn, self.dp, self.dv, self.rank = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        qk = self.heads * (self.dn + self.dp)
        self.q_proj: nn.Module | None = None if cfg.q_lora_rank else nn.Linear(h, qk, bias=False)
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(h, cfg.q_lora_rank, bias=cfg.attention_bias)
            self.q_a_norm = RMSNorm(cfg.q_lora_rank, 1e-6)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, qk, bias=False)
        self.kv_a_proj = nn.Linear(h, self.rank + self.dp, bias=cfg.attention_bias)
        self.kv_a_norm = RMSNorm(self.rank, 1e-6)
        # kv_b_proj [H * (dn + dv), rank] kept as a plain weight: it is used split (W_UK, W_UV), never as a Linear
        self.kv_b = nn.Parameter(torch.empty(self.heads * (self.dn + self.dv), self.rank))
        self.o_proj = nn.Linear(self.heads * self.dv, h, bias=cfg.attention_bias)
        self.interleaved = cfg.rope_interleave
        self.scale = _softmax_scale(cfg)

    def _rope(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if self.interleaved:  # pairs (x0, x1), (x2, x3) ...: the same rotation after moving evens first
            x = torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)
        return apply_rotary(x, cos_sin)

    def _query_and_latent(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., T, hidden] -> absorbed queries [..., T, H, rank + dp], latents [..., T, rank + dp]."""
        q = self.q_proj(x) if self.q_proj is not None else self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        q_nope, q_pe = q.unflatten(-1, (self.heads, self.dn + self.dp)).split([self.dn, self.dp], dim=-1)
        c, k_pe = self.kv_a_proj(x).split([self.rank, self.dp], dim=-1)
        w_uk = self.kv_b.view(self.heads, self.dn + self.dv, self.rank)[:, : self.dn]  # [H, dn, rank]
        q_lat = torch.einsum("...hd,hdr->...hr", q_nope, w_uk)
        q_all = torch.cat([q_lat, self._rope(q_pe, cos_sin)], dim=-1)
        latent = torch.cat([self.kv_a_norm(c), self._rope(k_pe.unsqueeze(-2), cos_sin).squeeze(-2)], dim=-1)
        return q_all, latent

    def _output(self, o_lat: torch.Tensor) -> torch.Tensor:
        w_uv = self.kv_b.view(self.heads, self.dn + self.dv, self.rank)[:, self.dn :]  # [H, dv, rank]
        return self.o_proj(torch.einsum("...hr,hvr->...hv", o_lat, w_uv).flatten(-2))

    def forward(
        self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
    ) -> torch.Tensor:
        q, latent = self._query_and_latent(x, cos_sin)
        cache = kv[0]  # [num_blocks, block_size, 1, rank + dp]
        cache.view(-1, cache.shape[-1]).index_copy_(0, meta.slot_mapping, latent.to(cache.dtype))
        # MQA over the latents; the values are each entry's first `rank` numbers
        o = paged_attention(q.contiguous(), cache, cache, meta, self.scale)[..., : self.rank]
        return self._output(o)

    def forward_dense(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        q, latent = self._query_and_latent(x, rotary.tables(torch.arange(x.shape[1], device=x.device)))
        lat = latent.unsqueeze(-2)  # [B, S, 1, rank + dp]
        o = torch.stack([attend_window(q[b], lat[b], lat[b][..., : self.rank], self.scale, 0, 0, None) for b in range(x.shape[0])])
        return self._output(o)


def route_noaux_tc(logits: torch.Tensor, bias: torch.Tensor, top_k: int, n_group: int, topk_group: int,
                   renormalize: bool, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 routing: router logits [T, E] -> (weights [T, k] fp32, ids [T, k] int64)."""
    scores = logits.float().sigmoid()
    choice = scores + bias.float()
    t, e = choice.shape
    group_scores = choice.view(t, n_group, e // n_group).topk(2, dim=-1)[0].sum(-1)  # [T, n_group]
    groups = group_scores.topk(topk_group, dim=-1)[1]
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, groups, True)
    choice = choice.masked_fill(~keep.repeat_interleave(e // n_group, dim=1), float("-inf"))
    ids = choice.topk(top_k, dim=-1)[1]
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return weights * scaling, ids


class DeepseekMoE(MoE):
    """Routed experts (the shared MoE kernels) plus always-on shared experts."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.correction_bias = nn.Parameter(torch.zeros(cfg.num_experts), requires_grad=False)
        self.shared = DenseMLP(cfg, cfg.moe_intermediate_size * cfg.n_shared_experts) if cfg.n_shared_experts else None
        self.n_group, self.topk_group, self.scaling = cfg.n_group, cfg.topk_group, cfg.routed_scaling_factor

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return route_noaux_tc(self.gate(flat), self.correction_bias, self.top_k, self.n_group, self.topk_group,
                              self.renormalize, self.scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if self.shared is None else out + self.shared(x)


class DeepseekDecoderLayer(DecoderLayer):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.attn: Any = LatentAttention(cfg, layer)
        if cfg.is_sparse(layer) or layer >= cfg.num_layers:  # the MTP layer is a MoE layer
            self.mlp = DeepseekMoE(cfg)


class DeepseekV3ForCausalLM(MoEForCausalLM):
    layer_cls = DeepseekDecoderLayer
    attention_in_torch = True  # the absorbed latent projections are torch einsums


def _layer_targets(p: str, layer: Any, cfg: ModelConfig, sparse: bool, skip_experts: bool) -> dict[str, torch.Tensor]:
    a, mlp = layer.attn, layer.mlp
    t = {p + "input_layernorm.weight": layer.input_norm.weight.data, p + "post_attention_layernorm.weight": layer.post_norm.weight.data,
         p + "self_attn.kv_a_proj_with_mqa.weight": a.kv_a_proj.weight.data, p + "self_attn.kv_a_layernorm.weight": a.kv_a_norm.weight.data,
         p + "self_attn.kv_b_proj.weight": a.kv_b.data, p + "self_attn.o_proj.weight": a.o_proj.weight.data}
    if a.q_proj is not None:
        t[p + "self_attn.q_proj.weight"] = a.q_proj.weight.data
    else:
        t.update({p + "self_attn.q_a_proj.weight": a.q_a_proj.weight.data, p + "self_attn.q_a_layernorm.weight": a.q_a_norm.weight.data,
                  p + "self_attn.q_b_proj.weight": a.q_b_proj.weight.data})
    if cfg.attention_bias:
        for name, mod in (("q_a_proj", getattr(a, "q_a_proj", None)), ("kv_a_proj_with_mqa", a.kv_a_proj), ("o_proj", a.o_proj)):
            if mod is not None:
                t[p + f"self_attn.{name}.bias"] = mod.bias.data
    mlps = [(p + "mlp.", mlp)] if not sparse else ([(p + "mlp.shared_experts.", mlp.shared)] if mlp.shared is not None else [])
    for q, dense in mlps:
        inter = dense.w2.shape[1]
        t[q + "gate_proj.weight"], t[q + "up_proj.weight"] = dense.w13.data[:inter], dense.w13.data[inter:]
        t[q + "down_proj.weight"] = dense.w2.data
    if sparse:
        t[p + "mlp.gate.weight"] = mlp.gate.weight.data
        t[p + "mlp.gate.e_score_correction_bias"] = mlp.correction_bias.data
        inter = cfg.moe_intermediate_size
        for e in range(0 if skip_experts else cfg.num_experts):
            q = p + f"mlp.experts.{e}."
            t[q + "gate_proj.weight"], t[q + "up_proj.weight"] = mlp.w13.data[e, :inter], mlp.w13.data[e, inter:]
            t[q + "down_proj.weight"] = mlp.w2.data[e]
    return t


def targets(model: MoEForCausalLM, cfg: ModelConfig, skip_experts: bool = False) -> dict[str, torch.Tensor]:
    """HF tensor name -> parameter view. The MTP layer is `model.layers.{num_layers}.*` (its own
    decoder layer, enorm/hnorm/eh_proj and shared_head.norm; its embed_tokens and shared_head.head
    must equal the main ones, see TIED_MTP)."""
    t: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.embed.weight.data, "model.norm.weight": model.norm.weight.data}
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = model.lm_head.weight.data
    for i, layer in enumerate(model.layers):
        t.update(_layer_targets(f"model.layers.{i}.", layer, cfg, cfg.is_sparse(i), skip_experts))
    if model.mtp is not None:
        p, m = f"model.layers.{cfg.num_layers}.", model.mtp
        t.update(_layer_targets(p, m.layer, cfg, True, False))
        t.update({p + "enorm.weight": m.enorm.weight.data, p + "hnorm.weight": m.hnorm.weight.data,
                  p + "eh_proj.weight": m.eh_proj.weight.data, p + "shared_head.norm.weight": m.norm.weight.data})
    return t


TIED_MTP = ("embed_tokens.weight", "shared_head.head.weight")  # the MTP layer's copies of the shared embedding / LM head


def check_tied_mtp(model: MoEForCausalLM, cfg: ModelConfig, tied: dict[str, torch.Tensor]) -> None:
    """The MTP layer shares the model's embedding and LM head: its stored copies must be equal."""
    from engine.errors import ModelLoadError

    p = f"model.layers.{cfg.num_layers}."
    for suffix, mine in zip(TIED_MTP, (model.embed.weight, model.lm_head.weight), strict=True):
        src = tied.pop(p + suffix, None)
        if src is not None and not torch.equal(src.to(mine.dtype), mine.data):
            raise ModelLoadError(f"tensor {p + suffix} differs from the main model's; a separate MTP embedding/head is not supported")
    if tied:
        raise ModelLoadError(f"unknown tensor {sorted(tied)[0]}")
