/* The packed-panel GEMM tiles (see linear.py): shared by linear.c and the MoE drivers. */
#pragma once
#include "simd.h"
#include <stdint.h>
#include <string.h>
#include <math.h>

#define PANEL 16
#define MR 6
/* where column c of a bf16 panel is stored (an involution: 4-7 and 8-11 swap places) */
#define BF16_POS(c) ((c) < 4 || (c) >= 12 ? (c) : (c) < 8 ? (c) + 4 : (c) - 4)

static inline float bf16_to_f32(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

#if defined(__AVX512F__)
/* A panel row of 16 columns is one 16-lane register. bf16 bits are widened by a zero-extend and a
   shift, so the lanes come in the storage order 0-3, 8-11, 4-7, 12-15 (see `pack`) and are put back
   in order once per tile in `v16_emit`. */
typedef __m512 v16;
typedef __m512 v16b;  /* one activation value broadcast to every lane */
static inline __attribute__((always_inline)) v16 v16_zero(void) { return _mm512_setzero_ps(); }
static inline __attribute__((always_inline)) v16b v16_bcast(const float *x) { return _mm512_set1_ps(*x); }
static inline __attribute__((always_inline)) v16 v16_fma(v16b x, v16 w, v16 acc) { return _mm512_fmadd_ps(x, w, acc); }

static inline __attribute__((always_inline)) v16 v16_load(const void *p, const int bf16, int64_t off) {
    if (!bf16) return _mm512_loadu_ps((const float *)p + off);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + off));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Writes one row's sums for one panel: 16 outputs (+ bias; the first ncols of them), or, swiglu = 1,
   the 8 outputs silu(gate) * up of a gate/up panel. */
static inline __attribute__((always_inline)) void v16_emit(float *y, v16 a, const int bf16, const float *bias, int64_t ncols,
                                                           const int swiglu) {
    if (bf16) a = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15), a);
    if (swiglu) {
        _mm256_storeu_ps(y, swiglu8(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1)));
        return;
    }
    const __mmask16 m = (__mmask16)((1u << ncols) - 1u);
    if (bias) a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, bias));
    _mm512_mask_storeu_ps(y, m, a);
}
#define PAIR_ROWS(F) F(0) F(1) F(2) F(3) F(4) F(5)  /* 32 registers: every tile takes two panels at once */
#define PAIR_MAX_ROWS 6

#elif defined(__AVX2__)
/* A panel row of 16 columns is two 8-lane registers. bf16 panels store columns in the order 0-3,
   8-11, 4-7, 12-15 (see `pack`), so interleaving zero words below each value yields columns 0-7
   and 8-15 in two shuffles. */
typedef struct { __m256 lo, hi; } v16;
typedef __m256 v16b;
static inline __attribute__((always_inline)) v16 v16_zero(void) { return (v16){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
static inline __attribute__((always_inline)) v16b v16_bcast(const float *x) { return _mm256_broadcast_ss(x); }
static inline __attribute__((always_inline)) v16 v16_fma(v16b x, v16 w, v16 acc) {
    return (v16){_mm256_fmadd_ps(x, w.lo, acc.lo), _mm256_fmadd_ps(x, w.hi, acc.hi)};
}

static inline __attribute__((always_inline)) v16 v16_load(const void *p, const int bf16, int64_t off) {
    if (!bf16) return (v16){_mm256_loadu_ps((const float *)p + off), _mm256_loadu_ps((const float *)p + off + 8)};
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + off));
    return (v16){_mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), h)),
                 _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), h))};
}

static inline __attribute__((always_inline)) void v16_emit(float *y, v16 a, const int bf16, const float *bias, int64_t ncols,
                                                           const int swiglu) {
    (void)bf16;  /* the loads already put bf16 columns in order */
    if (swiglu) {
        _mm256_storeu_ps(y, swiglu8(a.lo, a.hi));
        return;
    }
    if (bias) {
        float b[PANEL] = {0};
        memcpy(b, bias, ncols * sizeof(float));
        a.lo = _mm256_add_ps(a.lo, _mm256_loadu_ps(b));
        a.hi = _mm256_add_ps(a.hi, _mm256_loadu_ps(b + 8));
    }
    if (ncols == PANEL) {
        _mm256_storeu_ps(y, a.lo);
        _mm256_storeu_ps(y + 8, a.hi);
    } else {
        float t[PANEL];
        _mm256_storeu_ps(t, a.lo);
        _mm256_storeu_ps(t + 8, a.hi);
        memcpy(y, t, ncols * sizeof(float));
    }
}
#define PAIR_ROWS(F) F(0) F(1) F(2)  /* 16 registers: two panels at once only for tiles of up to 3 rows */
#define PAIR_MAX_ROWS 3
#endif

#ifdef __AVX2__
/* rows x[0:mr, :K] (row stride ldx) times np (1 or 2) adjacent panels [K, 16] -> y[0:mr, ...] (row
   stride ldy; panel q writes from column q * 16, or q * 8 with swiglu), written once for both vector
   widths over the v16 helpers above. Each sum runs over k in order whatever mr and np are, so a row's
   result does not depend on the rows tiled with it (and AVX2 and AVX-512 builds agree bitwise); two
   panels give few-row tiles enough independent FMA chains. Sums live in named variables (an array
   of them gets spilled to the stack on every step). */
#define ROWS(F) F(0) F(1) F(2) F(3) F(4) F(5)
static inline __attribute__((always_inline)) void tile(const float *x, int64_t ldx, const void *panel, const int bf16, int64_t K,
                                                       const float *bias, float *y, int64_t ldy, int64_t ncols0, int64_t ncols1,
                                                       const int mr, const int np, const int swiglu) {
#define DECL(r) v16 d##r##0 = v16_zero(), d##r##1 = v16_zero();
    ROWS(DECL)
    const char *second = (const char *)panel + K * PANEL * (bf16 ? 2 : 4);
    for (int64_t k = 0; k < K; k++) {
        const v16 w0 = v16_load(panel, bf16, k * PANEL);
        const v16 w1 = np == 2 ? v16_load(second, bf16, k * PANEL) : v16_zero();
#define STEP(r) if (mr > r) { const v16b xb = v16_bcast(x + r * ldx + k); \
                              d##r##0 = v16_fma(xb, w0, d##r##0); if (np == 2) d##r##1 = v16_fma(xb, w1, d##r##1); }
        ROWS(STEP)
    }
    const int64_t width = swiglu ? 8 : PANEL;
#define STORE(r) if (mr > r) { v16_emit(y + r * ldy, d##r##0, bf16, bias, ncols0, swiglu); \
                               if (np == 2) v16_emit(y + r * ldy + width, d##r##1, bf16, bias ? bias + PANEL : 0, ncols1, swiglu); }
    ROWS(STORE)
}
#endif


/* Rows x[0:mr, :K] (mr <= 6) times panels p (and p + 1 when np = 2) of the panel array w -> y, whose
   column 0 is output 0 (bias likewise); N: outputs in all (the last panel may be partial). swiglu = 1:
   gate/up panels, 8 outputs each, no bias. */
static void tile_panels(const float *x, int64_t ldx, const void *w, int bf16, int64_t K, const float *bias,
                        float *y, int64_t ldy, int64_t p, int64_t np, int64_t N, int mr, int swiglu) {
    const int64_t esz = bf16 ? 2 : 4, width = swiglu ? 8 : PANEL;
#ifdef __AVX2__
#if PAIR_MAX_ROWS < MR
    if (np == 2 && mr > PAIR_MAX_ROWS) {  /* enough rows for latency (and too few registers for two panels): one at a time */
        tile_panels(x, ldx, w, bf16, K, bias, y, ldy, p, 1, N, mr, swiglu);
        tile_panels(x, ldx, w, bf16, K, bias, y, ldy, p + 1, 1, N, mr, swiglu);
        return;
    }
#endif
    const void *panel = (const char *)w + p * K * PANEL * esz;
    const int64_t n0 = p * PANEL, c0 = N - n0 < PANEL ? N - n0 : PANEL, c1 = N - n0 - PANEL < PANEL ? N - n0 - PANEL : PANEL;
    const float *b = bias && !swiglu ? bias + n0 : 0;
    float *yp = y + p * width;
#define CASE1(r) case r + 1: \
        if (swiglu) { if (bf16) tile(x, ldx, panel, 1, K, 0, yp, ldy, 8, 8, r + 1, 1, 1); else tile(x, ldx, panel, 0, K, 0, yp, ldy, 8, 8, r + 1, 1, 1); } \
        else if (bf16) tile(x, ldx, panel, 1, K, b, yp, ldy, c0, c1, r + 1, 1, 0); \
        else tile(x, ldx, panel, 0, K, b, yp, ldy, c0, c1, r + 1, 1, 0); \
        return;
#define CASE2(r) case r + 1: \
        if (swiglu) { if (bf16) tile(x, ldx, panel, 1, K, 0, yp, ldy, 8, 8, r + 1, 2, 1); else tile(x, ldx, panel, 0, K, 0, yp, ldy, 8, 8, r + 1, 2, 1); } \
        else if (bf16) tile(x, ldx, panel, 1, K, b, yp, ldy, c0, c1, r + 1, 2, 0); \
        else tile(x, ldx, panel, 0, K, b, yp, ldy, c0, c1, r + 1, 2, 0); \
        return;
    if (np == 2) { switch (mr) { PAIR_ROWS(CASE2) } }
    else { switch (mr) { ROWS(CASE1) } }
#else
    for (int64_t q = p; q < p + np; q++) {
        const char *panel = (const char *)w + q * K * PANEL * esz;
        const int64_t n0 = q * PANEL, ncols = swiglu ? PANEL : (N - n0 < PANEL ? N - n0 : PANEL);
        for (int m = 0; m < mr; m++) {
            float s[PANEL];
            for (int64_t c = 0; c < ncols; c++) {
                s[c] = bias && !swiglu ? bias[n0 + c] : 0.f;
                for (int64_t k = 0; k < K; k++) {
                    const float wk = bf16 ? bf16_to_f32(((const uint16_t *)panel)[k * PANEL + BF16_POS(c)]) : ((const float *)panel)[k * PANEL + c];
                    s[c] += x[m * ldx + k] * wk;
                }
            }
            for (int64_t c = 0; c < (swiglu ? 8 : ncols); c++)
                y[m * ldy + q * width + c] = swiglu ? s[c] / (1.f + expf(-s[c])) * s[c + 8] : s[c];
        }
    }
#endif
}

/* All rows [0, M) in tiles of MR against panels [p0, p0 + count): the work of one item of a
   panel-pair loop. */
static inline void rows_panels(const float *x, int64_t M, int64_t ldx, const void *w, int bf16, int64_t K, const float *bias,
                               float *y, int64_t ldy, int64_t p0, int64_t count, int64_t N, int swiglu) {
    for (int64_t m0 = 0; m0 < M; m0 += MR)
        tile_panels(x + m0 * ldx, ldx, w, bf16, K, bias, y + m0 * ldy, ldy, p0, count, N, (int)(M - m0 < MR ? M - m0 : MR), swiglu);
}

