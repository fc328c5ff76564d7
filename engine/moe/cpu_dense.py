"""A whole dense MoE layer for a few tokens in one C call (the CPU decode and verification path).

Why: at decode-sized batches a MoE layer through torch is a dozen small ops per active expert
(index, two matmuls, SwiGLU, scale, scatter-add), and their fixed costs exceed the arithmetic:
on the embedded model a layer took ~280 us for one token and ~1.2 ms for 17 (a speculative
verification step), mostly dispatch, while its weights stream from memory in a fraction of that.
This kernel walks each routed expert's tokens in chunks of up to 16 rows: gate/up rows dotted
with every row at once (8-wide FMAs, two partial sums per row), SwiGLU, down projection and the
router-weighted add, so each routed expert's weights are read once per chunk.

Weights stay row-major, in fp32 or, when that is lossless (checkpoints shipped in bf16, like the
embedded model), as bf16 bits that the kernel widens in registers (a 16-bit shift): half the bytes
to stream, the same numbers. `moe/reference.moe_experts` is the oracle (tests/engine/moe/test_cpu_dense.py).
Built on first use by `engine.native`; without a C compiler `available()` is False.
"""

from __future__ import annotations

import ctypes

import torch

from engine import native

MAX_ROWS = 16  # activation rows per matmul call (the accumulators of one row of weights)
MAX_MOE_TOKENS = 32  # tokens per layer up to which the kernel beats torch's padded batched matmuls (measured)

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

static inline float wval(const void *w, int bf16, int64_t i) {
    if (!bf16) return ((const float *)w)[i];
    uint32_t b = (uint32_t)((const uint16_t *)w)[i] << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

#ifdef __AVX2__
static inline __m256 wload(const void *w, int bf16, int64_t i) {
    if (!bf16) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float hsum(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}
#endif

/* y[m, n] = sum_k x[m, k] * W[n, k] for m < M <= 16. x: [M, K] fp32 row-major; W: [N, K] rows of
   stride ldw elements, fp32 (bf16 = 0) or bf16 bits (bf16 = 1); y: [M, N] fp32. */
void dense_matmul(const float *x, int64_t M, int64_t K, const void *w, int64_t ldw, int64_t bf16, int64_t N,
                  float *y, int64_t threads)
{
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const int64_t base = n * ldw;
        int64_t k0 = 0;
#ifdef __AVX2__
        __m256 a0[16], a1[16];
        for (int64_t m = 0; m < M; m++) { a0[m] = _mm256_setzero_ps(); a1[m] = _mm256_setzero_ps(); }
        for (; k0 + 16 <= K; k0 += 16) {
            const __m256 w0 = wload(w, (int)bf16, base + k0), w1 = wload(w, (int)bf16, base + k0 + 8);
            for (int64_t m = 0; m < M; m++) {
                a0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * K + k0), a0[m]);
                a1[m] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * K + k0 + 8), a1[m]);
            }
        }
        for (int64_t m = 0; m < M; m++) y[m * N + n] = hsum(_mm256_add_ps(a0[m], a1[m]));
#else
        for (int64_t m = 0; m < M; m++) y[m * N + n] = 0.f;
#endif
        for (int64_t k = k0; k < K; k++) {
            const float wk = wval(w, (int)bf16, base + k);
            for (int64_t m = 0; m < M; m++) y[m * N + n] += wk * x[m * K + k];
        }
    }
}

/* A MoE layer: for every expert, its (token, slot) pairs in chunks of up to 16 rows:
   h = W13_e x (gate rows then up rows), a = silu(gate) * up, out[t] += w * (W2_e a).
   x: [T, H]; ids, topw: [T, topk]; w13: [E, 2I, H]; w2: [E, H, I] (fp32 or bf16 bits, contiguous);
   out: [T, H], zeroed by the caller; scratch: 16 * (2 H + 3 I) floats. */
void dense_moe(const float *x, int64_t T, int64_t H, int64_t I, int64_t topk, const int64_t *ids, const float *topw,
               const void *w13, const void *w2, int64_t bf16, int64_t E, float *out, float *scratch, int64_t threads)
{
    const int64_t esz = bf16 ? 2 : 4;
    float *xe = scratch, *h = xe + 16 * H, *a = h + 16 * 2 * I, *y = a + 16 * I;
    int64_t rows[16];
    float wts[16];
    for (int64_t e = 0; e < E; e++) {
        int64_t m = 0;
        for (int64_t p = 0; p <= T * topk; p++) {
            if (p < T * topk && ids[p] == e) {
                rows[m] = p / topk;
                wts[m] = topw[p];
                memcpy(xe + m * H, x + rows[m] * H, H * sizeof(float));
                m++;
            }
            if (m == 16 || (p == T * topk && m > 0)) {
                dense_matmul(xe, m, H, (const char *)w13 + e * 2 * I * H * esz, H, bf16, 2 * I, h, threads);
                for (int64_t r = 0; r < m; r++)
                    for (int64_t i = 0; i < I; i++) {
                        const float g = h[r * 2 * I + i];
                        a[r * I + i] = g / (1.f + expf(-g)) * h[r * 2 * I + I + i];
                    }
                dense_matmul(a, m, I, (const char *)w2 + e * H * I * esz, I, bf16, H, y, threads);
                for (int64_t r = 0; r < m; r++)
                    for (int64_t k = 0; k < H; k++) out[rows[r] * H + k] += wts[r] * y[r * H + k];
                m = 0;
            }
        }
    }
}
"""

_P, _I = native.PTR, native.I64
_SIGNATURES = (
    ("dense_matmul", (_P, _I, _I, _P, _I, _I, _I, _P, _I)),
    ("dense_moe", (_P, _I, _I, _I, _I, _P, _P, _P, _P, _I, _I, _P, _P, _I)),
)


def _library() -> ctypes.CDLL | None:
    return native.build("dense_moe", _SOURCE, _SIGNATURES)


def available() -> bool:
    """Whether the compiled kernel can be used (builds it on the first call)."""
    return _library() is not None


def _kernel_layout(w: torch.Tensor) -> torch.Tensor:
    """Row-major fp32 (the same tensor when it already is), or bf16 when every value is exactly
    representable in bf16."""
    w = w.detach().float().contiguous()
    b = w.to(torch.bfloat16)
    return b if torch.equal(b.float(), w) else w


class DenseExperts:
    """Kernel copies of a MoE layer's expert weights: w13 [E, 2I, H], w2 [E, H, I], row-major,
    each bf16 when that is lossless, else fp32."""

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor) -> None:
        if w13.dim() != 3 or w2.dim() != 3 or w13.shape[0] != w2.shape[0] or w13.shape[1] != 2 * w2.shape[2] or w13.shape[2] != w2.shape[1]:
            raise ValueError(f"expert weights do not belong together: w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}")
        if w13.device.type != "cpu" or w2.device.type != "cpu":
            raise ValueError("DenseExperts hold CPU tensors")
        self.w13 = _kernel_layout(w13)
        self.w2 = _kernel_layout(w2)
        if self.w13.dtype != self.w2.dtype:  # one element type per call
            self.w13, self.w2 = self.w13.float(), self.w2.float()

    @property
    def bf16(self) -> bool:
        return self.w13.dtype == torch.bfloat16

    @property
    def nbytes(self) -> int:
        return self.w13.nbytes + self.w2.nbytes


def dense_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M <= MAX_ROWS, K] @ w.T for a row-major w [N, K] (fp32 or bf16) -> [M, N] fp32.
    Raises ValueError on bad shapes/devices, RuntimeError if the kernel is not available."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the CPU dense MoE kernel is not available (no C compiler?)")
    n, k = w.shape
    if x.dim() != 2 or x.shape[1] != k or x.shape[0] > MAX_ROWS:
        raise ValueError(f"x must be [M <= {MAX_ROWS}, {k}], got {tuple(x.shape)}")
    if x.device.type != "cpu" or w.device.type != "cpu" or w.dtype not in (torch.float32, torch.bfloat16) or w.stride(1) != 1:
        raise ValueError("dense_matmul takes CPU tensors and fp32/bf16 weights contiguous along K")
    xc = x.float().contiguous()
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    if x.shape[0]:
        lib.dense_matmul(xc.data_ptr(), xc.shape[0], k, w.data_ptr(), w.stride(0), int(w.dtype == torch.bfloat16), n,
                         y.data_ptr(), torch.get_num_threads())
    return y


def dense_moe(x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, experts: DenseExperts) -> torch.Tensor:
    """A whole MoE layer: x [T, H], router weights/expert ids [T, k] -> [T, H] in x's dtype.

    Raises ValueError for more than MAX_MOE_TOKENS tokens or non-CPU tensors, RuntimeError if the
    kernel is not available."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the CPU dense MoE kernel is not available (no C compiler?)")
    num_tokens, hidden = x.shape
    if num_tokens > MAX_MOE_TOKENS or x.device.type != "cpu":
        raise ValueError(f"dense_moe takes at most {MAX_MOE_TOKENS} CPU tokens, got {num_tokens} on {x.device}")
    e, two_i, h = experts.w13.shape
    if h != hidden:
        raise ValueError(f"x has hidden size {hidden}, the experts {h}")
    ids = expert_ids.to(torch.int64).contiguous()
    if num_tokens and (int(ids.min()) < 0 or int(ids.max()) >= e):
        raise ValueError(f"expert ids must be in [0, {e})")
    xc = x.float().contiguous()
    topw = weights.float().contiguous()
    inter = two_i // 2
    out = torch.zeros(num_tokens, hidden, dtype=torch.float32)
    scratch = torch.empty(MAX_ROWS * (2 * hidden + 3 * inter), dtype=torch.float32)
    lib.dense_moe(xc.data_ptr(), num_tokens, hidden, inter, ids.shape[1], ids.data_ptr(), topw.data_ptr(),
                  experts.w13.data_ptr(), experts.w2.data_ptr(), int(experts.bf16), e, out.data_ptr(), scratch.data_ptr(),
                  torch.get_num_threads())
    return out.to(x.dtype)
