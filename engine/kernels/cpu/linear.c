#include "panel.h"

/* How packed_linear splits its work between threads (see autotune.py; none of it changes a single
   sum: each output is one FMA chain over k in order whatever tile or item it falls in):
   tune[0] panels per work item (1, 2, 4 or 8; walked two at a time), tune[1] rows per tile (1..MR),
   tune[2] item order (0: panel-group-major, a thread's run of items walks each panel group with
   every row tile while it is cached; 1: row-tile-major), tune[3] the work (M x K x panels) below
   which one thread runs it all (OpenMP's fork costs more than it saves), tune[4] the k-block of
   k-blocked tiles (panel.h rows_panels_kblocked; AVX2 builds, more rows than one tile and at most
   KB_MAX_ROWS: an item is then a panel group with all rows, tune[2] does not apply; 0: each tile
   walks K whole, the reference). tune = 0: the defaults. On one Zen 3 core (AVX2, b16 decode
   shapes of the qwen3 benchmark, weights streamed from memory, thread_time) the k-blocked tiles
   took 24.6 ms where whole-K ones took 30.6 (load average ~7). */
static const int64_t LINEAR_DEFAULTS[5] = {2, MR, 0, 8192, KBLOCK_DEFAULT};

/* y[M, N] (row stride ldy) = x[M, K] (row stride ldx) @ W^T (+ bias[N]), W packed as panels
   [ceil(N / 16), K, 16] of fp32 (bf16 = 0) or bf16 bits (bf16 = 1), zero past N. */
void packed_linear(const float *x, int64_t M, int64_t ldx, int64_t K, const void *w, int64_t bf16, int64_t N,
                   const float *bias, float *y, int64_t ldy, int64_t threads, const int64_t *tune)
{
    const int64_t *t = tune ? tune : LINEAR_DEFAULTS;
    const int64_t grain = t[0] >= 1 && t[0] <= 8 ? t[0] : 2, mr = t[1] >= 1 && t[1] <= MR ? t[1] : MR, by_rows = t[2] == 1;
    const int64_t panels = (N + PANEL - 1) / PANEL, groups = (panels + grain - 1) / grain, tiles = (M + mr - 1) / mr;
#ifdef __AVX2__
    const int64_t kb = t[4];
    if (kblocked(kb, K, M, mr)) {
        #pragma omp parallel for schedule(static) num_threads(threads) if (panels * M * K >= t[3])
        for (int64_t q = 0; q < groups; q++) {
            const int64_t end = (q + 1) * grain < panels ? (q + 1) * grain : panels;
            for (int64_t p = q * grain; p < end; p += 2)
                rows_panels_kblocked(x, M, ldx, w, (int)bf16, K, bias, y, ldy, p, end - p < 2 ? 1 : 2, N, 0, (int)mr, kb);
        }
        return;
    }
#endif
    #pragma omp parallel for schedule(static) num_threads(threads) if (panels * M * K >= t[3])
    for (int64_t item = 0; item < groups * tiles; item++) {
        const int64_t q = by_rows ? item % groups : item / tiles, m0 = (by_rows ? item / groups : item % tiles) * mr;
        const int64_t end = (q + 1) * grain < panels ? (q + 1) * grain : panels;
        for (int64_t p = q * grain; p < end; p += 2)
            tile_panels(x + m0 * ldx, ldx, w, (int)bf16, K, bias, y + m0 * ldy, ldy, p, end - p < 2 ? 1 : 2, N,
                        (int)(M - m0 < mr ? M - m0 : mr), 0);
    }
}
