#include "panel.h"

/* y[M, N] (row stride ldy) = x[M, K] (row stride ldx) @ W^T (+ bias[N]), W packed as panels
   [ceil(N / 16), K, 16] of fp32 (bf16 = 0) or bf16 bits (bf16 = 1), zero past N. */
void packed_linear(const float *x, int64_t M, int64_t ldx, int64_t K, const void *w, int64_t bf16, int64_t N,
                   const float *bias, float *y, int64_t ldy, int64_t threads)
{
    const int64_t panels = (N + PANEL - 1) / PANEL, pairs = (panels + 1) / 2, tiles = (M + MR - 1) / MR;
    /* Pair-major items: a thread's run of items walks each panel pair with every row tile while it is cached. */
    #pragma omp parallel for schedule(static) num_threads(threads) if (panels * M * K >= 8192)
    for (int64_t item = 0; item < pairs * tiles; item++) {
        const int64_t q = item / tiles, m0 = (item % tiles) * MR;
        const int64_t np = 2 * q + 1 < panels ? 2 : 1;
        tile_panels(x + m0 * ldx, ldx, w, (int)bf16, K, bias, y + m0 * ldy, ldy, 2 * q, np, N, (int)(M - m0 < MR ? M - m0 : MR), 0);
    }
}
