/* Fused FP4 matmul and small-batch FP4 MoE on the CPU (see fp4_matmul.py). */
#include <stdint.h>
#include <math.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

static const float E2M1[16] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,
                               -0.f, -0.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};

/* Decode one block's B / 2 packed bytes into B floats (the portable path). */
static inline void decode_block(const uint8_t *pb, int64_t B, float *w) {
    for (int64_t j = 0; j < B / 2; j++) {
        const uint8_t v = pb[j];
        w[2 * j] = E2M1[v & 15];
        w[2 * j + 1] = E2M1[v >> 4];
    }
}

#ifdef __AVX2__
/* 8 packed bytes -> 16 values in k order, as two vectors of 8 floats holding TWICE the E2M1
   value (an exact small integer: a byte shuffle through a 16-entry int8 table); callers fold the
   factor 1/2 into the block scale. */
static inline void decode16(const uint8_t *pb, __m256 *lo, __m256 *hi) {
    const __m128i lut = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
    const __m128i nib = _mm_set1_epi8(0x0F);
    __m128i v = _mm_loadl_epi64((const __m128i *)pb);
    __m128i codes = _mm_unpacklo_epi8(_mm_and_si128(v, nib), _mm_and_si128(_mm_srli_epi16(v, 4), nib));
    __m128i twice = _mm_shuffle_epi8(lut, codes);
    *lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(twice));
    *hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(twice, 8)));
}
#endif

/* y[m, n] = row_scale[n] * sum_b scale_lut[scales[n, b]] * sum_{k in block b} E2M1(code[n, k]) * x[m, k]
   x: [M, K] fp32 row-major (M <= 16); packed: [N, K/2] bytes (even k in the low nibble), row stride
   stride_p; scales: [N, K/B] bytes, row stride stride_s; y: [M, N] fp32. */
void fp4_matmul(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t stride_p,
                const uint8_t *scales, int64_t stride_s, const float *scale_lut, const float *row_scale,
                int64_t N, int64_t B, float *y, int64_t threads)
{
    const int64_t nb = K / B;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *p = packed + n * stride_p;
        const uint8_t *s = scales + n * stride_s;
        float w[32];
#ifdef __AVX2__
        if (B == 16 || B == 32) {  /* 8-wide partial sums per row, one horizontal sum at the end */
            __m256 acc[16];
            for (int64_t m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *pb = p + b * (B / 2);
                __m256 w0, w1, w2, w3;
                decode16(pb, &w0, &w1);
                if (B == 32) decode16(pb + 8, &w2, &w3);
                const __m256 sc = _mm256_set1_ps(0.5f * scale_lut[s[b]]);
                for (int64_t m = 0; m < M; m++) {
                    const float *xm = x + m * K + b * B;
                    __m256 t = _mm256_mul_ps(w0, _mm256_loadu_ps(xm));
                    t = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xm + 8), t);
                    if (B == 32) {
                        t = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xm + 16), t);
                        t = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xm + 24), t);
                    }
                    acc[m] = _mm256_fmadd_ps(t, sc, acc[m]);
                }
            }
            for (int64_t m = 0; m < M; m++) {
                __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
                h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
                y[m * N + n] = _mm_cvtss_f32(h) * row_scale[n];
            }
            continue;
        }
#endif
        float acc[16] = {0};
        for (int64_t b = 0; b < nb; b++) {
            decode_block(p + b * (B / 2), B, w);
            const float sc = scale_lut[s[b]];
            for (int64_t m = 0; m < M; m++) {
                const float *xm = x + m * K + b * B;
                float d = 0.f;
                for (int64_t j = 0; j < B; j++) d += w[j] * xm[j];
                acc[m] += d * sc;
            }
        }
        for (int64_t m = 0; m < M; m++) y[m * N + n] = acc[m] * row_scale[n];
    }
}

/* A whole MoE layer for a few tokens: for every expert, its (token, slot) pairs in chunks of up to
   16 rows: h = W13_e x (gate rows then up rows), a = silu(gate) * up, out[t] += w * (W2_e a).
   x: [T, H]; ids, topw: [T, topk]; w13: [E, 2I, H/2] packed + [E, 2I, H/B] scale bytes + [E, 2I]
   row scales; w2: [E, H, I/2] + [E, H, I/B] + [E, H]; out: [T, H], zeroed by the caller;
   scratch: 16 * (H + 3 I + H) floats. */
void fp4_moe(const float *x, int64_t T, int64_t H, int64_t I, int64_t topk, const int64_t *ids, const float *topw,
             const uint8_t *p13, const uint8_t *s13, const float *rs13, const uint8_t *p2, const uint8_t *s2,
             const float *rs2, const float *scale_lut, int64_t B, int64_t E, float *out, float *scratch, int64_t threads)
{
    float *xe = scratch, *h = xe + 16 * H, *a = h + 16 * 2 * I, *y = a + 16 * I;
    int64_t rows[16];
    float wts[16];
    for (int64_t e = 0; e < E; e++) {
        int64_t m = 0;
        for (int64_t p = 0; p <= T * topk; p++) {
            if (p < T * topk && ids[p] == e) {
                rows[m] = p / topk;
                wts[m] = topw[p];
                for (int64_t k = 0; k < H; k++) xe[m * H + k] = x[rows[m] * H + k];
                m++;
            }
            if (m == 16 || (p == T * topk && m > 0)) {
                fp4_matmul(xe, m, H, p13 + e * 2 * I * (H / 2), H / 2, s13 + e * 2 * I * (H / B), H / B, scale_lut,
                           rs13 + e * 2 * I, 2 * I, B, h, threads);
                for (int64_t r = 0; r < m; r++)
                    for (int64_t i = 0; i < I; i++) {
                        const float g = h[r * 2 * I + i];
                        a[r * I + i] = g / (1.f + expf(-g)) * h[r * 2 * I + I + i];
                    }
                fp4_matmul(a, m, I, p2 + e * H * (I / 2), I / 2, s2 + e * H * (I / B), I / B, scale_lut,
                           rs2 + e * H, H, B, y, threads);
                for (int64_t r = 0; r < m; r++)
                    for (int64_t k = 0; k < H; k++) out[rows[r] * H + k] += wts[r] * y[r * H + k];
                m = 0;
            }
        }
    }
}
