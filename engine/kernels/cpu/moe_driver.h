/* The MoE driver's shared steps (see moe_dense.py): pairs sorted by expert, gather, combine. */
#pragma once
#include "panel.h"
/* Counting sort of the A = T * topk (token, slot) pairs by expert. iscratch: order [A] (pairs of
   expert 0 first, stable), pos [A] (inverse of order), start [E + 1], active [E] (experts with
   pairs), cursor [E]. Returns -1 for an id outside [0, E). */
static int sort_pairs(const int64_t *ids, int64_t A, int64_t E, int64_t *iscratch, int64_t *nactive) {
    int64_t *order = iscratch, *pos = order + A, *start = pos + A, *active = start + E + 1, *cursor = active + E;
    for (int64_t j = 0; j < A; j++)
        if (ids[j] < 0 || ids[j] >= E) return -1;
    for (int64_t e = 0; e <= E; e++) start[e] = 0;
    for (int64_t j = 0; j < A; j++) start[ids[j] + 1]++;
    for (int64_t e = 0; e < E; e++) start[e + 1] += start[e];
    *nactive = 0;
    for (int64_t e = 0; e < E; e++)
        if (start[e + 1] > start[e]) active[(*nactive)++] = e;
    for (int64_t e = 0; e < E; e++) cursor[e] = start[e];
    for (int64_t j = 0; j < A; j++) order[cursor[ids[j]]++] = j;
    for (int64_t r = 0; r < A; r++) pos[order[r]] = r;
    return 0;
}

/* Inside a parallel region: the token row of every sorted pair into xe [A, H]. */
static void gather_rows(const float *x, int64_t H, int64_t topk, const int64_t *order, int64_t A, float *xe) {
    #pragma omp for schedule(static)
    for (int64_t r = 0; r < A; r++) memcpy(xe + r * H, x + (order[r] / topk) * H, H * sizeof(float));
}

/* gpt-oss experts (see moe_dense.py `ClampedGlu`): biases and a clamped GLU. b13 [E, 2 IP] is in panel
   column order (per gate/up panel j: 8 gate then 8 up biases), like h's columns; b2 [E, H]. */
typedef struct {
    const float *b13, *b2;
    float limit, alpha;
} glu_params;

/* Inside a parallel region: a[r, 8j + c] = glu(h[r, 16j + c] + b13, h[r, 16j + 8 + c] + b13) for every
   sorted pair r (expert ids[order[r]]) of a gate/up result h [A, 2 IP] computed without activation. */
static void clamped_glu_rows(const float *h, int64_t A, int64_t IP, const int64_t *ids, const int64_t *order,
                             const glu_params *g, float *a) {
    #pragma omp for schedule(static)
    for (int64_t r = 0; r < A; r++) {
        const float *hr = h + r * 2 * IP, *b = g->b13 + ids[order[r]] * 2 * IP;
        float *ar = a + r * IP;
        for (int64_t j = 0; j < IP / 8; j++) {
            const float *hj = hr + 16 * j, *bj = b + 16 * j;
#ifdef __AVX2__
            const __m256 gate = _mm256_add_ps(_mm256_loadu_ps(hj), _mm256_loadu_ps(bj));
            const __m256 up = _mm256_add_ps(_mm256_loadu_ps(hj + 8), _mm256_loadu_ps(bj + 8));
            _mm256_storeu_ps(ar + 8 * j, clamped_glu8(gate, up, _mm256_set1_ps(g->limit), _mm256_set1_ps(g->alpha)));
#else
            for (int c = 0; c < 8; c++) ar[8 * j + c] = clamped_glu1(hj[c] + bj[c], hj[8 + c] + bj[8 + c], g->limit, g->alpha);
#endif
        }
    }
}

/* Inside a parallel region: out[t] = sum over slots s (in order) of topw[t, s] * (ye[pos[t, s]] + b2[ids[t, s]])
   (b2 NULL: no bias). */
static void combine_pairs(const float *ye, int64_t H, int64_t topk, const float *topw, const int64_t *pos, int64_t T,
                          const float *b2, const int64_t *ids, float *out) {
    #pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++) {
        float *o = out + t * H;
        for (int64_t h = 0; h < H; h++) o[h] = 0.f;
        for (int64_t s = 0; s < topk; s++) {
            const float w = topw[t * topk + s];
            const float *y = ye + pos[t * topk + s] * H;
            if (b2) {
                const float *b = b2 + ids[t * topk + s] * H;
                for (int64_t h = 0; h < H; h++) o[h] += w * (y[h] + b[h]);
            } else {
                for (int64_t h = 0; h < H; h++) o[h] += w * y[h];
            }
        }
    }
}
