"""A stack of dense decoder layers (Qwen3 / Llama) in one C call on the CPU serving path.

Why: the per-layer path calls the C kernels one by one from Python (RMSNorm, the qkv projection,
the attention prologue, paged attention, the output projection, RMSNorm, the MLP) with two torch
adds between them: about eight ctypes calls and a dozen torch ops per layer. At a decode batch of
16 on the benchmark's 6-layer model that glue measured ~20% of a step's CPU time (profile in
docs/benchmarks.md). `decoder.c` runs the same kernels in the same order on the same buffers for
every layer in one call, so a step's hidden states are bitwise those of the per-layer path, which
stays as this path's oracle (tests/engine/test_cpu_decoder.py) and as the path for everything this
one does not cover (sliding windows, sinks, MoE layers, bf16, autograd).

`DecoderStack` holds, per layer, the addresses of the packed weights (their owners keep them
alive); the caller passes this step's activations, rotary rows, KV cache and attention metadata.
Built on first use by `kernels.cpu.native`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.kernels.cpu import attention as cpu_attention
from engine.kernels.cpu import linear as cpu_linear
from engine.kernels.cpu import native
from engine.kernels.cpu.attention import PagedBatch

_P, _I, _F = native.PTR, native.I64, native.F32
_SIGNATURES = (
    ("decoder_layers", (_P, _I, _I, _I, _P, _P, _I, _I, _I, _I, _I, _F, _F, _F, _P, _P, _P, _P, _I, _I, _P, _I, _P, _P, _P,
                        _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _I), _I),
)
_KERNELS = native.Kernels("decoder", _SIGNATURES)


def available() -> bool:
    """Whether the compiled kernel can be used (builds it on the first call)."""
    return _KERNELS.available()


@dataclass(frozen=True, slots=True)
class LayerWeights:
    """One dense decoder layer as the kernels hold it (fp32 norms and biases; packed panels)."""

    input_norm: torch.Tensor  # [H]
    qkv: torch.Tensor  # panels of the fused [Nqkv, H] projection (cpu_linear.pack)
    qkv_bias: torch.Tensor | None  # [Nqkv]
    q_norm: torch.Tensor | None  # [D] (Qwen3's per-head norms; None: Llama)
    k_norm: torch.Tensor | None  # [D]
    o: torch.Tensor  # panels of [H, Hq D]
    o_bias: torch.Tensor | None  # [H]
    post_norm: torch.Tensor  # [H]
    w13: torch.Tensor  # one expert's gate/up panels (moe_dense.DenseExperts.w13)
    w2: torch.Tensor  # its down panels


class DecoderStack:
    """Every layer of a dense decoder; `run` is the forward of all of them over one step.

    Raises ValueError when the layers do not share one shape or a tensor is not a contiguous
    fp32 CPU tensor (panels: fp32 or bf16)."""

    def __init__(self, layers: list[LayerWeights], hidden: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 inter_padded: int, eps: float, head_eps: float, scale: float) -> None:
        if not layers:
            raise ValueError("a decoder stack needs at least one layer")
        self.hidden, self.num_heads, self.num_kv_heads, self.head_dim = hidden, num_heads, num_kv_heads, head_dim
        self.qkv_width = (num_heads + 2 * num_kv_heads) * head_dim
        self.inter_padded, self.eps, self.head_eps, self.scale = inter_padded, eps, head_eps, scale
        rows: list[int] = []
        for i, w in enumerate(layers):
            self._check(i, w)
            rows += [_addr(t) for t in (w.input_norm, w.qkv, w.qkv_bias, w.q_norm, w.k_norm, w.o, w.o_bias, w.post_norm, w.w13, w.w2)]
        self.layers = layers  # keeps every tensor whose address is in `ptrs` alive
        self.ptrs = torch.tensor(rows, dtype=torch.int64)
        self.bf16 = torch.tensor([[int(t.dtype == torch.bfloat16) for t in (w.qkv, w.o, w.w13)] for w in layers], dtype=torch.int64)
        self._ones = torch.ones(0)
        self._zeros = torch.zeros(0, dtype=torch.int64)

    def _check(self, i: int, w: LayerWeights) -> None:
        h, d = self.hidden, self.head_dim
        shapes: dict[str, tuple[torch.Tensor | None, tuple[int, ...]]] = {"input_norm": (w.input_norm, (h,)), "post_norm": (w.post_norm, (h,)), "qkv_bias": (w.qkv_bias, (self.qkv_width,)),
                  "o_bias": (w.o_bias, (h,)), "q_norm": (w.q_norm, (d,)), "k_norm": (w.k_norm, (d,))}
        for name, (t, shape) in shapes.items():
            if t is not None and (t.shape != shape or t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu"):
                raise ValueError(f"layer {i}: {name} must be a contiguous fp32 CPU {list(shape)}, got {tuple(t.shape)} {t.dtype}")
        panels: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {"qkv": (w.qkv, (-(-self.qkv_width // 16), h, 16)), "o": (w.o, (-(-h // 16), self.num_heads * d, 16)),
                  "w13": (w.w13, (1, self.inter_padded // 8, h, 16)), "w2": (w.w2, (1, -(-h // 16), self.inter_padded, 16))}
        for name, (t, shape) in panels.items():
            if t.shape != shape or t.dtype not in (torch.float32, torch.bfloat16) or not t.is_contiguous() or t.device.type != "cpu":
                raise ValueError(f"layer {i}: {name} panels must be contiguous fp32/bf16 CPU {list(shape)}, got {tuple(t.shape)} {t.dtype}")

    def supports(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: PagedBatch) -> bool:
        """Whether this step can run here: fp32 CPU activations without autograd, contiguous fp32
        caches [num_layers, num_blocks, block_size, Hkv, D] of this stack's layout, and a step the
        C attention kernel takes (as `cpu_attention.supports`)."""
        return (
            x.dtype == torch.float32 and x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad)
            and x.dim() == 2 and x.shape[1] == self.hidden and k_cache.is_contiguous() and v_cache.is_contiguous()
            and v_cache.shape == k_cache.shape and v_cache.dtype == k_cache.dtype
            and k_cache.dim() == 5 and k_cache.shape[-2:] == (self.num_kv_heads, self.head_dim)
            and k_cache.shape[0] >= len(self.layers) and k_cache.dtype == torch.float32 and k_cache.shape[2] <= 64
            and (meta.max_query_len <= cpu_attention.MAX_QUERY_LEN or cpu_attention.tiled_supported(self.head_dim))
            and available()
        )

    def run(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            meta: PagedBatch, slots: torch.Tensor) -> torch.Tensor:
        """All layers over one step: x [T, H] -> [T, H]. cos/sin: this step's rotary rows [T, D] (any
        view of that shape); caches [num_layers, num_blocks, block_size, Hkv, D]; `slots` [T] int64:
        the new tokens' KV slots. Raises ValueError for a slot outside the cache or a step the
        attention kernel refuses (check `supports` first)."""
        lib = _KERNELS.require()
        t, h = x.shape
        xc = x.contiguous()
        cos, sin = cos.reshape(t, self.head_dim).contiguous(), sin.reshape(t, self.head_dim).contiguous()
        if self._ones.shape[0] < t:
            self._ones, self._zeros = torch.ones(t), torch.zeros(t, dtype=torch.int64)
        scratch = torch.empty(t * (6 * h + self.qkv_width + 2 * self.num_heads * self.head_dim + self.inter_padded))
        iscratch = torch.empty(2 * t + 4, dtype=torch.int64)
        out = torch.empty(t, h)
        cu = meta.cu_query_lens_t
        if cu is None:
            raise ValueError("attention metadata built for another device (no cu_query_lens_t)")
        tables = meta.block_tables
        status = lib.decoder_layers(
            xc.data_ptr(), t, h, len(self.layers), self.ptrs.data_ptr(), self.bf16.data_ptr(), self.qkv_width, self.num_heads,
            self.num_kv_heads, self.head_dim, self.inter_padded, self.eps, self.head_eps, self.scale, cos.data_ptr(), sin.data_ptr(),
            k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0), k_cache[0].numel() // (self.num_kv_heads * self.head_dim),
            slots.data_ptr(), meta.num_seqs, cu.data_ptr(), meta.context_lens_t.data_ptr(), tables.data_ptr(), tables.shape[1],
            k_cache.shape[2], cpu_attention.TILED_MIN_ROWS, cpu_linear._KERNELS.tune, cpu_attention._KERNELS.tune,
            scratch.data_ptr(), iscratch.data_ptr(), self._ones.data_ptr(), self._zeros.data_ptr(), out.data_ptr(), torch.get_num_threads())
        if status == -1:
            raise ValueError(f"KV slots must be in [0, {k_cache[0].numel() // (self.num_kv_heads * self.head_dim)})")
        if status != 0:
            raise ValueError("the C attention kernel does not take this step (check supports() first)")
        return out


def _addr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()

