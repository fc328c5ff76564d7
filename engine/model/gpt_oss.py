"""GptOssForCausalLM: the shared decoder with gpt-oss's attention and MoE.

* Attention: biased q/k/v/o projections, one learned sink logit per query head (it joins the
  softmax denominator), and sliding-window attention on the layers `layer_types` marks
  "sliding_attention" (a token sees its last `sliding_window` keys); YaRN RoPE (config).
* MoE: a biased router whose top-k logits are softmaxed; experts with biases and the clamped
  SwiGLU: gate <= limit, -limit <= up <= limit, out = (up + 1) * gate * sigmoid(alpha * gate).
  Checkpoints interleave gate and up rows (gate = even rows); loading reorders them to this
  engine's layout (gate rows, then up rows): for MXFP4 experts (`*_blocks`/`*_scales`) by permuting
  packed rows, so the experts stay packed and never exist in bf16.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from engine.errors import ModelLoadError
from engine.kernels.activation import ClampedGlu
from engine.kernels.fp4 import FP4Tensor
from engine.kernels.triton import triton_available
from engine.model.attention import AttentionMetadata
from engine.model.config import ModelConfig
from engine.model.layers import Attention, DecoderLayer, MoE, Rotary
from engine.model.paged_attention import attend_window, paged_attention
from engine.model.qwen3_moe import MoEForCausalLM
from engine.moe.quantized import QuantizedExperts
from engine.moe.reference import moe_experts_glu


class SinkAttention(Attention):
    """GQA attention with per-head sinks and this layer's sliding window (0 = full)."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.window = cfg.window(layer)
        self.sinks = nn.Parameter(torch.zeros(cfg.num_heads))

    def forward(
        self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
    ) -> torch.Tensor:
        q = self.project(x, cos_sin, kv, meta)
        o = paged_attention(q, kv[0], kv[1], meta, self.scale, window=self.window, sinks=self.sinks)
        return self.o_proj(o.flatten(1))

    def forward_dense(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        q, k, v = self._qkv(x, rotary.tables(torch.arange(x.shape[1], device=x.device)))  # [B, S, H*, D]
        o = torch.stack([attend_window(q[b], k[b], v[b], self.scale, 0, self.window, self.sinks) for b in range(x.shape[0])])
        return self.o_proj(o.flatten(2))


class GptOssMoE(MoE):
    """Top-k experts with biases and the clamped SwiGLU (engine/kernels/activation.py); CPU serving runs
    them in the C MoE kernels (dense or FP4 panels, `expert_glu`), CUDA in the Triton fused MoE,
    anything else in the torch twin."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate = nn.Linear(h, e, bias=True)
        self.b13 = nn.Parameter(torch.empty(e, 2 * i))
        self.b2 = nn.Parameter(torch.empty(e, h))
        self.limit, self.alpha = cfg.swiglu_limit, cfg.swiglu_alpha
        self.renormalize = True  # softmax over the top-k logits (= softmax over all, top-k, renormalised)

    def expert_glu(self) -> ClampedGlu:
        return ClampedGlu(self.b13, self.b2, self.limit, self.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, ids = self.route(flat)
        if self.cpu_experts is not None:  # CPU serving: the whole layer in one C call
            return self.cpu_experts.run(flat, weights, ids).view(x.shape)
        q: QuantizedExperts | None = self.quantized
        if flat.is_cuda and not torch.is_grad_enabled() and triton_available():  # GPU serving: two grouped GEMMs, GLU in registers
            from engine.moe.triton_moe import fused_moe

            return fused_moe(flat, weights, ids, q if q is not None else (self.w13, self.w2), glu=self.expert_glu()).view(x.shape)
        if q is not None:
            return moe_experts_glu(flat, weights, ids, self.expert_glu(), lambda e: q.expert(e, torch.float32)).view(x.shape)
        return moe_experts_glu(flat, weights, ids, self.expert_glu(), lambda e: (self.w13[e], self.w2[e])).view(x.shape)


class GptOssDecoderLayer(DecoderLayer):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.attn = SinkAttention(cfg, layer)
        self.mlp = GptOssMoE(cfg)


class GptOssForCausalLM(MoEForCausalLM):
    layer_cls = GptOssDecoderLayer


_EXPERTS = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)(_bias)?$")


def targets(model: MoEForCausalLM, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF tensor name -> parameter view, for every tensor but the experts' (see `load_expert_tensor`)."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    t: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.embed.weight.data, "model.norm.weight": model.norm.weight.data}
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = model.lm_head.weight.data
    for i, layer_module in enumerate(model.layers):
        layer: Any = layer_module
        p, attn, mlp = f"model.layers.{i}.", layer.attn, layer.mlp
        t[p + "input_layernorm.weight"] = layer.input_norm.weight.data
        t[p + "post_attention_layernorm.weight"] = layer.post_norm.weight.data
        for name, sl in (("q", slice(0, q)), ("k", slice(q, q + kv)), ("v", slice(q + kv, q + 2 * kv))):
            t[p + f"self_attn.{name}_proj.weight"] = attn.qkv_proj.weight.data[sl]
            t[p + f"self_attn.{name}_proj.bias"] = attn.qkv_proj.bias.data[sl]
        t[p + "self_attn.o_proj.weight"] = attn.o_proj.weight.data
        t[p + "self_attn.o_proj.bias"] = attn.o_proj.bias.data
        t[p + "self_attn.sinks"] = attn.sinks.data
        t[p + "mlp.router.weight"] = mlp.gate.weight.data
        t[p + "mlp.router.bias"] = mlp.gate.bias.data
    return t


def expert_names(cfg: ModelConfig, packed: bool) -> set[str]:
    """The expert tensors a checkpoint must hold (dense, or MXFP4 blocks/scales; biases in both)."""
    kinds = ("_blocks", "_scales") if packed else ("",)
    return {f"model.layers.{i}.mlp.experts.{w}{k}" for i in range(cfg.num_layers) for w in ("gate_up_proj", "down_proj")
            for k in (*kinds, "_bias")}


def _deinterleave(rows: torch.Tensor, dim: int) -> torch.Tensor:
    """Interleaved gate/up rows along `dim` -> gate rows, then up rows."""
    n = rows.shape[dim]
    return torch.cat([rows.index_select(dim, torch.arange(s, n, 2, device=rows.device)) for s in (0, 1)], dim=dim)


def load_expert_tensor(model: MoEForCausalLM, name: str, src: torch.Tensor) -> bool:
    """Copy a dense expert tensor or bias (gpt-oss layout) into the model; False if not one."""
    m = _EXPERTS.match(name)
    if m is None:
        return False
    mlp: Any = model.layers[int(m.group(1))].mlp
    if m.group(3):  # bias
        dst, value = (mlp.b13, _deinterleave(src, 1)) if m.group(2) == "gate_up_proj" else (mlp.b2, src)
    elif m.group(2) == "gate_up_proj":  # [E, H, 2I] -> [E, 2I, H]
        dst, value = mlp.w13, _deinterleave(src.transpose(1, 2), 1)
    else:  # [E, I, H] -> [E, H, I]
        dst, value = mlp.w2, src.transpose(1, 2)
    if tuple(dst.shape) != tuple(value.shape):
        raise ModelLoadError(f"tensor {name}: expected shape {tuple(dst.shape)}, file has {tuple(src.shape)}")
    dst.data.copy_(value)
    return True


def deinterleave_fp4(experts: QuantizedExperts) -> QuantizedExperts:
    """Reorder a packed gate_up tensor's interleaved rows (a row permutation: stays packed, lossless)."""
    w = experts.w13
    ts = _deinterleave(w.tensor_scale, 1) if isinstance(w.tensor_scale, torch.Tensor) else w.tensor_scale
    w13 = FP4Tensor(_deinterleave(w.packed, 1).contiguous(), _deinterleave(w.scales, 1).contiguous(), ts, w.fmt, w.shape)
    return QuantizedExperts.from_fp4(w13, experts.w2)
