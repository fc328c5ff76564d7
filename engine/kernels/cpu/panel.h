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
static inline __attribute__((always_inline)) void v16_store(float *p, v16 a) { _mm512_storeu_ps(p, a); }

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
static inline __attribute__((always_inline)) void v16_store(float *p, v16 a) { _mm256_storeu_ps(p, a.lo); _mm256_storeu_ps(p + 8, a.hi); }

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

/* k-blocked tiles: rows [0, M) (M <= KB_MAX_ROWS) against np adjacent panels walk K in blocks of kb
   rows, every row tile consuming a block while it is in L1: each weight byte comes from memory once
   per call (not once per row tile, the later tiles re-reading it from L2), and the memory stream is
   spread over all the tiles' arithmetic instead of stalling the first one. The sums wait between
   blocks in acc [M, 2 PANEL] (an fp32 store and reload is exact), so each is still one FMA chain over
   k in order: bitwise `tile`'s (tests/engine/test_cpu_linear.py and tests/engine/moe/test_cpu_dense.py
   check both schedules agree). The tiles of a block prefetch the next one (see rows_panels_kblocked). */
#define KB_MAX_ROWS 32
/* Whether rows_panels_kblocked takes M rows in tiles of mr with k-block kb (more than one tile, at most
   KB_MAX_ROWS rows, a block shorter than K): packed_linear and rows_panels ask the same question. */
static inline int kblocked(int64_t kb, int64_t K, int64_t M, int64_t mr) { return kb > 0 && kb < K && M > mr && M <= KB_MAX_ROWS; }
#define KB_LD (2 * PANEL)
static inline __attribute__((always_inline)) void tile_block(const float *x, int64_t ldx, const void *panel, const int bf16, int64_t K,
                                                             int64_t k0, int64_t k1, float *acc, const int mr, const int np,
                                                             const char *pf, int64_t every) {
#define KDECL(r) v16 d##r##0 = v16_zero(), d##r##1 = v16_zero(); \
                 if (mr > r && k0) { d##r##0 = v16_load(acc + r * KB_LD, 0, 0); if (np == 2) d##r##1 = v16_load(acc + r * KB_LD, 0, PANEL); }
    ROWS(KDECL)
    const int64_t esz = bf16 ? 2 : 4, pstride = K * PANEL * esz;
    const char *second = (const char *)panel + pstride;
    int64_t wait = every;
    for (int64_t k = k0; k < k1; k++) {
        if (pf && --wait == 0) {  /* this tile's share of the next block, one k row every `every` steps */
            wait = every;
            _mm_prefetch(pf, _MM_HINT_T0);
            if (np == 2) _mm_prefetch(pf + pstride, _MM_HINT_T0);
            pf += PANEL * esz;
        }
        const v16 w0 = v16_load(panel, bf16, k * PANEL);
        const v16 w1 = np == 2 ? v16_load(second, bf16, k * PANEL) : v16_zero();
        ROWS(STEP)
    }
#define KSAVE(r) if (mr > r) { v16_store(acc + r * KB_LD, d##r##0); if (np == 2) v16_store(acc + r * KB_LD + PANEL, d##r##1); }
    ROWS(KSAVE)
}

/* One k-block of a tile of mr rows against panel p (np = 1) or p and p + 1, with compile-time
   shapes (as tile_panels), sums in acc (row stride KB_LD; panel p + 1's from column PANEL).
   pf: where this tile's share of the next block starts in panel p (NULL: no prefetch; the same
   offset in p + 1 too), one k row every `every` steps. */
static void block_panels(const float *x, int64_t ldx, const void *w, int bf16, int64_t K, int64_t k0, int64_t k1, float *acc,
                         int64_t p, int np, int mr, const char *pf, int64_t every) {
    const int64_t esz = bf16 ? 2 : 4;
#if PAIR_MAX_ROWS < MR
    if (np == 2 && mr > PAIR_MAX_ROWS) {
        block_panels(x, ldx, w, bf16, K, k0, k1, acc, p, 1, mr, pf, every);
        block_panels(x, ldx, w, bf16, K, k0, k1, acc + PANEL, p + 1, 1, mr, pf ? pf + K * PANEL * esz : 0, every);
        return;
    }
#endif
    const void *panel = (const char *)w + p * K * PANEL * esz;
#define KCASE(r, n) case r + 1: bf16 ? tile_block(x, ldx, panel, 1, K, k0, k1, acc, r + 1, n, pf, every) \
                                     : tile_block(x, ldx, panel, 0, K, k0, k1, acc, r + 1, n, pf, every); return;
#define KCASE1(r) KCASE(r, 1)
#define KCASE2(r) KCASE(r, 2)
    if (np == 2) { switch (mr) { PAIR_ROWS(KCASE2) } }
    else { switch (mr) { ROWS(KCASE1) } }
}

/* rows_panels (below) k-blocked: all M rows in tiles of mr against panels p0 (and p0 + 1, np = 2)
   -> y, as tile_panels writes them. While a block is computed its tiles prefetch the next one (the
   next panels' first block after the last), each tile an equal share spread over its steps, so the
   memory stream runs through all of the arithmetic instead of in bursts. */
static void rows_panels_kblocked(const float *x, int64_t M, int64_t ldx, const void *w, int bf16, int64_t K, const float *bias,
                                 float *y, int64_t ldy, int64_t p0, int np, int64_t N, int swiglu, int mr, int64_t kb) {
    float acc[KB_MAX_ROWS * KB_LD];
    const int64_t esz = bf16 ? 2 : 4, tiles = (M + mr - 1) / mr, share = (kb + tiles - 1) / tiles;
    const int64_t panels = swiglu ? N / PANEL : (N + PANEL - 1) / PANEL;
    const char *base = (const char *)w + p0 * K * PANEL * esz;
    for (int64_t k0 = 0; k0 < K; k0 += kb) {
        const int64_t k1 = K - k0 < kb ? K : k0 + kb;
        /* the next block: rows [k1, k1 + kb) of these panels, or the first kb rows of the next ones */
        const char *next = k1 < K ? base + k1 * PANEL * esz : p0 + np < panels ? base + np * K * PANEL * esz : 0;
        for (int64_t m0 = 0, t = 0; m0 < M; m0 += mr, t++)
            block_panels(x + m0 * ldx, ldx, w, bf16, K, k0, k1, acc + m0 * KB_LD, p0, np, (int)(M - m0 < mr ? M - m0 : mr),
                         next ? next + t * share * PANEL * esz : 0, (k1 - k0) / share > 1 ? (k1 - k0) / share : 1);
    }
    const int64_t width = swiglu ? 8 : PANEL, n0 = p0 * PANEL;
    const int64_t c0 = N - n0 < PANEL ? N - n0 : PANEL, c1 = N - n0 - PANEL < PANEL ? N - n0 - PANEL : PANEL;
    const float *b = bias && !swiglu ? bias + n0 : 0;
    float *yp = y + p0 * width;
    for (int64_t m = 0; m < M; m++)
        for (int q = 0; q < np; q++) {
            const v16 a = v16_load(acc + m * KB_LD + q * PANEL, 0, 0);
            if (swiglu) v16_emit(yp + m * ldy + q * width, a, bf16, 0, 8, 1);
            else v16_emit(yp + m * ldy + q * width, a, bf16, b ? b + q * PANEL : 0, q ? c1 : c0, 0);
        }
}
#endif

/* The k-block of `tune` (linear.c's tune array, NULL: the defaults): 0 walks K whole per tile. */
#define KBLOCK_DEFAULT 128
static inline int64_t tune_kblock(const int64_t *tune) { return tune ? tune[4] : KBLOCK_DEFAULT; }


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
   panel-pair loop; kb > 0: k-blocked (rows_panels_kblocked) where that applies (several tiles). */
static inline void rows_panels(const float *x, int64_t M, int64_t ldx, const void *w, int bf16, int64_t K, const float *bias,
                               float *y, int64_t ldy, int64_t p0, int64_t count, int64_t N, int swiglu, int64_t kb) {
#ifdef __AVX2__
    if (kblocked(kb, K, M, MR)) {
        rows_panels_kblocked(x, M, ldx, w, bf16, K, bias, y, ldy, p0, (int)count, N, swiglu, MR, kb);
        return;
    }
#else
    (void)kb;
#endif
    for (int64_t m0 = 0; m0 < M; m0 += MR)
        tile_panels(x + m0 * ldx, ldx, w, bf16, K, bias, y + m0 * ldy, ldy, p0, count, N, (int)(M - m0 < MR ? M - m0 : MR), swiglu);
}

