"""The small per-layer operations of the CPU path in C: RMSNorm, the attention prologue, routing.

Why: at decode-sized batches these are a few microseconds of arithmetic behind tens of
microseconds of torch dispatch each. An RMSNorm through `F.rms_norm` is five ops (~40 us for
16 x 512 values); the attention prologue (split q/k/v, two head norms, rotary on q and k, the KV
cache write) is about fifteen; top-k routing is four. Each is one C call here:
  rms_norm           y = x * rsqrt(mean(x^2) + eps) * w over the last dimension, fp32.
  attention_prologue from the fused qkv projection [T, (Hq + 2 Hkv) D]: q/k head RMSNorm (optional),
                     rotate-half RoPE with this step's cos/sin rows, k and v written to their cache
                     slots; returns q [T, Hq, D].
  route_topk         softmax over the experts, the k largest (ties: lower id first), optionally
                     renormalised; the same as `moe.routing.route`.
fp32 only (the CPU serving dtype); callers keep their torch code for everything else, and that
code is the oracle (tests/engine/test_cpu_ops.py). Built on first use by `kernels.cpu.native`.
"""

from __future__ import annotations

import torch

from engine.kernels.cpu import native

_P, _I = native.PTR, native.I64
_SIGNATURES = (
    ("rms_norm", (_P, _I, _I, _P, native.F32, _P, _I)),
    ("attention_prologue", (_P, _I, _I, _I, _I, _I, _P, _P, _P, _P, native.F32, _P, _P, _P, _I, _P, _I), _I),
    ("route_topk", (_P, _I, _I, _I, _I, _P, _P)),
)

MAX_HEAD_DIM = 512
MAX_EXPERTS = 1024


_KERNELS = native.Kernels("ops", _SIGNATURES)


def available() -> bool:
    """Whether the compiled kernels can be used (builds them on the first call)."""
    return _KERNELS.available()


def usable(*tensors: torch.Tensor) -> bool:
    """Whether these tensors can take the C path: CPU fp32, no autograd, and the kernels built."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and available()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of fp32 CPU `x` over its last dimension with fp32 `weight` -> a new tensor like x."""
    d = x.shape[-1]
    if weight.shape != (d,) or x.dtype != torch.float32 or weight.dtype != torch.float32:
        raise ValueError(f"rms_norm takes fp32 x [..., {d}] and weight [{d}], got {tuple(x.shape)} {x.dtype}, {tuple(weight.shape)} {weight.dtype}")
    xc, wc = x.contiguous(), weight.contiguous()
    y = torch.empty_like(xc)
    if xc.numel():
        _KERNELS.require().rms_norm(xc.data_ptr(), xc.numel() // d, d, wc.data_ptr(), eps, y.data_ptr(), torch.get_num_threads())
    return y


def attention_prologue(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, eps: float,
    k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, num_heads: int, num_kv_heads: int,
) -> torch.Tensor:
    """qkv [T, (Hq + 2 Hkv) D] -> q [T, Hq, D]; writes the normed, rotated k and v to `slots` of the
    layer's caches [num_blocks, block_size, Hkv, D]. cos/sin: [T, D] (any leading view of it)."""
    t, width = qkv.shape
    d = width // (num_heads + 2 * num_kv_heads)
    if d * (num_heads + 2 * num_kv_heads) != width or d % 2 or d > MAX_HEAD_DIM:
        raise ValueError(f"qkv width {width} does not split into {num_heads} + 2 x {num_kv_heads} heads of an even dim <= {MAX_HEAD_DIM}")
    cos, sin = cos.reshape(t, d).contiguous(), sin.reshape(t, d).contiguous()
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dtype != torch.float32 or not c.is_contiguous() or c.shape[-2:] != (num_kv_heads, d):
            raise ValueError(f"{name} must be a contiguous fp32 [..., {num_kv_heads}, {d}], got {tuple(c.shape)} {c.dtype}")
    slots = slots if slots.dtype == torch.int64 and slots.is_contiguous() else slots.to(torch.int64).contiguous()
    capacity = k_cache.numel() // (num_kv_heads * d)
    if slots.shape != (t,) or v_cache.numel() != k_cache.numel():
        raise ValueError(f"slots must be [{t}] and the caches alike")
    norms = [n.contiguous() if n is not None else None for n in (q_norm, k_norm)]
    if qkv.stride(1) != 1:
        qkv = qkv.contiguous()
    q = torch.empty(t, num_heads, d, dtype=torch.float32)
    if t and _KERNELS.require().attention_prologue(qkv.data_ptr(), t, qkv.stride(0), num_heads, num_kv_heads, d, cos.data_ptr(), sin.data_ptr(),
                                       *(None if n is None else n.data_ptr() for n in norms), eps, k_cache.data_ptr(),
                                       v_cache.data_ptr(), slots.data_ptr(), capacity, q.data_ptr(), torch.get_num_threads()):
        raise ValueError(f"slots must be in [0, {capacity})")
    return q


def route_topk(logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`moe.routing.route` in one call: logits [T, E] fp32 -> (weights [T, k] fp32, ids [T, k] int64)."""
    t, e = logits.shape
    if not 0 < top_k <= e or e > MAX_EXPERTS:
        raise ValueError(f"top_k must be in [1, {e}] with at most {MAX_EXPERTS} experts")
    lc = logits.float().contiguous()
    weights = torch.empty(t, top_k, dtype=torch.float32)
    ids = torch.empty(t, top_k, dtype=torch.int64)
    if t:
        _KERNELS.require().route_topk(lc.data_ptr(), t, e, top_k, int(renormalize), weights.data_ptr(), ids.data_ptr())
    return weights, ids
