"""The Triton kernel behind engine/kernels/triton/attention.py (imported lazily: it imports triton).
Kept at module level: Triton resolves the names a kernel uses as module globals."""

# mypy: ignore-errors
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, sinks_ptr, scale, window,
                         stride_qt, stride_qh, stride_kslot, stride_kh, stride_tb, stride_ot, stride_oh,
                         BLOCK_SIZE: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                         HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BF16_DOT: tl.constexpr, HAS_SINKS: tl.constexpr):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    rows = tl.arange(0, GROUP_PAD)
    rmask = rows < GROUP
    d = tl.arange(0, HEAD_DIM)
    heads = kvh * GROUP + rows
    q = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + d[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
    q = q * scale
    ctx = tl.load(lens_ptr + seq)
    m = tl.full((GROUP_PAD,), float("-inf"), dtype=tl.float32)
    l_sum = tl.zeros((GROUP_PAD,), dtype=tl.float32)
    acc = tl.zeros((GROUP_PAD, HEAD_DIM), dtype=tl.float32)
    offs = tl.arange(0, BLOCK_N)
    lo = tl.where(window > 0, tl.maximum(ctx - window, 0), 0)  # a sliding window: the last `window` keys
    for start in range((lo // BLOCK_N) * BLOCK_N, ctx, BLOCK_N):
        t = start + offs
        tmask = (t < ctx) & (t >= lo)
        block = tl.load(tables_ptr + seq * stride_tb + t // BLOCK_SIZE, mask=tmask, other=0)
        slot = block * BLOCK_SIZE + t % BLOCK_SIZE
        kv_off = slot[:, None] * stride_kslot + kvh * stride_kh + d[None, :]
        k = tl.load(k_ptr + kv_off, mask=tmask[:, None], other=0.0).to(tl.float32)  # [BLOCK_N, D]
        v = tl.load(v_ptr + kv_off, mask=tmask[:, None], other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # [GROUP_PAD, BLOCK_N]
        s = tl.where(tmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m = m_new
    if HAS_SINKS:  # per-head sink logits join the denominator (no value)
        sink = tl.load(sinks_ptr + heads, mask=rmask, other=0.0).to(tl.float32)
        m_fin = tl.maximum(m, sink)
        alpha = tl.exp(m - m_fin)
        l_sum = l_sum * alpha + tl.exp(sink - m_fin)
        acc = acc * alpha[:, None]
    out = acc / l_sum[:, None]
    tl.store(out_ptr + seq * stride_ot + heads[:, None] * stride_oh + d[None, :], out.to(out_ptr.dtype.element_ty), mask=rmask[:, None])
