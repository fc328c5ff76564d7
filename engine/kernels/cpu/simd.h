/* SIMD helpers shared by the CPU kernels (AVX2 / AVX-512 paths; each kernel keeps a scalar #else). */
#pragma once
#include <math.h>
#ifdef __AVX2__
#include <immintrin.h>
/* exp(x) = 2^n * p(r), x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial (~2 ulp), for x already
   clamped to [-87.3, 88.3] and n = round(x / ln2). One definition for both vector widths (P: the
   intrinsic prefix, W: the width in bits): exp8 and exp16 differ only in how they clamp and mask. */
#define DEFINE_EXP_CORE(NAME, P, W)                                                                  \
static inline __m##W NAME(__m##W x, __m##W n) {                                                      \
    __m##W r = P##_fnmadd_ps(n, P##_set1_ps(0.693359375f), x);                                       \
    r = P##_fnmadd_ps(n, P##_set1_ps(-2.12194440e-4f), r);                                           \
    __m##W p = P##_set1_ps(1.9875691500e-4f);                                                        \
    p = P##_fmadd_ps(p, r, P##_set1_ps(1.3981999507e-3f));                                           \
    p = P##_fmadd_ps(p, r, P##_set1_ps(8.3334519073e-3f));                                           \
    p = P##_fmadd_ps(p, r, P##_set1_ps(4.1665795894e-2f));                                           \
    p = P##_fmadd_ps(p, r, P##_set1_ps(1.6666665459e-1f));                                           \
    p = P##_fmadd_ps(p, r, P##_set1_ps(5.0000001201e-1f));                                           \
    p = P##_fmadd_ps(p, P##_mul_ps(r, r), P##_add_ps(r, P##_set1_ps(1.f)));                          \
    const __m##W##i e = P##_slli_epi32(P##_add_epi32(P##_cvtps_epi32(n), P##_set1_epi32(127)), 23); \
    return P##_mul_ps(p, P##_castsi##W##_ps(e));                                                     \
}

DEFINE_EXP_CORE(exp_core8, _mm256, 256)

/* exp(x) for 8 floats. Inputs below -87.3 give 0, so masked (-inf) scores vanish. */
static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_andnot_ps(under, exp_core8(x, n));
}

#ifdef __AVX512F__
DEFINE_EXP_CORE(exp_core16, _mm512, 512)

/* exp8 on 16 lanes; NaN lanes stay NaN. */
static inline __m512 exp16(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.3f), x0 = x;
    const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ), nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_mask_mov_ps(_mm512_maskz_mov_ps(keep, exp_core16(x, n)), nan, x0);
}
#endif

/* silu(g) * u for 8 lanes (the SwiGLU of an MoE expert) */
static inline __m256 swiglu8(__m256 g, __m256 u) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.f), e)), u);
}

/* gpt-oss's clamped GLU for 8 lanes: g = min(g, limit), u = clamp(u, -limit, limit),
   (u + 1) * g * sigmoid(alpha * g). min/max take the limit first so a NaN input stays NaN. */
static inline __m256 clamped_glu8(__m256 g, __m256 u, __m256 limit, __m256 alpha) {
    g = _mm256_min_ps(limit, g);
    u = _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), limit), _mm256_min_ps(limit, u));
    const __m256 e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), alpha), g));
    return _mm256_mul_ps(_mm256_add_ps(u, _mm256_set1_ps(1.f)), _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.f), e)));
}
#endif

/* The scalar clamped GLU (the vector form's remainder and the non-AVX2 build). */
static inline float clamped_glu1(float g, float u, float limit, float alpha) {
    g = g > limit ? limit : g;
    u = u > limit ? limit : u < -limit ? -limit : u;
    return (u + 1.f) * g / (1.f + expf(-alpha * g));
}
