"""A fused FP4 matmul for the CPU: y = x @ W.T with W packed E2M1 (two codes per byte) and its
block scales, decoded in registers block by block, never materialised as a dense tile.

Why: dequantising an expert into a float tile and then calling BLAS touches every weight element
in memory twice more than the packed bytes (write the tile, read it back) and runs through several
generic torch ops; at decode-sized batches that costs more than the matmul itself (measured in
docs/architecture.md). This kernel reads the packed bytes and one scale byte per block, decodes
through two small tables (16 E2M1 values, 256 scale values) and accumulates the block's dot
products for every activation row before moving on, so the weights stream through once.

It is a few lines of C compiled with the system C compiler on first use (no torch headers: about
a second) into ~/.cache/agentrt/ (or $AGENTRT_CACHE_DIR), keyed by the source and compiler
flags, and called through ctypes (which releases the GIL). Without a working compiler
`available()` is False and callers use the torch path (`FP4Tensor.dequantize` + matmul), which is
also this kernel's test oracle.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from engine.moe.fp4 import FP4Tensor

logger = logging.getLogger(__name__)

MAX_ROWS = 16  # activation rows per call (decode-sized); larger batches use dequantise + BLAS

_SOURCE = r"""
#include <stdint.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

static const float E2M1[16] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,
                               -0.f, -0.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};

/* Decode one block's B / 2 packed bytes into B floats, times `half` (the caller passes 1.0 or
   the AVX2 path's 0.5 correction: it decodes twice the E2M1 value, an exact small integer). */
static inline void decode_block(const uint8_t *pb, int64_t B, float *w) {
#ifdef __AVX2__
    if (B % 16 == 0) {
        const __m128i lut = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
        const __m128i nib = _mm_set1_epi8(0x0F);
        const __m256 half = _mm256_set1_ps(0.5f);
        for (int64_t j = 0; j < B / 2; j += 8) {
            __m128i v = _mm_loadl_epi64((const __m128i *)(pb + j));
            __m128i codes = _mm_unpacklo_epi8(_mm_and_si128(v, nib), _mm_and_si128(_mm_srli_epi16(v, 4), nib));
            __m128i twice = _mm_shuffle_epi8(lut, codes); /* 16 values x 2, in k order */
            _mm256_storeu_ps(w + 2 * j, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(twice)), half));
            _mm256_storeu_ps(w + 2 * j + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(twice, 8))), half));
        }
        return;
    }
#endif
    for (int64_t j = 0; j < B / 2; j++) {
        const uint8_t v = pb[j];
        w[2 * j] = E2M1[v & 15];
        w[2 * j + 1] = E2M1[v >> 4];
    }
}

/* y[m, n] = row_scale[n] * sum_b scale_lut[scales[n, b]] * sum_{k in block b} E2M1(code[n, k]) * x[m, k]
   x: [M, K] fp32 row-major (M <= 16); packed: [N, K/2] bytes (even k in the low nibble), row stride
   stride_p; scales: [N, K/B] bytes, row stride stride_s; y: [M, N] fp32. */
void fp4_matmul(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t stride_p,
                const uint8_t *scales, int64_t stride_s, const float *scale_lut, const float *row_scale,
                int64_t N, int64_t B, float *y, int64_t threads)
{
    const int64_t nb = K / B;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *p = packed + n * stride_p;
        const uint8_t *s = scales + n * stride_s;
        float w[32];
#ifdef __AVX2__
        if (B == 16 || B == 32) {  /* 8-wide partial sums per row, one horizontal sum at the end */
            __m256 acc[16];
            for (int64_t m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                decode_block(p + b * (B / 2), B, w);
                const __m256 sc = _mm256_set1_ps(scale_lut[s[b]]);
                const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
                for (int64_t m = 0; m < M; m++) {
                    const float *xm = x + m * K + b * B;
                    __m256 t = _mm256_mul_ps(w0, _mm256_loadu_ps(xm));
                    t = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xm + 8), t);
                    if (B == 32) {
                        t = _mm256_fmadd_ps(_mm256_loadu_ps(w + 16), _mm256_loadu_ps(xm + 16), t);
                        t = _mm256_fmadd_ps(_mm256_loadu_ps(w + 24), _mm256_loadu_ps(xm + 24), t);
                    }
                    acc[m] = _mm256_fmadd_ps(t, sc, acc[m]);
                }
            }
            for (int64_t m = 0; m < M; m++) {
                __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
                h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
                y[m * N + n] = _mm_cvtss_f32(h) * row_scale[n];
            }
            continue;
        }
#endif
        float acc[16] = {0};
        for (int64_t b = 0; b < nb; b++) {
            decode_block(p + b * (B / 2), B, w);
            const float sc = scale_lut[s[b]];
            for (int64_t m = 0; m < M; m++) {
                const float *xm = x + m * K + b * B;
                float d = 0.f;
                for (int64_t j = 0; j < B; j++) d += w[j] * xm[j];
                acc[m] += d * sc;
            }
        }
        for (int64_t m = 0; m < M; m++) y[m * N + n] = acc[m] * row_scale[n];
    }
}
"""

# Vectorise the block dot products (reassociation) without -ffast-math's no-NaN assumption:
# NaN scales must still poison their outputs.
_FLAGS = ["-O3", "-march=native", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC"]


def _cache_dir() -> Path:
    return Path(os.environ.get("AGENTRT_CACHE_DIR") or Path.home() / ".cache" / "agentrt")


@functools.cache
def _library() -> ctypes.CDLL | None:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler found: FP4 experts on the CPU use the dequantise + matmul path")
        return None
    key = hashlib.sha256((_SOURCE + " ".join(_FLAGS) + compiler).encode()).hexdigest()[:16]
    target = _cache_dir() / f"fp4_matmul_{key}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                src, out = Path(tmp) / "fp4_matmul.c", Path(tmp) / "fp4_matmul.so"
                src.write_text(_SOURCE)
                subprocess.run([compiler, *_FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, timeout=120)
                os.replace(out, target)  # atomic: concurrent builders race harmlessly
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = exc.stderr.decode(errors="replace")[-500:] if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else str(exc)
        logger.warning("could not build the CPU FP4 kernel (%s): using the dequantise + matmul path", detail)
        return None
    fn = lib.fp4_matmul
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [ptr, i64, i64, ptr, i64, ptr, i64, ptr, ptr, i64, i64, ptr, i64]
    fn.restype = None
    return lib


def available() -> bool:
    """Whether the compiled kernel can be used (builds it on the first call)."""
    return _library() is not None


@functools.cache
def _scale_lut(fmt: str) -> torch.Tensor:
    """fp32 value of every scale byte: FP8 E4M3 bits (NVFP4) or E8M0 exponents (MXFP4, 255 = NaN)."""
    codes = torch.arange(256, dtype=torch.int32)
    if fmt == "nvfp4":
        return codes.to(torch.uint8).view(torch.float8_e4m3fn).float()
    return torch.where(codes == 255, torch.tensor(float("nan")), torch.exp2(codes.float() - 127))


def fp4_matmul(x: torch.Tensor, weight: FP4Tensor, row_scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight.T for a 2-D packed weight [N, K] -> [M, N] fp32 (x cast to fp32).

    `row_scale` [N] fp32: each row's second-level scale (`FP4Tensor.row_scales()`). Raises
    ValueError on shape mismatches, M > MAX_ROWS or a non-CPU tensor; RuntimeError if the kernel
    is not available (check `available()` first)."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the CPU FP4 kernel is not available (no C compiler?)")
    n, k = weight.shape
    if x.dim() != 2 or x.shape[1] != k or x.shape[0] > MAX_ROWS:
        raise ValueError(f"x must be [M <= {MAX_ROWS}, {k}], got {tuple(x.shape)}")
    if x.device.type != "cpu" or weight.packed.device.type != "cpu":
        raise ValueError("fp4_matmul runs on CPU tensors")
    if row_scale.shape != (n,):
        raise ValueError(f"row_scale must be [{n}], got {tuple(row_scale.shape)}")
    xc = x.float().contiguous()
    packed, scales = weight.packed, weight.scales.view(torch.uint8)
    if packed.stride(1) != 1 or scales.stride(1) != 1:
        raise ValueError("packed weights and scales must be contiguous along K")
    rs = row_scale.float().contiguous()
    lut = _scale_lut(weight.fmt)
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    if x.shape[0]:
        lib.fp4_matmul(xc.data_ptr(), xc.shape[0], k, packed.data_ptr(), packed.stride(0), scales.data_ptr(), scales.stride(0),
                       lut.data_ptr(), rs.data_ptr(), n, weight.block, y.data_ptr(), torch.get_num_threads())
    return y
