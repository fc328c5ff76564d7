/* A whole FP4 MoE layer on 16-column FP4 panels (see fp4_panels.py). */
#include "moe_driver.h"
#ifdef __AVX512F__
/* Rows per tile: 5 rows x 2 panels of sums and block partial sums (20 registers) plus the decoded
   weights and constants fit the 32 vector registers (6 rows spilled). */
#define FP4_MR 5

/* 16 scale bytes -> fp32 in registers (a gather from a table cost ~25% of the layer). B = 16: FP8
   E4M3 (NVFP4): the 7 exponent/mantissa bits moved to fp32's exponent/mantissa positions read as
   2^(e - 127)(1 + m/8) (subnormals included: e = 0 becomes an fp32 subnormal), times 2^120 gives
   2^(e - 7)(1 + m/8); the sign bit moves to bit 31; 0x7F/0xFF is NaN. B = 32: E8M0 (MXFP4): 2^(b - 127)
   is b in fp32's exponent field (b = 0 gives 0 for 2^-127), 255 is NaN. */
static inline __m512 scales16(const uint8_t *s, const int64_t B) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)s));
    const __m512 nan = _mm512_set1_ps(NAN);
    if (B == 32) {
        const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(b, 23));
        return _mm512_mask_mov_ps(v, _mm512_cmpeq_epi32_mask(b, _mm512_set1_epi32(255)), nan);
    }
    const __m512i mag = _mm512_and_si512(b, _mm512_set1_epi32(0x7F));
    __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(mag, 20)), _mm512_set1_ps(0x1p120f));
    v = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(v), _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x80)), 24)));
    return _mm512_mask_mov_ps(v, _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7F)), nan);
}

/* One tile: rows x[0:mr] times panels (c0, s0) and, np = 2, (c1, s1) -> y. rs0/rs1: the 16 second-level
   scales of each panel's columns. swiglu: a gate/up panel (8 gate then 8 up columns) -> 8 outputs.
   Codes come in pairs of K rows: 16 bytes whose byte j holds column j of the first row (low nibble)
   and of the second (high nibble), so one widening load, a mask and a shift give both rows' codes
   in column order, and a permute of the E2M1 table turns each into 16 values. Sums within a scale
   block run unscaled; the block's scales multiply them once at its end. */
static inline __attribute__((always_inline)) void fp4_tile(const float *x, int64_t ldx, const uint8_t *c0, const uint8_t *s0,
        const float *rs0, const uint8_t *c1, const uint8_t *s1, const float *rs1, const int64_t B,
        const int64_t K, float *y, int64_t ldy, const int mr, const int np, const int swiglu)
{
    const __m512 e2m1 = _mm512_setr_ps(0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f);
    const __m512i low = _mm512_set1_epi32(15);
    __m512 a0[FP4_MR], a1[FP4_MR], p0[FP4_MR], p1[FP4_MR];
    for (int r = 0; r < FP4_MR; r++) { a0[r] = _mm512_setzero_ps(); a1[r] = _mm512_setzero_ps(); }
    for (int64_t kb = 0; kb < K; kb += B) {
        for (int r = 0; r < FP4_MR; r++) { p0[r] = _mm512_setzero_ps(); p1[r] = _mm512_setzero_ps(); }
        for (int64_t k = kb; k < kb + B; k += 2) {
            const __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c0 + k * 8)));
            const __m512 w00 = _mm512_permutexvar_ps(_mm512_and_si512(v0, low), e2m1);
            const __m512 w01 = _mm512_permutexvar_ps(_mm512_srli_epi32(v0, 4), e2m1);
            __m512 w10 = _mm512_setzero_ps(), w11 = _mm512_setzero_ps();
            if (np == 2) {
                const __m512i v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c1 + k * 8)));
                w10 = _mm512_permutexvar_ps(_mm512_and_si512(v1, low), e2m1);
                w11 = _mm512_permutexvar_ps(_mm512_srli_epi32(v1, 4), e2m1);
            }
            for (int r = 0; r < mr; r++) {
                const __m512 xa = _mm512_set1_ps(x[r * ldx + k]), xb = _mm512_set1_ps(x[r * ldx + k + 1]);
                p0[r] = _mm512_fmadd_ps(xb, w01, _mm512_fmadd_ps(xa, w00, p0[r]));
                if (np == 2) p1[r] = _mm512_fmadd_ps(xb, w11, _mm512_fmadd_ps(xa, w10, p1[r]));
            }
        }
        const __m512 sc0 = scales16(s0 + kb / B * 16, B);
        __m512 sc1 = _mm512_setzero_ps();
        if (np == 2) sc1 = scales16(s1 + kb / B * 16, B);
        for (int r = 0; r < mr; r++) {
            a0[r] = _mm512_fmadd_ps(p0[r], sc0, a0[r]);
            if (np == 2) a1[r] = _mm512_fmadd_ps(p1[r], sc1, a1[r]);
        }
    }
    for (int r = 0; r < mr; r++) {
        for (int q = 0; q < np; q++) {
            const __m512 v = _mm512_mul_ps(q ? a1[r] : a0[r], _mm512_loadu_ps(q ? rs1 : rs0));
            float *dst = y + r * ldy + q * (swiglu ? 8 : 16);
            if (swiglu) _mm256_storeu_ps(dst, swiglu8(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
            else _mm512_storeu_ps(dst, v);  /* panels are never partial (see FP4PanelExperts) */
        }
    }
}

/* Rows x[0:M] times panels [p0, p0 + count) (count <= 2) of an FP4 panel array: codes [P, K / 2, 16],
   scales [P, K / B, 16], rs [P, 16]. */
static void fp4_rows_panels(const float *x, int64_t M, int64_t ldx, const uint8_t *codes, const uint8_t *scales,
                            const float *rs, int64_t B, int64_t K, float *y, int64_t ldy, int64_t p0,
                            int64_t count, int swiglu)
{
    const uint8_t *c0 = codes + p0 * K * 8, *s0 = scales + p0 * (K / B) * 16;
    const uint8_t *c1 = c0 + K * 8, *s1 = s0 + (K / B) * 16;
    const float *r0 = rs + p0 * 16, *r1 = r0 + 16;
    float *yp = y + p0 * (swiglu ? 8 : 16);
    for (int64_t m0 = 0; m0 < M; m0 += FP4_MR) {
        const int mr = (int)(M - m0 < FP4_MR ? M - m0 : FP4_MR);
        const float *xm = x + m0 * ldx;
        float *ym = yp + m0 * ldy;
#define FP4_CASE(R) case R: \
            if (count == 2) { if (swiglu) fp4_tile(xm, ldx, c0, s0, r0, c1, s1, r1, B, K, ym, ldy, R, 2, 1); \
                              else fp4_tile(xm, ldx, c0, s0, r0, c1, s1, r1, B, K, ym, ldy, R, 2, 0); } \
            else { if (swiglu) fp4_tile(xm, ldx, c0, s0, r0, c0, s0, r0, B, K, ym, ldy, R, 1, 1); \
                   else fp4_tile(xm, ldx, c0, s0, r0, c0, s0, r0, B, K, ym, ldy, R, 1, 0); } \
            break;
        switch (mr) { FP4_CASE(1) FP4_CASE(2) FP4_CASE(3) FP4_CASE(4) FP4_CASE(5) }
    }
}
#endif

int64_t fp4_panels_supported(void) {
#ifdef __AVX512F__
    return 1;
#else
    return 0;
#endif
}

/* The MoE layer over FP4 panels (see the module doc); w13: gate/up panels (IP/8 of them),
   w2: down panels (H/16), IP = I (a multiple of the FP4 block); b13 NULL: SwiGLU, else gpt-oss's biased
   clamped GLU (moe_driver.h, scratch A * 2 IP floats more). Returns -1 for a bad expert id, -2 without AVX-512. */
int64_t fp4_panel_moe(const float *x, int64_t T, int64_t H, int64_t IP, int64_t topk, const int64_t *ids, const float *topw,
                      const uint8_t *c13, const uint8_t *s13, const float *rs13, const uint8_t *c2, const uint8_t *s2,
                      const float *rs2, int64_t B, int64_t E, float *out, float *scratch, int64_t *iscratch,
                      int64_t threads, const float *b13, const float *b2, float limit, float alpha)
{
#ifdef __AVX512F__
    const int64_t A = T * topk, P1 = IP / 8, P2 = H / 16, Q1 = (P1 + 1) / 2, Q2 = (P2 + 1) / 2;
    float *xe = scratch, *a = xe + A * H, *ye = a + A * IP, *h = ye + A * H;
    const glu_params glu = {b13, b2, limit, alpha};
    int64_t nactive;
    const int64_t *order = iscratch, *pos = order + A, *start = pos + A, *active = start + E + 1;
    if (sort_pairs(ids, A, E, iscratch, &nactive) != 0) return -1;
    #pragma omp parallel num_threads(threads) if (A * H * IP >= 16384)
    {
        gather_rows(x, H, topk, order, A, xe);
        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < nactive * Q1; item++) {
            const int64_t e = active[item / Q1], q = item % Q1, r0 = start[e];
            const uint8_t *ce = c13 + e * P1 * H * 8, *se = s13 + e * P1 * (H / B) * 16;
            if (b13) fp4_rows_panels(xe + r0 * H, start[e + 1] - r0, H, ce, se, rs13 + e * P1 * 16, B, H, h + r0 * 2 * IP, 2 * IP,
                                     2 * q, 2 * q + 1 < P1 ? 2 : 1, 0);
            else fp4_rows_panels(xe + r0 * H, start[e + 1] - r0, H, ce, se, rs13 + e * P1 * 16, B, H, a + r0 * IP, IP,
                                 2 * q, 2 * q + 1 < P1 ? 2 : 1, 1);
        }
        if (b13) clamped_glu_rows(h, A, IP, ids, order, &glu, a);
        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < nactive * Q2; item++) {
            const int64_t e = active[item / Q2], q = item % Q2, r0 = start[e];
            fp4_rows_panels(a + r0 * IP, start[e + 1] - r0, IP, c2 + e * P2 * IP * 8, s2 + e * P2 * (IP / B) * 16, rs2 + e * P2 * 16,
                            B, IP, ye + r0 * H, H, 2 * q, 2 * q + 1 < P2 ? 2 : 1, 0);
        }
        combine_pairs(ye, H, topk, topw, pos, T, b2, ids, out);
    }
    return 0;
#else
    return -2;
#endif
}
