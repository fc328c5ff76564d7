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

/* Inside a parallel region: out[t] = sum over slots s (in order) of topw[t, s] * ye[pos[t, s]]. */
static void combine_pairs(const float *ye, int64_t H, int64_t topk, const float *topw, const int64_t *pos, int64_t T, float *out) {
    #pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++) {
        float *o = out + t * H;
        for (int64_t h = 0; h < H; h++) o[h] = 0.f;
        for (int64_t s = 0; s < topk; s++) {
            const float w = topw[t * topk + s];
            const float *y = ye + pos[t * topk + s] * H;
            for (int64_t h = 0; h < H; h++) o[h] += w * y[h];
        }
    }
}
