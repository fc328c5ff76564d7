/* The two-pass path of the CPU paged attention (attention.c) on AVX2 machines without AVX-512:
decode rows, speculative verification and short prefill chunks (at most 32 new tokens per
sequence, as the row path). Included by attention.c.

The row path (attend_rows) runs an online softmax per 16-key block and row: a scalar max, a scalar
expf rescale, a scalar sum and a rescale of the row's D accumulators every block, which cost more
than the block's dot products. Here a work item of rows of one (sequence, KV head)
(up to TWO_PASS_ROWS, so a verification step reads its context once per KV head) makes three passes over its context instead: (1) every row's scores, block by block (the block's K
rows stay in L1 while the item's rows read them), into a scratch row per query row; (2) per row, one
softmax over all its keys (8-wide max, exp and sum, masked keys at -inf); (3) the probability-weighted
V rows, block by block, into per-row accumulators (8 vectors per 64 columns), never rescaled.

Every row's sums run in one fixed order whatever rows share its item or how long the context
is: a key's score is always computed by the same code (the 8-key tree of row_block, or the scalar
loop for the keys past a block's last multiple of 8, by the key's place in its block, not by the
context length), the softmax runs over the row's own keys, and the V sum over them in order. So
a token decoded alone equals, bitwise, the same token verified among drafts. The path rounds
differently from the row path (no online rescaling); the row path stays its reference twin
(tiled_min_rows above the rows forces it; tests/engine/test_cpu_attention.py). Needs D % 8 == 0.
*/
#pragma once
#define TWO_PASS_ROWS 64  /* query rows per work item of the two-pass path (17 tokens x 2 heads, 32 x 2) */

#if defined(__AVX2__) && !defined(__AVX512F__)
/* exp8 that keeps NaN lanes NaN (a NaN query must poison its row, as in the tiled path). */
static inline __m256 exp8_nan(__m256 x) {
    return _mm256_blendv_ps(exp8(x), x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

#define AI static inline __attribute__((always_inline))

/* Scores of R rows for the 8 keys kb + (0..7) * stride: dst[i][0..8) = scale * q_i . k_j. Four keys at a
   time share their K loads between the rows; each score is the 8-key tree of row_block (one FMA chain
   over d, then ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) of its lanes), whatever R is. */
AI void score_chunk(const float *const *qr, const float *kb, int64_t stride, const int R, const int64_t D, float scale,
                    float *const *dst)
{
    const __m128 vs = _mm_set1_ps(scale);
    for (int64_t u0 = 0; u0 < 8; u0 += 4) {
        __m256 a[2][4];
        for (int i = 0; i < R; i++)
            for (int u = 0; u < 4; u++) a[i][u] = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; d += 8) {
            __m256 k[4];
            for (int u = 0; u < 4; u++) k[u] = _mm256_loadu_ps(kb + (u0 + u) * stride + d);
            for (int i = 0; i < R; i++) {
                const __m256 qd = _mm256_loadu_ps(qr[i] + d);
                for (int u = 0; u < 4; u++) a[i][u] = _mm256_fmadd_ps(qd, k[u], a[i][u]);
            }
        }
        for (int i = 0; i < R; i++) {
            const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a[i][0], a[i][1]), _mm256_hadd_ps(a[i][2], a[i][3]));
            _mm_storeu_ps(dst[i] + u0, _mm_mul_ps(_mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)), vs));
        }
    }
}

/* The score of one key past a block's last multiple of 8 (block sizes that are not one): the same tree. */
AI float score_one(const float *qr, const float *kr, const int64_t D, float scale)
{
    __m256 a = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qr + d), _mm256_loadu_ps(kr + d), a);
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, a), _mm256_hadd_ps(a, a));
    return _mm_cvtss_f32(_mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1))) * scale;
}

/* Softmax of one row's n scores in place (entries n .. round8(n) - 1 are overwritten); returns 1 / sum. */
static inline float softmax_row8(float *s, int64_t n)
{
    const int64_t n8 = (n + 7) / 8 * 8;
    for (int64_t j = n; j < n8; j++) s[j] = -INFINITY;
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n8; j += 8) mx = _mm256_max_ps(_mm256_loadu_ps(s + j), mx);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const __m256 m = _mm256_broadcastss_ps(m4);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < n8; j += 8) {
        const __m256 e = exp8_nan(_mm256_sub_ps(_mm256_loadu_ps(s + j), m));
        _mm256_storeu_ps(s + j, e);
        sum = _mm256_add_ps(sum, e);
    }
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return 1.f / _mm_cvtss_f32(s4);
}

/* acc_i[0..D) += sum_j p_i[j] v_j over the n keys of one block (rows vb + j * stride) for R rows, 32
   columns at a time: each V load serves R FMAs; each element's sum runs over the keys in order. */
AI void weigh_chunk(const float *const *p, const float *vb, int64_t stride, int64_t n, float *const *acc, const int R,
                    const int64_t D)
{
    for (int64_t c0 = 0; c0 < D; c0 += 32) {
        const int64_t nc = D - c0 < 32 ? (D - c0) / 8 : 4;
        __m256 o[3][4];
        for (int i = 0; i < R; i++)
            for (int64_t c = 0; c < nc; c++) o[i][c] = _mm256_loadu_ps(acc[i] + c0 + 8 * c);
        for (int64_t j = 0; j < n; j++) {
            __m256 pj[3];
            for (int i = 0; i < R; i++) pj[i] = _mm256_broadcast_ss(p[i] + j);
            const float *vr = vb + j * stride + c0;
            for (int64_t c = 0; c < nc; c++) {
                const __m256 vv = _mm256_loadu_ps(vr + 8 * c);
                for (int i = 0; i < R; i++) o[i][c] = _mm256_fmadd_ps(pj[i], vv, o[i][c]);
            }
        }
        for (int i = 0; i < R; i++)
            for (int64_t c = 0; c < nc; c++) _mm256_storeu_ps(acc[i] + c0 + 8 * c, o[i][c]);
    }
}

/* Rows r0 .. r0 + nrows - 1 (nrows <= TWO_PASS_ROWS) of one (sequence, KV head) with q_len new tokens
   (row r: token r / G, query head h * G + r % G), D % 8 == 0. sc: scratch of nrows * (ld + D)
   floats, ld = round8(blocks of the context * block_size). */
AI void attend_two_pass(const float *q, int64_t q_row0, int64_t q_len, int64_t ctx, int64_t G, int64_t Hq, int64_t h,
                        int64_t r0, int64_t nrows, const int64_t *table, const float *k_cache, const float *v_cache,
                        int64_t block_size, int64_t Hkv, const int64_t D, float scale, float *out, float *sc,
                        const int64_t *par)
{
    const int64_t stride = Hkv * D, prefix = ctx - q_len;
    int64_t pos[TWO_PASS_ROWS], lim[TWO_PASS_ROWS], depth[32], last = 0;
    const float *qr[TWO_PASS_ROWS + 1];
    /* A tree (par: the parent of each new token among the earlier ones, -1: the prefix's last token) puts
       new token t at position prefix + depth(t); it sees the prefix through the block table and its
       ancestors (new tokens at positions prefix + their index) in their depth order: the tail pass below.
       Without a tree, depth(t) = t and a row reads all its keys in block order. */
    for (int64_t t = 0; t < q_len; t++) depth[t] = par ? (par[t] < 0 ? 0 : depth[par[t]] + 1) : t;
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t t = (r0 + r) / G, g = (r0 + r) % G;
        pos[r] = prefix + depth[t];
        lim[r] = par ? prefix - 1 : pos[r];  /* the last key read in block order */
        if (pos[r] > last) last = pos[r];
        qr[r] = q + ((q_row0 + t) * Hq + h * G + g) * D;
    }
    qr[nrows] = qr[nrows - 1];
    const int64_t nblocks = par ? (prefix + block_size - 1) / block_size : last / block_size + 1, ld = ((last / block_size + 1) * block_size + 7) / 8 * 8;
    const int64_t full = block_size / 8 * 8;
    float *acc = sc + nrows * ld;
    /* pass 1: scores, block by block; rows (in order of position) that see a key of an 8-key chunk, two at a time */
    for (int64_t b = 0; b < nblocks; b++) {
        const int64_t key0 = b * block_size;
        const float *kb = k_cache + (table[b] * block_size * Hkv + h) * D;
        for (int64_t j0 = 0; j0 < full; j0 += 8) {
            int64_t r = 0;
            while (r < nrows && lim[r] < key0 + j0) r++;
            for (; r < nrows; r += 2) {
                float *dst[2] = {sc + r * ld + key0 + j0, sc + (r + 1) * ld + key0 + j0};
                if (r + 1 < nrows) score_chunk(qr + r, kb + j0 * stride, stride, 2, D, scale, dst);
                else score_chunk(qr + r, kb + j0 * stride, stride, 1, D, scale, dst);
            }
        }
        for (int64_t j = full; j < block_size; j++)
            for (int64_t r = 0; r < nrows; r++)
                if (lim[r] >= key0 + j) sc[r * ld + key0 + j] = score_one(qr[r], kb + j * stride, D, scale);
    }
    int64_t anc[TWO_PASS_ROWS][32];  /* tree rows: the new token at each depth of their path */
    if (par)  /* the tail: each ancestor's score at its depth's index, computed as plain decoding computes it */
        for (int64_t r = 0; r < nrows; r++)
            for (int64_t t = (r0 + r) / G, i = depth[t]; i >= 0; t = par[t], i--) {
                const int64_t key = prefix + t;
                anc[r][i] = key;
                sc[r * ld + prefix + i] = score_one(qr[r], k_cache + ((table[key / block_size] * block_size + key % block_size) * Hkv + h) * D,
                                                    D, scale);
            }
    /* pass 2: each row's softmax over its own keys */
    float inv[TWO_PASS_ROWS];
    for (int64_t r = 0; r < nrows; r++) {
        inv[r] = softmax_row8(sc + r * ld, pos[r] + 1);
        for (int64_t d = 0; d < D; d++) acc[r * D + d] = 0.f;
    }
    /* pass 3: the weighted V rows, block by block; two or three rows that see the same keys of a block together */
    for (int64_t b = 0; b < nblocks; b++) {
        const int64_t key0 = b * block_size;
        const float *vb = v_cache + (table[b] * block_size * Hkv + h) * D;
        for (int64_t r = 0; r < nrows;) {
#define SEEN(i) (lim[i] + 1 - key0 < block_size ? lim[i] + 1 - key0 : block_size)  /* keys of the block row i sees */
            const int64_t n = SEEN(r);
            if (n <= 0) { r++; continue; }
            int R = 1;  /* rows r .. r + R - 1 see the same n keys; groups of 3, but 2 + 2 rather than 3 + 1 */
            while (R < 4 && r + R < nrows && SEEN(r + R) == n) R++;
            if (R == 4) R = r + 4 < nrows && SEEN(r + 4) == n ? 3 : 2;
#undef SEEN
            const float *p[3] = {sc + r * ld + key0, sc + (r + R / 2) * ld + key0, sc + (r + R - 1) * ld + key0};
            float *a[3] = {acc + r * D, acc + (r + R / 2) * D, acc + (r + R - 1) * D};
            if (R == 3) weigh_chunk(p, vb, stride, n, a, 3, D);
            else if (R == 2) weigh_chunk(p, vb, stride, n, a, 2, D);
            else weigh_chunk(p, vb, stride, n, a, 1, D);
            r += R;
        }
    }
    if (par)  /* the tail's V rows after the prefix's, in depth order: each element's sum in plain decoding's order */
        for (int64_t r = 0; r < nrows; r++)
            for (int64_t i = 0; i <= pos[r] - prefix; i++) {
                const int64_t key = anc[r][i];
                const float *p[1] = {sc + r * ld + prefix + i};
                float *a[1] = {acc + r * D};
                weigh_chunk(p, v_cache + ((table[key / block_size] * block_size + key % block_size) * Hkv + h) * D, stride, 1, a, 1, D);
            }
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t t = (r0 + r) / G, g = (r0 + r) % G;
        float *o = out + ((q_row0 + t) * Hq + h * G + g) * D;
        const __m256 vi = _mm256_set1_ps(inv[r]);
        for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(acc + r * D + d), vi));
    }
}
#undef AI
#endif

/* Whether the two-pass path runs here for this head size. */
int64_t two_pass_supported(int64_t D) {
#if defined(__AVX2__) && !defined(__AVX512F__)
    return D % 8 == 0;
#else
    (void)D;
    return 0;
#endif
}
