/* A whole stack of dense decoder layers in one call (see decoder.py): the same kernels the layers
   call one by one from Python (linear.c, ops.c, attention.c, moe_dense.c), in the same order on the
   same buffers, so the result is bitwise that of the per-layer path. */
#include "linear.c"
#include "ops.c"
#include "attention.c"
#include "moe_dense.c"

/* Per layer, the pointers in `ptrs` [L, DECODER_PTRS] (0: absent) and the panel dtypes in `bf16`
   [L, 3] (qkv, o, mlp; 1: bf16 panels). */
enum { P_IN_NORM, P_QKV, P_QKV_BIAS, P_Q_NORM, P_K_NORM, P_O, P_O_BIAS, P_POST_NORM, P_W13, P_W2, DECODER_PTRS };

/* x [T, H] -> out [T, H] through L layers of
       h = x + o_proj(attention(prologue(qkv_proj(rms_norm(x)))));  out = h + mlp(rms_norm(h))
   with the paged KV caches k, v [L', num_blocks, block_size, Hkv, D] (layer l at l * layer_stride
   floats) and this step's attention metadata (see attention.c). The MLP is a SwiGLU of padded
   intermediate size IP packed as one always-routed expert (moe_dense.c). scratch: T * (6 H + Nqkv +
   2 Hq D + IP) floats; iscratch: 2 T + 4 int64; ones [T] fp32 of 1, zeros [T] int64 of 0.
   Returns 0, -1 for a slot outside the cache, -2 when the attention kernel refuses the step. */
int64_t decoder_layers(const float *x, int64_t T, int64_t H, int64_t L, const int64_t *ptrs, const int64_t *bf16,
                       int64_t Nqkv, int64_t Hq, int64_t Hkv, int64_t D, int64_t IP, float eps, float head_eps, float scale,
                       const float *cos_t, const float *sin_t, float *k_cache, float *v_cache, int64_t layer_stride,
                       int64_t capacity, const int64_t *slots, int64_t num_seqs, const int64_t *cu_q, const int64_t *ctx_lens,
                       const int64_t *block_tables, int64_t max_blocks, int64_t block_size, int64_t tiled_min_rows,
                       const int64_t *tune_linear, const int64_t *tune_attention, float *scratch, int64_t *iscratch,
                       const float *ones, const int64_t *zeros, float *out, int64_t threads)
{
    const int64_t QD = Hq * D;
    float *normed = scratch, *qkv = normed + T * H, *q = qkv + T * Nqkv, *att = q + T * QD, *tmp = att + T * QD;
    float *h = tmp + T * H, *cur = h + T * H, *mlp_scratch = cur + T * H;
    const float *in = x;
    for (int64_t l = 0; l < L; l++) {
        const int64_t *p = ptrs + l * DECODER_PTRS, *b = bf16 + l * 3;
        float *kc = k_cache + l * layer_stride, *vc = v_cache + l * layer_stride;
        rms_norm(in, T, H, (const float *)p[P_IN_NORM], eps, normed, threads);
        packed_linear(normed, T, H, H, (const void *)p[P_QKV], b[0], Nqkv, (const float *)p[P_QKV_BIAS], qkv, Nqkv, threads, tune_linear);
        if (attention_prologue(qkv, T, Nqkv, Hq, Hkv, D, cos_t, sin_t, (const float *)p[P_Q_NORM], (const float *)p[P_K_NORM],
                               head_eps, kc, vc, slots, capacity, q, threads))
            return -1;
        if (paged_attention(q, num_seqs, cu_q, ctx_lens, block_tables, max_blocks, kc, vc, block_size, Hq, Hkv, D, scale, att,
                            threads, tiled_min_rows, 0, 0, tune_attention, 0))
            return -2;
        packed_linear(att, T, QD, QD, (const void *)p[P_O], b[1], H, (const float *)p[P_O_BIAS], tmp, H, threads, tune_linear);
        for (int64_t i = 0; i < T * H; i++) h[i] = in[i] + tmp[i];
        rms_norm(h, T, H, (const float *)p[P_POST_NORM], eps, normed, threads);
        dense_moe(normed, T, H, IP, 1, zeros, ones, (const void *)p[P_W13], (const void *)p[P_W2], b[2], 1, tmp, mlp_scratch,
                  iscratch, threads, 0, 0, 0.f, 0.f, tune_linear);
        float *dst = l == L - 1 ? out : cur;
        for (int64_t i = 0; i < T * H; i++) dst[i] = h[i] + tmp[i];
        in = dst;
    }
    return 0;
}
