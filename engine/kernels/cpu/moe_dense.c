#include "moe_driver.h"
/* A MoE layer. x: [T, H]; ids, topw: [T, topk]; w13: per expert ceil(I/8) panels [H, 16] of 8 gate
   then 8 up columns; w2: per expert ceil(H/16) panels [IP, 16]; IP = intermediate size padded to 8.
   out: [T, H]. b13 NULL: SwiGLU in the gate/up tiles; else gpt-oss's biased clamped GLU (b13, b2,
   limit, alpha: see glu_params) as a pass over the gate/up sums. tune: linear.c's work split (NULL:
   its defaults), of which the tiles take the k-block (panel.h rows_panels). scratch: A * (2 H + IP) floats
   (+ A * 2 IP with b13), iscratch: 2 A + 3 E + 1 int64, A = T * topk. */
int64_t dense_moe(const float *x, int64_t T, int64_t H, int64_t IP, int64_t topk, const int64_t *ids, const float *topw,
               const void *w13, const void *w2, int64_t bf16, int64_t E, float *out, float *scratch, int64_t *iscratch,
               int64_t threads, const float *b13, const float *b2, float limit, float alpha, const int64_t *tune)
{
    const int64_t A = T * topk, esz = bf16 ? 2 : 4;
    const int64_t P1 = IP / 8, P2 = (H + PANEL - 1) / PANEL, Q1 = (P1 + 1) / 2, Q2 = (P2 + 1) / 2;
    float *xe = scratch, *a = xe + A * H, *ye = a + A * IP, *h = ye + A * H;
    const glu_params glu = {b13, b2, limit, alpha};
    const int64_t kb = tune_kblock(tune);
    int64_t nactive;
    const int64_t *start = iscratch + 2 * A, *active = start + E + 1;
    if (sort_pairs(ids, A, E, iscratch, &nactive) != 0) return -1;  /* 1. pairs sorted by expert */
    #pragma omp parallel num_threads(threads) if (A * H * IP >= 16384)
    {
        gather_rows(x, H, topk, iscratch, A, xe);
        /* 2. gate/up + SwiGLU (or the sums, then the clamped GLU), per (expert, pair of panels) */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < nactive * Q1; item++) {
            const int64_t e = active[item / Q1], q = item % Q1, r0 = start[e];
            const char *we = (const char *)w13 + e * P1 * H * PANEL * esz;
            if (b13) rows_panels(xe + r0 * H, start[e + 1] - r0, H, we, (int)bf16, H, 0, h + r0 * 2 * IP, 2 * IP, 2 * q, 2 * q + 1 < P1 ? 2 : 1, 2 * IP, 0, kb);
            else rows_panels(xe + r0 * H, start[e + 1] - r0, H, we, (int)bf16, H, 0, a + r0 * IP, IP, 2 * q, 2 * q + 1 < P1 ? 2 : 1, 2 * IP, 1, kb);
        }
        if (b13) clamped_glu_rows(h, A, IP, ids, iscratch, &glu, a);
        /* 3. down projection, per (expert, pair of panels) */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < nactive * Q2; item++) {
            const int64_t e = active[item / Q2], q = item % Q2, r0 = start[e];
            rows_panels(a + r0 * IP, start[e + 1] - r0, IP, (const char *)w2 + e * P2 * IP * PANEL * esz, (int)bf16, IP, 0,
                        ye + r0 * H, H, 2 * q, 2 * q + 1 < P2 ? 2 : 1, H, 0, kb);
        }
        /* 4. weighted sum per token, slots in order */
        combine_pairs(ye, H, topk, topw, iscratch + A, T, b2, ids, out);
    }
    return 0;
}
