"""The Triton kernels behind engine/moe/triton_moe.py (imported lazily: it imports triton).

Kept at module level because Triton resolves helper @jit functions as module globals.
"""

# mypy: ignore-errors
import triton
import triton.language as tl


@triton.jit
def _e2m1(code):
    """E2M1 codes (int32 0..15) -> fp32 values."""
    mag = code & 7
    e = mag >> 1
    m = (mag & 1).to(tl.float32)
    val = tl.where(e == 0, m * 0.5, (1.0 + m * 0.5) * tl.exp2((e - 1).to(tl.float32)))
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
def _dequant_tile(w_ptr, s_ptr, row_scale, rows, k0, K, stride_wr, stride_sr,
                  BLOCK_K: tl.constexpr, FMT_BLOCK: tl.constexpr, IS_NVFP4: tl.constexpr):
    """Rows `rows` [BN] of a packed [R, K/2] weight, K elements k0..k0+BLOCK_K: the even
    elements [BN, BLOCK_K/2] (low nibbles) and the odd ones (high nibbles), scaled by their
    block scales and the rows' second-level scales `row_scale` [BN]."""
    half = tl.arange(0, BLOCK_K // 2)
    kk = k0 + 2 * half  # the even element of each byte
    kmask = kk < K
    byte = tl.load(w_ptr + rows[:, None] * stride_wr + (kk // 2)[None, :], mask=kmask[None, :], other=0).to(tl.int32)
    raw = tl.load(s_ptr + rows[:, None] * stride_sr + (kk // FMT_BLOCK)[None, :], mask=kmask[None, :], other=0).to(tl.int32)
    scale = _scale(raw, IS_NVFP4) * row_scale[:, None]
    lo = tl.where(kmask[None, :], _e2m1(byte & 15) * scale, 0.0)
    hi = tl.where(kmask[None, :], _e2m1((byte >> 4) & 15) * scale, 0.0)
    return lo, hi


@triton.jit
def _row_block(sorted_ptr, block_expert_ptr, num_pairs, BLOCK_M: tl.constexpr):
    """This program's row block: its expert, row offsets, sorted pair ids and which are real."""
    pid_m = tl.program_id(0)
    expert = tl.load(block_expert_ptr + pid_m)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ptr + offs_m)
    return expert, offs_m, pair, pair < num_pairs


@triton.jit
def _gate_up_kernel(x_ptr, w_ptr, s_ptr, rs_ptr, out_ptr, sorted_ptr, block_expert_ptr,
                    num_pairs, H, INTER, top_k,
                    stride_xm, stride_we, stride_wr, stride_se, stride_sr, stride_om,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    FMT_BLOCK: tl.constexpr, IS_NVFP4: tl.constexpr):
    expert, offs_m, pair, valid = _row_block(sorted_ptr, block_expert_ptr, num_pairs, BLOCK_M)
    pid_n = tl.program_id(1)
    token = tl.where(valid, pair // top_k, 0)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # intermediate columns
    cmask = cols < INTER
    gate_rows = tl.where(cmask, cols, 0)
    up_rows = tl.where(cmask, cols + INTER, 0)
    w_e = w_ptr + expert * stride_we
    s_e = s_ptr + expert * stride_se
    gate_rs = tl.load(rs_ptr + expert * 2 * INTER + gate_rows)
    up_rs = tl.load(rs_ptr + expert * 2 * INTER + up_rows)
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    half = tl.arange(0, BLOCK_K // 2)
    for k0 in range(0, H, BLOCK_K):
        kk = k0 + 2 * half
        kmask = kk < H
        xm = valid[:, None] & kmask[None, :]
        x_even = tl.load(x_ptr + token[:, None] * stride_xm + kk[None, :], mask=xm, other=0.0).to(tl.float32)
        x_odd = tl.load(x_ptr + token[:, None] * stride_xm + (kk + 1)[None, :], mask=xm, other=0.0).to(tl.float32)
        g_lo, g_hi = _dequant_tile(w_e, s_e, gate_rs, gate_rows, k0, H, stride_wr, stride_sr, BLOCK_K, FMT_BLOCK, IS_NVFP4)
        u_lo, u_hi = _dequant_tile(w_e, s_e, up_rs, up_rows, k0, H, stride_wr, stride_sr, BLOCK_K, FMT_BLOCK, IS_NVFP4)
        acc_g += tl.dot(x_even, tl.trans(g_lo), input_precision="ieee") + tl.dot(x_odd, tl.trans(g_hi), input_precision="ieee")
        acc_u += tl.dot(x_even, tl.trans(u_lo), input_precision="ieee") + tl.dot(x_odd, tl.trans(u_hi), input_precision="ieee")
    act = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u  # SwiGLU in registers
    tl.store(out_ptr + offs_m[:, None] * stride_om + cols[None, :], act, mask=cmask[None, :])


@triton.jit
def _down_kernel(a_ptr, w_ptr, s_ptr, rs_ptr, out_ptr, sorted_ptr, block_expert_ptr, topk_w_ptr,
                 num_pairs, H, INTER,
                 stride_am, stride_we, stride_wr, stride_se, stride_sr, stride_op,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 FMT_BLOCK: tl.constexpr, IS_NVFP4: tl.constexpr):
    expert, offs_m, pair, valid = _row_block(sorted_ptr, block_expert_ptr, num_pairs, BLOCK_M)
    pid_n = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # hidden columns
    cmask = cols < H
    rows = tl.where(cmask, cols, 0)
    w_e = w_ptr + expert * stride_we
    s_e = s_ptr + expert * stride_se
    rs = tl.load(rs_ptr + expert * H + rows)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    half = tl.arange(0, BLOCK_K // 2)
    for k0 in range(0, INTER, BLOCK_K):
        kk = k0 + 2 * half
        kmask = kk < INTER
        am = valid[:, None] & kmask[None, :]
        a_even = tl.load(a_ptr + offs_m[:, None] * stride_am + kk[None, :], mask=am, other=0.0)
        a_odd = tl.load(a_ptr + offs_m[:, None] * stride_am + (kk + 1)[None, :], mask=am, other=0.0)
        lo, hi = _dequant_tile(w_e, s_e, rs, rows, k0, INTER, stride_wr, stride_sr, BLOCK_K, FMT_BLOCK, IS_NVFP4)
        acc += tl.dot(a_even, tl.trans(lo), input_precision="ieee") + tl.dot(a_odd, tl.trans(hi), input_precision="ieee")
    weight = tl.load(topk_w_ptr + tl.where(valid, pair, 0), mask=valid, other=0.0).to(tl.float32)
    acc = acc * weight[:, None]
    tl.store(out_ptr + tl.where(valid, pair, 0)[:, None] * stride_op + cols[None, :], acc, mask=valid[:, None] & cmask[None, :])
