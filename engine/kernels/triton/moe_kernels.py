"""The Triton kernels behind engine/moe/triton_moe.py (imported lazily: it imports triton).

Kept at module level because Triton resolves helper @jit functions as module globals.

WFMT selects the expert weight format: 0 dense (bf16/fp16/fp32 [E, R, K], any strides),
1 NVFP4, 2 MXFP4 (packed [E, R, K/2] bytes, even element in the low nibble, plus block scales).
DOT_BF16 runs the tile products on bf16 operands with fp32 accumulation (tensor cores on a GPU);
otherwise fp32 operands with IEEE precision (exact enough for the interpreter tests).
Split-K: grid axis 2 splits the reduction dimension into k_split-long slices; each slice writes
its partial sums (fp32) at offset program_id(2) * stride_os and the caller adds them up.
"""

# mypy: ignore-errors
import triton
import triton.language as tl


@triton.jit
def _e2m1(code, BF16: tl.constexpr):
    """E2M1 codes (int32 0..15) -> values, built from their bits: a normal code (exponent field
    e >= 1, mantissa bit m) is 2^(e-1) (1 + m/2), i.e. fp32 bits ((e + 126) << 23) | (m << 22), or
    bf16 bits ((e + 126) << 7) | (m << 6); the subnormal codes 0 and 1 are 0 and 0.5. Every E2M1
    value is exact in bf16 (the BF16 variant: bf16 results, half the registers)."""
    mag = code & 7
    if BF16:
        bits = tl.where(mag < 2, mag * (126 << 7), (mag << 6) + (126 << 7)) | ((code & 8) << 12)
        return bits.to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        bits = tl.where(mag < 2, mag * (126 << 23), (mag << 22) + (126 << 23))
        val = bits.to(tl.float32, bitcast=True)
        return tl.where((code & 8) != 0, -val, val)


@triton.jit
def _scale(raw, IS_NVFP4: tl.constexpr):
    """Stored scale bytes (int32) -> fp32 block scales (before the second-level scale)."""
    if IS_NVFP4:  # FP8 E4M3: 1 sign, 4 exponent (bias 7), 3 mantissa bits; S.1111.111 is NaN
        exp = (raw >> 3) & 15
        man = (raw & 7).to(tl.float32)
        val = tl.where(exp == 0, man / 8.0 * 0.015625, (1.0 + man / 8.0) * tl.exp2((exp - 7).to(tl.float32)))
        val = tl.where((raw & 128) != 0, -val, val)
        val = tl.where((exp == 15) & ((raw & 7) == 7), float("nan"), val)
        return val
    else:  # E8M0: 2^(raw - 127); 255 is NaN
        return tl.where(raw == 255, float("nan"), tl.exp2((tl.minimum(raw, 254) - 127).to(tl.float32)))


@triton.jit
def _dequant_tile(w_ptr, s_ptr, rows, k0, K, stride_wr, stride_sr, BN: tl.constexpr,
                  BLOCK_K: tl.constexpr, FMT_BLOCK: tl.constexpr, IS_NVFP4: tl.constexpr, BF16: tl.constexpr):
    """Rows `rows` [BN] of a packed [R, K/2] weight, K elements k0..k0+BLOCK_K: the even
    elements [BN, BLOCK_K/2] (low nibbles) and the odd ones (high nibbles), times their block
    scales (the rows' second-level scales are applied to the accumulator by the caller).

    Bytes load as [BN, NB, FMT_BLOCK/2] (NB = BLOCK_K / FMT_BLOCK blocks), so each block's scale,
    decoded once, broadcasts over its bytes. K is a multiple of FMT_BLOCK, so a block is wholly in
    or out of range; out-of-range bytes and scales load as 0 and dequantise to 0. With BF16 the
    products are bf16 and exact (an E2M1 value has 2 significant bits, an E4M3 or E8M0 scale at
    most 4)."""
    NB: tl.constexpr = BLOCK_K // FMT_BLOCK
    HB: tl.constexpr = FMT_BLOCK // 2
    sblk = tl.arange(0, NB)
    smask = (k0 + sblk * FMT_BLOCK < K)[None, :]
    raw = tl.load(s_ptr + rows[:, None] * stride_sr + (k0 // FMT_BLOCK + sblk)[None, :], mask=smask, other=0).to(tl.int32)
    scale = _scale(raw, IS_NVFP4)
    if BF16:
        scale = scale.to(tl.bfloat16)
    scale = scale[:, :, None]  # [BN, NB, 1]
    offs = (k0 // 2 + sblk * HB)[None, :, None] + tl.arange(0, HB)[None, None, :]
    byte = tl.load(w_ptr + rows[:, None, None] * stride_wr + offs, mask=smask[:, :, None], other=0).to(tl.int32)
    lo = tl.reshape(_e2m1(byte & 15, BF16) * scale, (BN, BLOCK_K // 2))
    hi = tl.reshape(_e2m1(byte >> 4, BF16) * scale, (BN, BLOCK_K // 2))
    return lo, hi


@triton.jit
def _dot(a, b, acc, DOT_BF16: tl.constexpr, SWAP_AB: tl.constexpr):
    """acc + a @ b.T (a [M, K] activations, b [N, K] weights; acc [M, N]), or with SWAP_AB
    acc [N, M] + b @ a.T: the weight tile becomes the left operand, which a Hopper wgmma may take
    straight from registers (decode-sized M is then the narrow N side of the instruction)."""
    if DOT_BF16:
        a = a.to(tl.bfloat16)
        b = b.to(tl.bfloat16)
        if SWAP_AB:
            return tl.dot(b, tl.trans(a), acc)
        else:
            return tl.dot(a, tl.trans(b), acc)
    else:
        if SWAP_AB:
            return tl.dot(b, tl.trans(a), acc, input_precision="ieee")
        else:
            return tl.dot(a, tl.trans(b), acc, input_precision="ieee")


@triton.jit
def _matmul_rows(a_ptr, a_rows, a_valid, stride_am, w_ptr, s_ptr, wrows, K, k_lo, k_hi,
                 stride_wr, stride_wk, stride_sr, acc, BN: tl.constexpr,
                 BLOCK_K: tl.constexpr, FMT_BLOCK: tl.constexpr, WFMT: tl.constexpr, DOT_BF16: tl.constexpr,
                 SWAP_AB: tl.constexpr, BF16_DEQUANT: tl.constexpr):
    """acc + A[a_rows, k_lo:k_hi] @ W[wrows, k_lo:k_hi].T for one expert's weight W (dense, or
    packed FP4 without its per-row second-level scales); K bounds the masks, k_lo is a multiple of
    BLOCK_K (split-K: each program of a split owns one such slice of K)."""
    if WFMT == 0:
        offs_k = tl.arange(0, BLOCK_K)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            kk = k0 + offs_k
            kmask = kk < K
            a = tl.load(a_ptr + a_rows[:, None] * stride_am + kk[None, :], mask=a_valid[:, None] & kmask[None, :], other=0.0).to(tl.float32)
            w = tl.load(w_ptr + wrows[:, None] * stride_wr + kk[None, :] * stride_wk, mask=kmask[None, :], other=0.0).to(tl.float32)
            acc = _dot(a, w, acc, DOT_BF16, SWAP_AB)
    else:
        half = tl.arange(0, BLOCK_K // 2)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            kk = k0 + 2 * half
            am = a_valid[:, None] & (kk < K)[None, :]
            a_even = tl.load(a_ptr + a_rows[:, None] * stride_am + kk[None, :], mask=am, other=0.0).to(tl.float32)
            a_odd = tl.load(a_ptr + a_rows[:, None] * stride_am + (kk + 1)[None, :], mask=am, other=0.0).to(tl.float32)
            lo, hi = _dequant_tile(w_ptr, s_ptr, wrows, k0, K, stride_wr, stride_sr, BN, BLOCK_K, FMT_BLOCK, WFMT == 1, BF16_DEQUANT)
            acc = _dot(a_even, lo, acc, DOT_BF16, SWAP_AB)
            acc = _dot(a_odd, hi, acc, DOT_BF16, SWAP_AB)
    return acc


@triton.jit
def _row_block(sorted_ptr, block_expert_ptr, num_pairs, BLOCK_M: tl.constexpr):
    """This program's row block: its expert, row offsets, sorted pair ids and which are real."""
    pid_m = tl.program_id(0)
    expert = tl.load(block_expert_ptr + pid_m)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ptr + offs_m)
    return expert, offs_m, pair, pair < num_pairs


@triton.jit
def _k_slice(K, k_split):
    """This program's slice of the reduction dimension (program_id(2) is the split index)."""
    k_lo = tl.program_id(2) * k_split
    return k_lo, tl.minimum(K, k_lo + k_split)


@triton.jit
def _acc_init(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SWAP_AB: tl.constexpr):
    if SWAP_AB:
        return tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        return tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)


@triton.jit
def _acc_rows(acc, SWAP_AB: tl.constexpr):
    """The accumulator as [BLOCK_M, BLOCK_N] (rows = pairs)."""
    if SWAP_AB:
        return tl.trans(acc)
    else:
        return acc


@triton.jit
def _row_scaled(acc, rs_ptr, rows, WFMT: tl.constexpr, SWAP_AB: tl.constexpr):
    """The accumulator times the FP4 weight rows' second-level scales (dense weights have none)."""
    if WFMT == 0:
        return acc
    else:
        rs = tl.load(rs_ptr + rows)
        if SWAP_AB:
            return acc * rs[:, None]
        else:
            return acc * rs[None, :]


@triton.jit
def _activate(g, u, gb_ptr, ub_ptr, cols, cmask, limit, alpha, GLU: tl.constexpr):
    """g, u [BLOCK_M, BLOCK_N] gate/up sums -> SwiGLU, or (GLU) gpt-oss's biased clamped GLU:
    gate = min(g + gb[cols], limit), up = clamp(u + ub[cols], -limit, limit),
    (up + 1) * gate * sigmoid(alpha * gate)."""
    if GLU:
        g = tl.minimum(g + tl.load(gb_ptr + cols, mask=cmask, other=0.0)[None, :], limit)
        u = u + tl.load(ub_ptr + cols, mask=cmask, other=0.0)[None, :]
        u = tl.minimum(tl.maximum(u, -limit), limit)
        return (u + 1.0) * g / (1.0 + tl.exp(-alpha * g))
    else:
        return g / (1.0 + tl.exp(-g)) * u


@triton.jit
def _gate_up_kernel(x_ptr, w_ptr, s_ptr, rs_ptr, out_ptr, sorted_ptr, block_expert_ptr, num_padded_ptr, b13_ptr,
                    num_pairs, H, INTER, top_k, k_split, limit, alpha,
                    stride_xm, stride_we, stride_wr, stride_wk, stride_se, stride_sr, stride_os, stride_om,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    FMT_BLOCK: tl.constexpr, WFMT: tl.constexpr, DOT_BF16: tl.constexpr, SWAP_AB: tl.constexpr,
                    BF16_DEQUANT: tl.constexpr, SPLIT: tl.constexpr, GLU: tl.constexpr):
    if tl.program_id(0) * BLOCK_M >= tl.load(num_padded_ptr):
        return  # past the last padded block: the grid is sized for the worst case, with no host sync
    expert, offs_m, pair, valid = _row_block(sorted_ptr, block_expert_ptr, num_pairs, BLOCK_M)
    pid_n = tl.program_id(1)
    token = tl.where(valid, pair // top_k, 0)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # intermediate columns
    cmask = cols < INTER
    gate_rows = tl.where(cmask, cols, 0)
    up_rows = tl.where(cmask, cols + INTER, 0)
    w_e = w_ptr + expert * stride_we
    s_e = s_ptr + expert * stride_se
    k_lo, k_hi = _k_slice(H, k_split)
    acc_g = _matmul_rows(x_ptr, token, valid, stride_xm, w_e, s_e, gate_rows, H, k_lo, k_hi, stride_wr, stride_wk, stride_sr,
                         _acc_init(BLOCK_M, BLOCK_N, SWAP_AB), BLOCK_N, BLOCK_K, FMT_BLOCK, WFMT, DOT_BF16, SWAP_AB, BF16_DEQUANT)
    acc_u = _matmul_rows(x_ptr, token, valid, stride_xm, w_e, s_e, up_rows, H, k_lo, k_hi, stride_wr, stride_wk, stride_sr,
                         _acc_init(BLOCK_M, BLOCK_N, SWAP_AB), BLOCK_N, BLOCK_K, FMT_BLOCK, WFMT, DOT_BF16, SWAP_AB, BF16_DEQUANT)
    acc_g = _row_scaled(acc_g, rs_ptr + expert * 2 * INTER, gate_rows, WFMT, SWAP_AB)
    acc_u = _row_scaled(acc_u, rs_ptr + expert * 2 * INTER, up_rows, WFMT, SWAP_AB)
    if SPLIT:  # partial gate and up sums of this K slice, [split, row, 2I] fp32; the activation after the sum
        part = out_ptr + tl.program_id(2) * stride_os + offs_m[:, None] * stride_om + cols[None, :]
        tl.store(part, _acc_rows(acc_g, SWAP_AB), mask=cmask[None, :])
        tl.store(part + INTER, _acc_rows(acc_u, SWAP_AB), mask=cmask[None, :])
    else:
        b_e = b13_ptr + expert * 2 * INTER  # GLU only: this expert's gate biases, then its up biases
        act = _activate(_acc_rows(acc_g, SWAP_AB), _acc_rows(acc_u, SWAP_AB), b_e, b_e + INTER, cols, cmask, limit, alpha, GLU)
        tl.store(out_ptr + offs_m[:, None] * stride_om + cols[None, :], act.to(out_ptr.dtype.element_ty), mask=cmask[None, :])


@triton.jit
def _down_kernel(a_ptr, w_ptr, s_ptr, rs_ptr, out_ptr, sorted_ptr, block_expert_ptr, num_padded_ptr, topk_w_ptr, b2_ptr,
                 num_pairs, H, INTER, k_split,
                 stride_am, stride_we, stride_wr, stride_wk, stride_se, stride_sr, stride_os, stride_op,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 FMT_BLOCK: tl.constexpr, WFMT: tl.constexpr, DOT_BF16: tl.constexpr, SWAP_AB: tl.constexpr,
                 BF16_DEQUANT: tl.constexpr, SPLIT: tl.constexpr, GLU: tl.constexpr):
    if tl.program_id(0) * BLOCK_M >= tl.load(num_padded_ptr):
        return
    expert, offs_m, pair, valid = _row_block(sorted_ptr, block_expert_ptr, num_pairs, BLOCK_M)
    pid_n = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # hidden columns
    cmask = cols < H
    rows = tl.where(cmask, cols, 0)
    w_e = w_ptr + expert * stride_we
    s_e = s_ptr + expert * stride_se
    k_lo, k_hi = _k_slice(INTER, k_split)
    acc = _matmul_rows(a_ptr, offs_m, valid, stride_am, w_e, s_e, rows, INTER, k_lo, k_hi, stride_wr, stride_wk, stride_sr,
                       _acc_init(BLOCK_M, BLOCK_N, SWAP_AB), BLOCK_N, BLOCK_K, FMT_BLOCK, WFMT, DOT_BF16, SWAP_AB, BF16_DEQUANT)
    acc = _row_scaled(acc, rs_ptr + expert * H, rows, WFMT, SWAP_AB)
    weight = tl.load(topk_w_ptr + tl.where(valid, pair, 0), mask=valid, other=0.0).to(tl.float32)
    acc = _acc_rows(acc, SWAP_AB)
    if GLU:  # the expert's down bias, added once (by the first K slice)
        bias = tl.load(b2_ptr + expert * H + cols, mask=cmask, other=0.0)
        acc = acc + bias[None, :] * (tl.program_id(2) == 0).to(tl.float32)
    acc = acc * weight[:, None]
    tl.store(out_ptr + tl.program_id(2) * stride_os + tl.where(valid, pair, 0)[:, None] * stride_op + cols[None, :], acc, mask=valid[:, None] & cmask[None, :])
