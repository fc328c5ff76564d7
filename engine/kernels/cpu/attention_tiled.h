/* The tiled path of the CPU paged attention (attention.c): many query rows per (sequence, KV
head) on AVX-512, i.e. speculative verification, prefill chunks and (for bitwise agreement with
verification) decode rows. Included by attention.c, which compiles it with the row path and the
dispatcher into one library.

Row-at-a-time attention reads every key and value once per row. Here a work item of up to
TILE_ROWS rows shares them: K is transposed 16 keys at a time into [D, 16] tiles in L1 (an
in-register 16 x 16 transpose), each row's 32 scores of two tiles are D broadcast-FMAs into two
registers, eight rows at once; the softmax runs over whole rows (two passes: scores, then exp and sum, with masked
keys at -inf); the V pass keeps 16 accumulators (rows x D / 16) so each V row is loaded once per
group of rows. Each row's sums run in a fixed order whatever rows share its item, so a row's result
does not depend on them. Needs D in {32, 64, 128}; the row path covers everything else.
*/
#pragma once
#define TILE_ROWS 32  /* query rows per work item of the tiled path */

#ifdef __AVX512F__
static inline void transpose16(__m512 *r) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
}

static const float ZERO_ROW[128] __attribute__((aligned(64)));

/* Keys key0 .. key0 + 15 of KV head h (keys >= n read as zeros), transposed: kt[d * 16 + j]. */
static inline void load_kt(const float *k_cache, const int64_t *table, int64_t block_size, int64_t stride, int64_t h,
                           int64_t key0, int64_t n, int64_t D, float *kt)
{
    const float *src[16];
    for (int64_t j = 0; j < 16; j++) {
        const int64_t key = key0 + j;
        src[j] = key < n ? k_cache + (table[key / block_size] * block_size + key % block_size) * stride + h * D : ZERO_ROW;
    }
    for (int64_t d0 = 0; d0 < D; d0 += 16) {
        __m512 r[16];
        for (int j = 0; j < 16; j++) r[j] = _mm512_loadu_ps(src[j] + d0);
        transpose16(r);
        for (int i = 0; i < 16; i++) _mm512_store_ps(kt + (d0 + i) * 16, r[i]);
    }
}

/* out_i = sum_j p_i[j] v_j over keys 0 .. n - 1 for R rows (R * D / 16 == 16 accumulators). */
static inline __attribute__((always_inline)) void weigh_rows(const float *const *p, const float *v_cache, const int64_t *table,
                                                            int64_t block_size, int64_t stride, int64_t h, int64_t n,
                                                            const int R, const int64_t D, float *const *out, const float *inv)
{
    const int NV = (int)(D / 16);
    __m512 o[16];
    for (int i = 0; i < R * NV; i++) o[i] = _mm512_setzero_ps();
    for (int64_t key0 = 0; key0 < n; key0 += block_size) {
        const float *vb = v_cache + table[key0 / block_size] * block_size * stride + h * D;
        const int64_t m = n - key0 < block_size ? n - key0 : block_size;
        for (int64_t j = 0; j < m; j++) {
            const float *vr = vb + j * stride;
            for (int c = 0; c < NV; c++) {
                const __m512 vv = _mm512_loadu_ps(vr + 16 * c);
                for (int i = 0; i < R; i++) o[i * NV + c] = _mm512_fmadd_ps(_mm512_set1_ps(p[i][key0 + j]), vv, o[i * NV + c]);
            }
        }
    }
    for (int i = 0; i < R; i++)
        for (int c = 0; c < NV; c++) _mm512_storeu_ps(out[i] + 16 * c, _mm512_mul_ps(o[i * NV + c], _mm512_set1_ps(inv[i])));
}

/* Softmax of one row's scores in place over keys < n (later keys, up to ld, become 0); returns 1 / sum. */
static inline float softmax_row(float *s, int64_t n, int64_t ld)
{
    for (int64_t j = n; j < ld; j++) s[j] = -INFINITY;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < ld; j += 16) mx = _mm512_max_ps(_mm512_load_ps(s + j), mx);
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < ld; j += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_load_ps(s + j), m));
        _mm512_store_ps(s + j, e);
        sum = _mm512_add_ps(sum, e);
    }
    return 1.f / _mm512_reduce_add_ps(sum);
}

/* 32 scores of R rows: dst[i][0..32) = scale * q_i . k_j for the keys of two transposed tiles (keys
   0-15 in kt0, 16-31 in kt1): two weight loads serve 2 R FMAs. Each score is one FMA chain over d in
   order, whatever R is. */
static inline __attribute__((always_inline)) void score_rows32(const float *const *qr, const float *kt0, const float *kt1,
                                                              float *const *dst, const int R, const int64_t D, const __m512 scale)
{
    __m512 a0[8], a1[8];
    for (int i = 0; i < R; i++) { a0[i] = _mm512_setzero_ps(); a1[i] = _mm512_setzero_ps(); }
    for (int64_t d = 0; d < D; d++) {
        const __m512 k0 = _mm512_load_ps(kt0 + d * 16), k1 = _mm512_load_ps(kt1 + d * 16);
        for (int i = 0; i < R; i++) {
            const __m512 b = _mm512_set1_ps(qr[i][d]);
            a0[i] = _mm512_fmadd_ps(b, k0, a0[i]);
            a1[i] = _mm512_fmadd_ps(b, k1, a1[i]);
        }
    }
    for (int i = 0; i < R; i++) {
        _mm512_storeu_ps(dst[i], _mm512_mul_ps(a0[i], scale));
        _mm512_storeu_ps(dst[i] + 16, _mm512_mul_ps(a1[i], scale));
    }
}

/* Rows r0 .. r0 + nrows - 1 (nrows <= TILE_ROWS) of one (sequence, KV head) with q_len new tokens
   (row r: token r / G, query head h * G + r % G); D in {32, 64, 128}. Keys past the last row's causal
   limit are never read. sc: scratch of nrows * round32(ctx) + 32 * D floats, 64-byte aligned. */
static void attend_tiled(const float *q, int64_t q_row0, int64_t q_len, int64_t ctx, int64_t G, int64_t Hq, int64_t h,
                         int64_t r0, int64_t nrows, const int64_t *table, const float *k_cache, const float *v_cache,
                         int64_t block_size, int64_t Hkv, const int64_t D, float scale, float *out, float *sc)
{
    const int64_t stride = Hkv * D, nk = ctx - q_len + (r0 + nrows - 1) / G + 1, ld = (nk + 31) / 32 * 32;
    float *kt = sc + nrows * ld;
    float inv[TILE_ROWS];
    const float *qr[TILE_ROWS];
    float *orow[TILE_ROWS], *srow[TILE_ROWS];
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t t = (r0 + r) / G, g = (r0 + r) % G;
        qr[r] = q + ((q_row0 + t) * Hq + h * G + g) * D;
        orow[r] = out + ((q_row0 + t) * Hq + h * G + g) * D;
    }
    for (int64_t c = 0; c < ld; c += 32) {
        load_kt(k_cache, table, block_size, stride, h, c, nk, D, kt);
        load_kt(k_cache, table, block_size, stride, h, c + 16, nk, D, kt + 16 * D);
        int64_t r = 0;
        for (; r < nrows; r++) srow[r] = sc + r * ld + c;
        for (r = 0; r + 8 <= nrows; r += 8) score_rows32(qr + r, kt, kt + 16 * D, srow + r, 8, D, vscale);
        for (; r + 4 <= nrows; r += 4) score_rows32(qr + r, kt, kt + 16 * D, srow + r, 4, D, vscale);
        for (; r + 2 <= nrows; r += 2) score_rows32(qr + r, kt, kt + 16 * D, srow + r, 2, D, vscale);
        for (; r < nrows; r++) score_rows32(qr + r, kt, kt + 16 * D, srow + r, 1, D, vscale);
    }
    const float *prow[TILE_ROWS];
    for (int64_t r = 0; r < nrows; r++) {
        inv[r] = softmax_row(sc + r * ld, ctx - q_len + (r0 + r) / G + 1, ld);
        prow[r] = sc + r * ld;
    }
    const int R = (int)(16 / (D / 16));
    int64_t r = 0;
    for (; r + R <= nrows; r += R) {
        if (D == 64) weigh_rows(prow + r, v_cache, table, block_size, stride, h, nk, 4, 64, orow + r, inv + r);
        else if (D == 128) weigh_rows(prow + r, v_cache, table, block_size, stride, h, nk, 2, 128, orow + r, inv + r);
        else weigh_rows(prow + r, v_cache, table, block_size, stride, h, nk, 8, 32, orow + r, inv + r);
    }
    for (; R > 2 && r + 2 <= nrows; r += 2) {
        if (D == 64) weigh_rows(prow + r, v_cache, table, block_size, stride, h, nk, 2, 64, orow + r, inv + r);
        else weigh_rows(prow + r, v_cache, table, block_size, stride, h, nk, 2, 32, orow + r, inv + r);
    }
    for (; r < nrows; r++) {
        if (D == 64) weigh_rows(prow + r, v_cache, table, block_size, stride, h, nk, 1, 64, orow + r, inv + r);
        else if (D == 128) weigh_rows(prow + r, v_cache, table, block_size, stride, h, nk, 1, 128, orow + r, inv + r);
        else weigh_rows(prow + r, v_cache, table, block_size, stride, h, nk, 1, 32, orow + r, inv + r);
    }
}
#endif
