"""The Triton kernel behind engine/kernels/triton/varlen_attention.py (imported lazily: it imports
triton). Kept at module level: Triton resolves the names a kernel uses as module globals."""

# mypy: ignore-errors
import triton
import triton.language as tl


@triton.jit
def _varlen_paged_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, cu_ptr, sinks_ptr, out_ptr, scale, window,
                         stride_qt, stride_qh, stride_kslot, stride_kh, stride_tb, stride_ot, stride_oh,
                         BLOCK_SIZE: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                         HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr,
                         HAS_SINKS: tl.constexpr, FP32: tl.constexpr):
    seq = tl.program_id(0)
    tile = tl.program_id(1)
    kvh = tl.program_id(2)
    q_lo = tl.load(cu_ptr + seq)
    q_len = tl.load(cu_ptr + seq + 1) - q_lo
    ctx = tl.load(lens_ptr + seq)
    rows = tl.arange(0, BLOCK_M * GROUP_PAD)  # row = (query token of the tile, head of the group)
    tok = tile * BLOCK_M + rows // GROUP_PAD
    head = rows % GROUP_PAD
    rmask = (tok < q_len) & (head < GROUP)
    pos = ctx - q_len + tl.minimum(tok, q_len - 1)  # absolute position of each row's token (causal limit)
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + (q_lo + tok)[:, None] * stride_qt + (kvh * GROUP + head)[:, None] * stride_qh + d[None, :],
                mask=rmask[:, None], other=0.0)
    if FP32:
        q = q.to(tl.float32)
    if HAS_SINKS:  # a sink is one more logit per head in the softmax's denominator, with no value
        m = tl.load(sinks_ptr + kvh * GROUP + head, mask=head < GROUP, other=0.0).to(tl.float32)
        l_sum = tl.full((BLOCK_M * GROUP_PAD,), 1.0, dtype=tl.float32)
    else:
        m = tl.full((BLOCK_M * GROUP_PAD,), float("-inf"), dtype=tl.float32)
        l_sum = tl.zeros((BLOCK_M * GROUP_PAD,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M * GROUP_PAD, HEAD_DIM), dtype=tl.float32)
    first = ctx - q_len + tile * BLOCK_M  # position of the tile's first token
    hi = tl.minimum(ctx, first + BLOCK_M)  # keys past the tile's last token are masked for every row
    hi = tl.where(tile * BLOCK_M < q_len, hi, 0)  # a tile past this sequence's rows reads nothing
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(0, first - window + 1)
    offs = tl.arange(0, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        t = start + offs
        tmask = t < hi
        block = tl.load(tables_ptr + seq * stride_tb + t // BLOCK_SIZE, mask=tmask, other=0)
        kv_off = (block * BLOCK_SIZE + t % BLOCK_SIZE)[:, None] * stride_kslot + kvh * stride_kh + d[None, :]
        k = tl.load(k_ptr + kv_off, mask=tmask[:, None], other=0.0)  # [BLOCK_N, D], shared by the group's heads
        v = tl.load(v_ptr + kv_off, mask=tmask[:, None], other=0.0)
        if FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        if FP32:  # IEEE fp32 products (not tf32): an fp32 cache on a GPU matches the CPU engine
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # [rows, BLOCK_N]
        else:
            s = tl.dot(q, tl.trans(k)) * scale
        visible = tmask[None, :] & (t[None, :] <= pos[:, None])
        if HAS_WINDOW:
            visible = visible & (t[None, :] > pos[:, None] - window)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
        alpha = tl.exp(m - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        if FP32:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    out = acc / tl.where(l_sum == 0.0, 1.0, l_sum)[:, None]
    tl.store(out_ptr + (q_lo + tok)[:, None] * stride_ot + (kvh * GROUP + head)[:, None] * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=rmask[:, None])
