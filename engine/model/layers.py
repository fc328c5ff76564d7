"""Building blocks: RMSNorm, rotary embeddings, GQA attention, MoE and dense SwiGLU MLPs.

Attention has two forwards: `forward` over the paged KV cache (serving) and `forward_dense` over
a whole [batch, seq] block with no cache (training and reference checks).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels.activation import ClampedGlu
from engine.kernels.cpu import decoder as cpu_decoder
from engine.kernels.cpu import fp4_panels as cpu_fp4_panels
from engine.kernels.cpu import linear as cpu_linear
from engine.kernels.cpu import moe_dense as cpu_dense
from engine.kernels.cpu import ops as cpu_ops
from engine.kernels.triton import triton_available
from engine.model.attention import AttentionMetadata
from engine.model.config import ModelConfig
from engine.model.paged_attention import paged_attention, write_kv
from engine.model.rope import RopeScaling
from engine.moe.reference import moe_experts, swiglu
from engine.moe.routing import route


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Computed in fp32 like the reference implementations, then cast back before the scale.
        if cpu_ops.usable(x, self.weight):
            return cpu_ops.rms_norm(x, self.weight, self.eps)  # CPU serving: one C call
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one fused op
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Rotary(nn.Module):
    """RoPE with the rotate-half convention; cos/sin tables in fp32 [max_pos, head_dim], scaled as
    `scaling` says (engine/model/rope.py: linear, llama3, yarn; None = plain RoPE with `theta`)."""

    def __init__(self, head_dim: int, max_pos: int, theta: float, scaling: RopeScaling | None = None) -> None:
        super().__init__()
        inv_freq, mscale = (scaling or RopeScaling(theta=theta)).frequencies(head_dim)
        freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)  # [max_pos, head_dim]
        self.register_buffer("cos", emb.cos() * mscale, persistent=False)
        self.register_buffer("sin", emb.sin() * mscale, persistent=False)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for `positions` [num_tokens], shaped [num_tokens, 1, head_dim] (fp32)."""
        cos: torch.Tensor = self.cos  # type: ignore[assignment]
        sin: torch.Tensor = self.sin  # type: ignore[assignment]
        return cos[positions].unsqueeze(-2), sin[positions].unsqueeze(-2)


def apply_rotary(x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x [..., num_tokens, heads, head_dim] rotated by the precomputed tables (rotate-half)."""
    cos, sin = cos_sin
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=cfg.attention_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.scale = cfg.head_dim**-0.5

    def _qkv(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.unflatten(-1, (self.num_heads, self.head_dim))  # [..., T, Hq, D]
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim))  # [..., T, Hkv, D]
        v = v.unflatten(-1, (self.num_kv_heads, self.head_dim))
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        # Rotate q and k heads together: one set of rotary ops instead of two.
        qk = apply_rotary(torch.cat([q, k], dim=-2), cos_sin)
        return qk[..., : self.num_heads, :], qk[..., self.num_heads :, :], v

    def forward(
        self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
    ) -> torch.Tensor:
        q = self.project(x, cos_sin, kv, meta)
        o = paged_attention(q, kv[0], kv[1], meta, self.scale)  # [T, Hq, D]
        return self.o_proj(o.flatten(1))

    def project(
        self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
    ) -> torch.Tensor:
        """The new tokens' rotated queries [T, Hq, D]; their keys and values go into the cache."""
        if cpu_ops.usable(x, kv[0]):  # CPU serving: split, head norms, rotary and the KV write in one C call
            q_w = self.q_norm.weight if self.q_norm is not None else None
            k_w = self.k_norm.weight if self.k_norm is not None else None
            eps = self.q_norm.eps if self.q_norm is not None else 0.0
            q = cpu_ops.attention_prologue(self.qkv_proj(x), *cos_sin, q_w, k_w, eps, kv[0], kv[1], meta.slot_mapping,
                                           self.num_heads, self.num_kv_heads)
        else:
            q, k, v = self._qkv(x, cos_sin)
            write_kv(kv[0], kv[1], k, v, meta.slot_mapping)
        return q

    def forward_dense(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self._qkv(x, rotary.tables(positions))  # [B, S, H*, D]
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=self.scale, enable_gqa=True
        )
        return self.o_proj(o.transpose(1, 2).flatten(2))


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate = nn.Linear(h, e, bias=False)
        self.w13 = nn.Parameter(torch.empty(e, 2 * i, h))  # [E, 2I, H]: gate rows then up rows
        self.w2 = nn.Parameter(torch.empty(e, h, i))  # [E, H, I]
        self.top_k, self.renormalize = cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.packable = True  # prepare_for_inference may pack w13/w2 into the C kernels' layout
        self.quantized: Any = None  # engine.moe.quantized.QuantizedExperts when experts are FP4
        # CPU serving's packed experts (w13/w2, or `quantized`, freed): cpu_dense.DenseExperts, or
        # cpu_fp4_panels.FP4PanelExperts for FP4 experts on AVX-512; `.run(x, weights, ids)`.
        self.cpu_experts: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [T, H]
        weights, ids = self.route(flat)
        if flat.is_cuda and not torch.is_grad_enabled() and triton_available():
            from engine.moe.triton_moe import fused_moe  # GPU serving: two fused grouped GEMMs, no host sync

            experts = self.quantized if self.quantized is not None else (self.w13, self.w2)
            return fused_moe(flat, weights, ids, experts).view(shape)
        if self.cpu_experts is not None:  # CPU serving: the whole layer in one C call
            return self.cpu_experts.run(flat, weights, ids).view(shape)
        if self.quantized is not None:
            from engine.moe.quantized import moe_experts_fp4

            return moe_experts_fp4(flat, weights, ids, self.quantized).view(shape)
        return moe_experts(flat, weights, ids, self.w13, self.w2).view(shape)

    def expert_glu(self) -> ClampedGlu | None:
        """The experts' biases and clamped GLU (gpt-oss), or None for plain SwiGLU experts."""
        return None

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router: tokens [T, H] -> (weights [T, k] fp32, expert ids [T, k] int64)."""
        logits = self.gate(flat)
        if self.cpu_experts is not None and cpu_ops.usable(logits):
            return cpu_ops.route_topk(logits, self.top_k, self.renormalize)
        return route(logits, self.top_k, self.renormalize)


class DenseMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, intermediate_size: int | None = None) -> None:
        super().__init__()
        inter = cfg.intermediate_size if intermediate_size is None else intermediate_size
        self.w13 = nn.Parameter(torch.empty(2 * inter, cfg.hidden_size))
        self.w2 = nn.Parameter(torch.empty(cfg.hidden_size, inter))
        self.cpu_experts: Any = None  # CPU serving: packed as one always-routed expert (w13/w2 freed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_experts is not None:
            flat = x.reshape(-1, x.shape[-1])
            weights, expert = torch.ones(flat.shape[0], 1), torch.zeros(flat.shape[0], 1, dtype=torch.long)
            return self.cpu_experts.run(flat, weights, expert).view(x.shape)
        return swiglu(x, self.w13, self.w2)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer)
        self.post_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp: nn.Module = MoE(cfg) if cfg.is_sparse(layer) else DenseMLP(cfg)

    def forward(
        self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
    ) -> torch.Tensor:
        h = x + self.attn(self.input_norm(x), cos_sin, kv, meta)
        return h + self.mlp(self.post_norm(h))

    def forward_dense(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        h = x + self.attn.forward_dense(self.input_norm(x), rotary)
        return h + self.mlp(self.post_norm(h))


def dense_stack(layers: nn.ModuleList) -> cpu_decoder.DecoderStack | None:
    """The C kernels' one-call form of `layers` (see kernels/cpu/decoder.py) when every layer is a
    plain dense `DecoderLayer` packed for CPU serving (PackedLinear projections, a DenseMLP packed as
    one expert, fp32 norms) and all share one shape, else None: the layers then run one by one."""
    if not len(layers) or not cpu_decoder.available():
        return None
    weights: list[cpu_decoder.LayerWeights] = []
    shapes = set()
    for layer in layers:
        found = _dense_layer(layer)
        if found is None:
            return None
        weights.append(found[0])
        shapes.add(found[1])
    if len(shapes) != 1:
        return None
    try:
        return cpu_decoder.DecoderStack(weights, *shapes.pop())
    except ValueError:  # a layout the one-call kernel does not take (e.g. non-contiguous norm weights)
        return None


def _dense_layer(layer: nn.Module) -> tuple[cpu_decoder.LayerWeights, tuple[int, int, int, int, int, float, float, float]] | None:
    """A packed dense layer's weights and its shape (hidden, heads, KV heads, head dim, padded
    intermediate size, norm eps, head-norm eps, attention scale), or None."""
    if type(layer) is not DecoderLayer or type(layer.attn) is not Attention or type(layer.mlp) is not DenseMLP:
        return None
    attn, experts = layer.attn, layer.mlp.cpu_experts
    if not (isinstance(attn.qkv_proj, cpu_linear.PackedLinear) and isinstance(attn.o_proj, cpu_linear.PackedLinear)
            and isinstance(experts, cpu_dense.DenseExperts) and experts.glu is None and experts.num_experts == 1
            and layer.input_norm.eps == layer.post_norm.eps):
        return None
    norms = [layer.input_norm.weight, layer.post_norm.weight] + [n.weight for n in (attn.q_norm, attn.k_norm) if n is not None]
    if any(w.dtype != torch.float32 for w in norms):
        return None
    q_w = None if attn.q_norm is None else attn.q_norm.weight.detach()
    k_w = None if attn.k_norm is None else attn.k_norm.weight.detach()
    weights = cpu_decoder.LayerWeights(layer.input_norm.weight.detach(), attn.qkv_proj.panels, attn.qkv_proj.bias, q_w, k_w,
                                       attn.o_proj.panels, attn.o_proj.bias, layer.post_norm.weight.detach(), experts.w13, experts.w2)
    head_eps = attn.q_norm.eps if attn.q_norm is not None else 0.0
    return weights, (experts.hidden, attn.num_heads, attn.num_kv_heads, attn.head_dim, experts.inter_padded,
                     layer.input_norm.eps, head_eps, attn.scale)


def prepare_for_inference(model: nn.Module) -> int:
    """CPU serving layout; inference only afterwards (no autograd through the packed weights).

    With the C kernels (a C compiler present): every `nn.Linear` becomes a `cpu_linear.PackedLinear`
    and every MoE/dense MLP gets `cpu_dense.DenseExperts`, their weights packed once into 16-column
    panels (bf16 when lossless, else fp32) and the original tensors freed, so each weight exists
    once. FP4 experts become `cpu_fp4_panels.FP4PanelExperts` where that kernel runs (AVX-512; the
    packed `quantized` tensors are freed), else they keep `quantized` and its kernels. Embeddings
    keep their rows (a tied LM head gets its own panels). A model with a `cpu_stack` attribute whose
    `layers` are all dense gets them as one `dense_stack` call per step. Without a compiler the
    matmul weights are stored column-major instead: the same logical tensors, transposed in memory,
    so `F.linear`/`bmm` run as plain (NN) products, which this CPU BLAS does faster at decode-sized
    batches. Returns the number of weights converted."""
    converted = 0
    if cpu_linear.available():
        for module in list(model.modules()):
            for name, child in module.named_children():
                if type(child) is nn.Linear:
                    setattr(module, name, cpu_linear.PackedLinear(child))
                    converted += 1
            if isinstance(module, MoE) and not module.packable:
                continue
            if isinstance(module, MoE) and module.quantized is not None and cpu_fp4_panels.available():
                module.cpu_experts = cpu_fp4_panels.FP4PanelExperts(module.quantized, module.expert_glu())
                module.quantized = None
                converted += 2
                continue
            if isinstance(module, MoE) and module.quantized is None and module.w13.numel():
                module.cpu_experts = cpu_dense.DenseExperts(module.w13, module.w2, module.expert_glu())
            elif isinstance(module, DenseMLP) and module.w13.numel():
                module.cpu_experts = cpu_dense.DenseExperts(module.w13[None], module.w2[None])
            else:
                continue
            module.w13 = nn.Parameter(torch.empty(0), requires_grad=False)
            module.w2 = nn.Parameter(torch.empty(0), requires_grad=False)
            converted += 2
        layers = getattr(model, "layers", None)
        if isinstance(layers, nn.ModuleList) and hasattr(model, "cpu_stack"):
            model.cpu_stack = dense_stack(layers)  # type: ignore[assignment]
        return converted
    for module in model.modules():
        names: tuple[str, ...]
        if isinstance(module, nn.Linear):
            names = ("weight",)
        elif isinstance(module, DenseMLP) or (isinstance(module, MoE) and module.packable):
            names = ("w13", "w2")
        else:
            continue
        for name in names:
            w = getattr(module, name)
            if w.dim() < 2 or w.numel() == 0:
                continue
            setattr(module, name, nn.Parameter(w.detach().transpose(-1, -2).contiguous().transpose(-1, -2), requires_grad=False))
            converted += 1
    return converted
