/* Paged attention on the CPU (see attention.py): row path, tiled path, dispatcher. */
#include "simd.h"
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

#include "attention_tiled.h"
#include "attention_two_pass.h"
#include <omp.h>

/* How paged_attention splits its work between threads (see autotune.py); none of it changes a sum,
   since every row's scores, softmax and weighted sum run in one fixed order whatever item holds it:
   tune[0] query rows per tiled work item (1..TILE_ROWS), tune[1] the OpenMP schedule of the items
   (0: dynamic, one at a time; 1: static blocks), tune[2] the work (new rows x context x KV heads x
   D) below which one thread runs it all. The tiled-vs-row threshold (tiled_min_rows) is NOT
   tuned: the two paths round differently, and decode must equal verification bitwise. */
static const int64_t ATTENTION_DEFAULTS[3] = {TILE_ROWS, 0, 0};

/* q, out: [Tq, Hq, D]; sequence s owns rows cu_q[s] .. cu_q[s+1] and attends over its first
   ctx_lens[s] cached tokens, in blocks block_tables[s, :] (row stride max_blocks) of the caches
   k, v: [num_blocks, block_size <= 64, Hkv, D]. fp32 throughout. */
/* window > 0: the token at position p sees keys p - window + 1 .. p only. sinks (null: none):
   [Hq] logits that join each row's softmax denominator with no value (gpt-oss). */
static void attend_rows(const float *q, int64_t q_row0, int64_t q_len, int64_t ctx, int64_t G, int64_t Hq, int64_t h,
                        const int64_t *table, const float *k_cache, const float *v_cache, int64_t block_size, int64_t Hkv,
                        int64_t D, float scale, float *out, int64_t window, const float *sinks)
{
    const int64_t rows = q_len * G, stride = Hkv * D;
    float *acc = (float *)calloc((size_t)(rows * D + 2 * rows), sizeof(float));
    float *m = acc + rows * D, *l = m + rows;
    for (int64_t r = 0; r < rows; r++) m[r] = -INFINITY;
    const int64_t nblocks = (ctx + block_size - 1) / block_size;
    const int64_t first = window > 0 && ctx - q_len - window + 1 > 0 ? (ctx - q_len - window + 1) / block_size : 0;
    for (int64_t b = first; b < nblocks; b++) {
        const int64_t key0 = b * block_size;
        const float *kb = k_cache + (table[b] * block_size * Hkv + h) * D;
        const float *vb = v_cache + (table[b] * block_size * Hkv + h) * D;
        for (int64_t r = 0; r < rows; r++) {
            const int64_t t = r / G, g = r % G, pos = ctx - q_len + t;
            int64_t n = pos + 1 - key0;  /* keys of this block row r may see */
            if (n <= 0) continue;
            if (n > block_size) n = block_size;
            const int64_t j0 = window > 0 && pos - window + 1 > key0 ? pos - window + 1 - key0 : 0;
            if (j0 >= n) continue;
            const float *qr = q + ((q_row0 + t) * Hq + h * G + g) * D;
            const float *kj = kb + j0 * stride, *vj = vb + j0 * stride;
            if (D == 64) row_block(qr, kj, vj, stride, n - j0, scale, m + r, l + r, acc + r * D, 64);
            else if (D == 128) row_block(qr, kj, vj, stride, n - j0, scale, m + r, l + r, acc + r * D, 128);
            else row_block(qr, kj, vj, stride, n - j0, scale, m + r, l + r, acc + r * D, D);
        }
    }
    for (int64_t r = 0; r < rows; r++) {
        const int64_t t = r / G, g = r % G;
        float *o = out + ((q_row0 + t) * Hq + h * G + g) * D;
        float lr = l[r], keep = 1.f;
        if (sinks) {  /* the sink joins the denominator; rescale when it is the new maximum */
            const float sk = sinks[h * G + g];
            if (sk > m[r]) { keep = expf(m[r] - sk); lr = lr * keep + 1.f; }
            else lr += expf(sk - m[r]);
        }
        const float inv = keep / lr;
        for (int64_t d = 0; d < D; d++) o[d] = acc[r * D + d] * inv;
    }
    free(acc);
}

int64_t tiled_supported(int64_t D) {
#ifdef __AVX512F__
    return D == 32 || D == 64 || D == 128;
#else
    (void)D;
    return 0;
#endif
}

/* q, out: [Tq, Hq, D]; sequence s owns rows cu_q[s] .. cu_q[s+1] and attends over its first
   ctx_lens[s] cached tokens, in blocks block_tables[s, :] (row stride max_blocks) of the caches
   k, v: [num_blocks, block_size <= 64, Hkv, D]. fp32 throughout. Work items: (sequence, KV head)
   for the row path; (sequence, KV head, tune[0] query rows) for the tiled path, taken by every
   (sequence, KV head) with at least tiled_min_rows rows when the tiled path exists here (any
   number of new tokens; the row path is for at most 32). A sliding window or sinks (see
   attend_rows) take the row path. Returns -1 when a sequence needs the tiled path and it is not
   available. tune (0: the defaults): see ATTENTION_DEFAULTS. parents (NULL: causal rows): a token tree
   per sequence, the parent of each new token among the sequence's earlier new tokens (-1: the last
   cached token); only the two-pass path takes trees (attention_two_pass.h): -2 when a sequence of
   a tree step would take another path. */
int64_t paged_attention(const float *q, int64_t num_seqs, const int64_t *cu_q, const int64_t *ctx_lens,
                        const int64_t *block_tables, int64_t max_blocks, const float *k_cache, const float *v_cache,
                        int64_t block_size, int64_t Hq, int64_t Hkv, int64_t D, float scale, float *out, int64_t threads,
                        int64_t tiled_min_rows, int64_t window, const float *sinks, const int64_t *tune,
                        const int64_t *parents)
{
    const int64_t *t = tune ? tune : ATTENTION_DEFAULTS;
    const int64_t two_pass = two_pass_supported(D) && window <= 0 && !sinks;
    /* rows per multi-row item: tuned for the tiled path; the two-pass path's work split is fixed (one item
       per (sequence, KV head) up to TWO_PASS_ROWS rows: splitting it would read the context once more) */
    const int64_t tile_rows = two_pass ? TWO_PASS_ROWS : t[0] >= 1 && t[0] <= TILE_ROWS ? t[0] : TILE_ROWS;
    /* the multi-row path of this build: tiled (AVX-512) or two-pass (AVX2); either takes r0 >= 0 items */
    const int64_t G = Hq / Hkv, tiled = tiled_supported(D) && window <= 0 && !sinks;
    int64_t bound = 0, max_ld = 32, n = 0, any_multi = 0, work = 0;
    for (int64_t s = 0; s < num_seqs; s++) {
        bound += Hkv * ((cu_q[s + 1] - cu_q[s]) * G / tile_rows + 1);
        work += (cu_q[s + 1] - cu_q[s]) * G * Hkv * ctx_lens[s] * D;
    }
    /* item -> (sequence, head, first row; -1 = the row path) */
    int64_t *items = (int64_t *)malloc((size_t)(3 * bound + 1) * sizeof(int64_t));
    for (int64_t s = 0; s < num_seqs; s++) {
        const int64_t q_len = cu_q[s + 1] - cu_q[s], rows = q_len * G;
        const int64_t multi = (tiled || (two_pass && q_len <= 32)) && rows >= tiled_min_rows;
        if (rows <= 0) continue;
        if ((!multi && q_len > 32) || (parents && (!two_pass || !multi))) {
            free(items);
            return parents ? -2 : -1;
        }
        if (multi && ctx_lens[s] + 32 + block_size > max_ld) max_ld = ctx_lens[s] + 32 + block_size;
        any_multi |= multi;
        for (int64_t h = 0; h < Hkv; h++)
            for (int64_t r0 = 0; r0 < (multi ? rows : 1); r0 += tile_rows) {
                items[3 * n] = s; items[3 * n + 1] = h; items[3 * n + 2] = multi ? r0 : -1;
                n++;
            }
    }
    const int64_t num_items = n;
    omp_set_schedule(t[1] == 1 ? omp_sched_static : omp_sched_dynamic, t[1] == 1 ? 0 : 1);
    #pragma omp parallel num_threads(threads) if (work >= t[2])
    {
        float *scratch = 0;
        /* per item: a score row per query row, then the two-pass path's per-row accumulators or the tiled
           path's two transposed 16-key K tiles (32 x D whatever rows_per_item is tuned to) */
        const int64_t tail = two_pass ? tile_rows * D : 32 * D;
        if (any_multi) scratch = (float *)aligned_alloc(64, (size_t)((tile_rows * max_ld + tail) * sizeof(float) + 63) / 64 * 64);
        #pragma omp for schedule(runtime)
        for (int64_t i = 0; i < num_items; i++) {
            const int64_t s = items[3 * i], h = items[3 * i + 1], r0 = items[3 * i + 2];
            const int64_t q_len = cu_q[s + 1] - cu_q[s], *table = block_tables + s * max_blocks;
            (void)r0;  /* read only by the multi-row paths of the SIMD builds */
#ifdef __AVX512F__
            if (r0 >= 0) {
                const int64_t rows = q_len * G, nrows = rows - r0 < tile_rows ? rows - r0 : tile_rows;
                attend_tiled(q, cu_q[s], q_len, ctx_lens[s], G, Hq, h, r0, nrows, table, k_cache, v_cache, block_size, Hkv, D,
                             scale, out, scratch);
                continue;
            }
#elif defined(__AVX2__)
            if (r0 >= 0) {
                const int64_t rows = q_len * G, nrows = rows - r0 < tile_rows ? rows - r0 : tile_rows;
                if (D == 64)  /* constant head sizes keep the accumulators in registers */
                    attend_two_pass(q, cu_q[s], q_len, ctx_lens[s], G, Hq, h, r0, nrows, table, k_cache, v_cache, block_size, Hkv,
                                    64, scale, out, scratch, parents ? parents + cu_q[s] : 0);
                else if (D == 128)
                    attend_two_pass(q, cu_q[s], q_len, ctx_lens[s], G, Hq, h, r0, nrows, table, k_cache, v_cache, block_size, Hkv,
                                    128, scale, out, scratch, parents ? parents + cu_q[s] : 0);
                else
                    attend_two_pass(q, cu_q[s], q_len, ctx_lens[s], G, Hq, h, r0, nrows, table, k_cache, v_cache, block_size, Hkv,
                                    D, scale, out, scratch, parents ? parents + cu_q[s] : 0);
                continue;
            }
#endif
            attend_rows(q, cu_q[s], q_len, ctx_lens[s], G, Hq, h, table, k_cache, v_cache, block_size, Hkv, D, scale, out,
                        window, sinks);
        }
        free(scratch);
    }
    free(items);
    return 0;
}
