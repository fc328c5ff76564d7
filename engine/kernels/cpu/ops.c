/* The small per-layer CPU ops (see ops.py): RMSNorm, attention prologue, top-k routing. */
#include <stdint.h>
#include <string.h>
#include <math.h>

static inline void norm_row(const float *x, const float *w, float eps, int64_t D, float *y) {
    float ss = 0.f;
    for (int64_t i = 0; i < D; i++) ss += x[i] * x[i];
    const float r = 1.f / sqrtf(ss / (float)D + eps);
    for (int64_t i = 0; i < D; i++) y[i] = x[i] * r * w[i];
}

void rms_norm(const float *x, int64_t rows, int64_t D, const float *w, float eps, float *y, int64_t threads) {
    #pragma omp parallel for schedule(static) num_threads(threads) if (rows * D >= 65536)
    for (int64_t r = 0; r < rows; r++) norm_row(x + r * D, w, eps, D, y + r * D);
}

/* head [D] -> out [D]: optional RMSNorm (w != 0), then rotate-half RoPE with cos/sin [D]. */
static inline void norm_rope(const float *head, const float *w, float eps, const float *cs, const float *sn, int64_t D, float *out) {
    float t[512];
    if (w) norm_row(head, w, eps, D, t);
    else memcpy(t, head, D * sizeof(float));
    const int64_t half = D / 2;
    for (int64_t i = 0; i < half; i++) {
        out[i] = t[i] * cs[i] - t[i + half] * sn[i];
        out[i + half] = t[i + half] * cs[i + half] + t[i] * sn[i + half];
    }
}

/* qkv [T, (Hq + 2 Hkv) D] (row stride ldq); cos/sin [T, D]; q_w/k_w [D] or 0; caches [slots, Hkv, D];
   slots [T] -> q [T, Hq, D]. */
int64_t attention_prologue(const float *qkv, int64_t T, int64_t ldq, int64_t Hq, int64_t Hkv, int64_t D, const float *cos_t,
                        const float *sin_t, const float *q_w, const float *k_w, float eps, float *k_cache, float *v_cache,
                        const int64_t *slots, int64_t capacity, float *q, int64_t threads) {
    for (int64_t t = 0; t < T; t++)
        if (slots[t] < 0 || slots[t] >= capacity) return -1;
    #pragma omp parallel for schedule(static) num_threads(threads) if (T * (Hq + Hkv) * D >= 65536)
    for (int64_t t = 0; t < T; t++) {
        const float *row = qkv + t * ldq, *cs = cos_t + t * D, *sn = sin_t + t * D;
        for (int64_t h = 0; h < Hq; h++) norm_rope(row + h * D, q_w, eps, cs, sn, D, q + (t * Hq + h) * D);
        float *kd = k_cache + slots[t] * Hkv * D, *vd = v_cache + slots[t] * Hkv * D;
        for (int64_t h = 0; h < Hkv; h++) norm_rope(row + (Hq + h) * D, k_w, eps, cs, sn, D, kd + h * D);
        memcpy(vd, row + (Hq + Hkv) * D, Hkv * D * sizeof(float));
    }
    return 0;
}

/* logits [T, E] -> weights [T, k] (fp32), ids [T, k] (int64). */
void route_topk(const float *logits, int64_t T, int64_t E, int64_t k, int64_t renormalize, float *weights, int64_t *ids) {
    for (int64_t t = 0; t < T; t++) {
        const float *l = logits + t * E;
        float m = l[0];
        for (int64_t e = 1; e < E; e++) m = l[e] > m ? l[e] : m;
        float p[1024], s = 0.f;
        char taken[1024] = {0};
        for (int64_t e = 0; e < E; e++) { p[e] = expf(l[e] - m); s += p[e]; }
        float kept = 0.f;
        for (int64_t j = 0; j < k; j++) {
            int64_t best = -1;
            for (int64_t e = 0; e < E; e++)  /* NaN never wins a comparison: all-NaN rows take the lowest free ids */
                if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
            taken[best] = 1;
            ids[t * k + j] = best;
            weights[t * k + j] = p[best] / s;
            kept += p[best] / s;
        }
        if (renormalize)
            for (int64_t j = 0; j < k; j++) weights[t * k + j] /= kept;
    }
}
