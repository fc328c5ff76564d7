"""Paged attention for a few new tokens per sequence (decode, speculative verification) in C.

Why: through torch, a sequence's context must first become one tensor (a `cat` of its block runs,
~1 MB per layer at 2k tokens) and then goes through SDPA or two strided `bmm`s; at decode sizes
that was 130-520 us per layer on the 2-core CI machine. This kernel reads K and V straight from
the cache blocks named by the block table, one (sequence, KV head) pair per work item (OpenMP),
with every query head of the group and every new token as a row: eight keys' dot products at a
time (8-wide FMAs reduced together), an online softmax per row (vectorised exp), and the
probability-weighted V rows summed in registers. Causality is per row: new token t of a sequence
with `ctx` tokens sees keys 0 .. ctx - q_len + t.

The torch path (`paged_attention.paged_attention_torch`) is the oracle (tests/engine/test_cpu_attention.py).
Built on first use by `engine.native`; without a C compiler `available()` is False.
"""

from __future__ import annotations

import ctypes

import torch

from engine import native
from engine.model.attention import AttentionMetadata

MAX_QUERY_LEN = 32  # new tokens per sequence up to which a step uses the kernel (larger: torch SDPA)

_SOURCE = native.SIMD_MATH + r"""
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#ifdef __AVX2__
/* The sums of eight vectors, as one vector (lane j = sum of v[j]). */
static inline __m256 hsum8(const __m256 *v) {
    __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
    __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
    t0 = _mm256_hadd_ps(t0, t1);
    t2 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20), _mm256_permute2f128_ps(t0, t2, 0x31));
}
#endif

/* One query row against n <= 64 keys of a block (rows of stride `stride` floats): online softmax
   update of the row's running max m, sum l and weighted sum acc [D]. */
static inline void row_block(const float *qr, const float *kb, const float *vb, int64_t stride, int64_t n, float scale,
                             float *m, float *l, float *acc, const int64_t D)
{
    float sc[64];
    int64_t j = 0;
#ifdef __AVX2__
    if (D % 8 == 0 && D <= 128) {
        for (; j + 8 <= n; j += 8) {
            __m256 part[8];
            for (int64_t u = 0; u < 8; u++) part[u] = _mm256_setzero_ps();
            for (int64_t d = 0; d < D; d += 8) {
                const __m256 qd = _mm256_loadu_ps(qr + d);
                for (int64_t u = 0; u < 8; u++) part[u] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kb + (j + u) * stride + d), part[u]);
            }
            _mm256_storeu_ps(sc + j, _mm256_mul_ps(hsum8(part), _mm256_set1_ps(scale)));
        }
    }
#endif
    for (; j < n; j++) {
        float a = 0.f;
        for (int64_t d = 0; d < D; d++) a += qr[d] * kb[j * stride + d];
        sc[j] = a * scale;
    }
    float mx = *m;
    for (j = 0; j < n; j++) mx = sc[j] > mx ? sc[j] : mx;
    const float alpha = *m == -INFINITY ? 0.f : expf(*m - mx);
    *m = mx;
    j = 0;
#ifdef __AVX2__
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(sc + j, exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), _mm256_set1_ps(mx))));
#endif
    for (; j < n; j++) sc[j] = expf(sc[j] - mx);
    float sum = 0.f;
    for (j = 0; j < n; j++) sum += sc[j];
    *l = *l * alpha + sum;
#ifdef __AVX2__
    if (D % 8 == 0 && D <= 128) {
        __m256 o[16];
        const __m256 al = _mm256_set1_ps(alpha);
        for (int64_t c = 0; c < D / 8; c++) o[c] = _mm256_mul_ps(_mm256_loadu_ps(acc + 8 * c), al);
        for (j = 0; j < n; j++) {
            const __m256 p = _mm256_set1_ps(sc[j]);
            const float *vr = vb + j * stride;
            for (int64_t c = 0; c < D / 8; c++) o[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8 * c), o[c]);
        }
        for (int64_t c = 0; c < D / 8; c++) _mm256_storeu_ps(acc + 8 * c, o[c]);
        return;
    }
#endif
    for (int64_t d = 0; d < D; d++) {
        float o = acc[d] * alpha;
        for (j = 0; j < n; j++) o += sc[j] * vb[j * stride + d];
        acc[d] = o;
    }
}

/* q, out: [Tq, Hq, D]; sequence s owns rows cu_q[s] .. cu_q[s+1] and attends over its first
   ctx_lens[s] cached tokens, in blocks block_tables[s, :] (row stride max_blocks) of the caches
   k, v: [num_blocks, block_size <= 64, Hkv, D]. fp32 throughout. */
void paged_attention(const float *q, int64_t num_seqs, const int64_t *cu_q, const int64_t *ctx_lens,
                     const int64_t *block_tables, int64_t max_blocks, const float *k_cache, const float *v_cache,
                     int64_t block_size, int64_t Hq, int64_t Hkv, int64_t D, float scale, float *out, int64_t threads)
{
    const int64_t G = Hq / Hkv, stride = Hkv * D;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t item = 0; item < num_seqs * Hkv; item++) {
        const int64_t s = item / Hkv, h = item % Hkv;
        const int64_t q_len = cu_q[s + 1] - cu_q[s], ctx = ctx_lens[s];
        if (q_len <= 0) continue;
        const int64_t rows = q_len * G;
        float *acc = (float *)calloc((size_t)(rows * D + 2 * rows), sizeof(float));
        float *m = acc + rows * D, *l = m + rows;
        for (int64_t r = 0; r < rows; r++) m[r] = -INFINITY;
        const int64_t *table = block_tables + s * max_blocks;
        const int64_t nblocks = (ctx + block_size - 1) / block_size;
        for (int64_t b = 0; b < nblocks; b++) {
            const int64_t key0 = b * block_size;
            const float *kb = k_cache + (table[b] * block_size * Hkv + h) * D;
            const float *vb = v_cache + (table[b] * block_size * Hkv + h) * D;
            for (int64_t r = 0; r < rows; r++) {
                const int64_t t = r / G, g = r % G;
                int64_t n = ctx - q_len + t + 1 - key0;  /* keys of this block row r may see */
                if (n <= 0) continue;
                if (n > block_size) n = block_size;
                const float *qr = q + ((cu_q[s] + t) * Hq + h * G + g) * D;
                if (D == 64) row_block(qr, kb, vb, stride, n, scale, m + r, l + r, acc + r * D, 64);
                else if (D == 128) row_block(qr, kb, vb, stride, n, scale, m + r, l + r, acc + r * D, 128);
                else row_block(qr, kb, vb, stride, n, scale, m + r, l + r, acc + r * D, D);
            }
        }
        for (int64_t r = 0; r < rows; r++) {
            const int64_t t = r / G, g = r % G;
            float *o = out + ((cu_q[s] + t) * Hq + h * G + g) * D;
            const float inv = 1.f / l[r];
            for (int64_t d = 0; d < D; d++) o[d] = acc[r * D + d] * inv;
        }
        free(acc);
    }
}
"""

_P, _I = native.PTR, native.I64
_SIGNATURES = (("paged_attention", (_P, _I, _P, _P, _P, _I, _P, _P, _I, _I, _I, _I, native.F32, _P, _I)),)


def _library() -> ctypes.CDLL | None:
    return native.build("paged_attention", _SOURCE, _SIGNATURES)


def available() -> bool:
    """Whether the compiled kernel can be used (builds it on the first call)."""
    return _library() is not None


def supports(q: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata) -> bool:
    """Whether this step's attention can run in the kernel: fp32 CPU tensors, contiguous caches,
    blocks of at most 64 tokens and at most MAX_QUERY_LEN new tokens per sequence."""
    return (
        q.device.type == "cpu" and q.dtype == torch.float32 and k_cache.dtype == torch.float32
        and k_cache.shape[1] <= 64 and meta.max_query_len <= MAX_QUERY_LEN and available()
    )


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """Causal attention of every new token over its sequence's cached context (its own K/V
    already written): q [num_tokens, Hq, D] -> [num_tokens, Hq, D]. Raises ValueError when
    `supports` does not hold or the caches are not contiguous."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the CPU paged attention kernel is not available (no C compiler?)")
    if not supports(q, k_cache, meta) or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("paged_attention (C) needs fp32 CPU tensors, contiguous caches, blocks <= 64 tokens "
                         f"and <= {MAX_QUERY_LEN} new tokens per sequence")
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if num_heads % num_kv_heads or k_cache.shape[3] != head_dim:
        raise ValueError(f"q heads {num_heads} x {head_dim} do not fit the cache's {num_kv_heads} x {k_cache.shape[3]}")
    qc = q.contiguous()
    out = torch.empty_like(qc)
    tables = meta.block_tables
    cu = meta.cu_query_lens_t
    if cu is None:
        raise ValueError("attention metadata built for another device (no cu_query_lens_t)")
    lib.paged_attention(qc.data_ptr(), meta.num_seqs, cu.data_ptr(), meta.context_lens_t.data_ptr(), tables.data_ptr(),
                        tables.shape[1], k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[1], num_heads, num_kv_heads,
                        head_dim, scale, out.data_ptr(), torch.get_num_threads())
    return out
