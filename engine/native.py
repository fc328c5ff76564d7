"""Small C kernels for the CPU path, built with the system C compiler on first use.

A kernel module hands its C source and ctypes signatures to `build`; the shared library is
compiled once into ~/.cache/agentrt/ (or $AGENTRT_CACHE_DIR), keyed by the source, the flags and
the compiler, and loaded through ctypes (calls release the GIL). No torch headers are needed, so a
build takes about a second. Without a working compiler `build` returns None and callers keep their
torch path, which is also every kernel's test oracle.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Vectorise dot products (reassociation) without -ffast-math's no-NaN assumption: NaN inputs must
# still poison their outputs.
FLAGS = ("-O3", "-march=native", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC")
LIBS = ("-lm",)

# Shared C helpers: kernel sources start with this (`native.SIMD_MATH + source`).
SIMD_MATH = r"""
#ifdef __AVX2__
#include <immintrin.h>
/* exp(x) for 8 floats: 2^n * p(r), x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial (~2 ulp).
   Inputs below -87.3 give 0, so masked (-inf) scores vanish. */
static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

#ifdef __AVX512F__
/* exp8 on 16 lanes (same range reduction and polynomial); NaN lanes stay NaN. */
static inline __m512 exp16(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.3f), x0 = x;
    const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ), nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mask_mov_ps(_mm512_maskz_mov_ps(keep, _mm512_mul_ps(p, _mm512_castsi512_ps(e))), nan, x0);
}
#endif

/* silu(g) * u for 8 lanes (the SwiGLU of an MoE expert) */
static inline __m256 swiglu8(__m256 g, __m256 u) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.f), e)), u);
}
#endif
"""

I64 = ctypes.c_int64
F32 = ctypes.c_float
PTR = ctypes.c_void_p


def cache_dir() -> Path:
    return Path(os.environ.get("AGENTRT_CACHE_DIR") or Path.home() / ".cache" / "agentrt")


def _trusted(path: Path) -> bool:
    """Only this user can have written it: ours, not a symlink, not group- or world-writable."""
    st = os.lstat(path)
    return not stat.S_ISLNK(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _trusted_target(filename: str) -> Path:
    """Where to keep (and load) a built library. A library found in the cache is loaded only if the
    folder and the file are trusted; otherwise it is rebuilt in a private per-process folder, since a
    name derived from the source is easy to plant for anyone who can write the cache."""
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = folder / filename
    if _trusted(folder) and (not os.path.lexists(target) or _trusted(target)):
        return target
    logger.warning("kernel cache %s (or %s in it) is not private to this user: building in a private folder", folder, filename)
    return Path(tempfile.mkdtemp(prefix="agentrt-kernels-")) / filename


@functools.cache
def build(name: str, source: str, signatures: tuple[tuple[Any, ...], ...]) -> ctypes.CDLL | None:
    """Compile `source` (once per content) and load it, declaring each (function, argtypes[, restype])
    of `signatures` (no restype: void). Returns None, with a warning, when no compiler works."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler found: the %s CPU kernels are off (torch path instead)", name)
        return None
    key = hashlib.sha256((source + " ".join(FLAGS) + compiler).encode()).hexdigest()[:16]
    try:
        target = _trusted_target(f"{name}_{key}.so")
        if not target.exists():
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                src, out = Path(tmp) / f"{name}.c", Path(tmp) / f"{name}.so"
                src.write_text(source)
                subprocess.run([compiler, *FLAGS, str(src), "-o", str(out), *LIBS], check=True, capture_output=True, timeout=120)
                os.replace(out, target)  # atomic: concurrent builders race harmlessly
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = exc.stderr.decode(errors="replace")[-500:] if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else str(exc)
        logger.warning("could not build the %s CPU kernels (%s): torch path instead", name, detail)
        return None
    for fn_name, argtypes, *restype in signatures:
        fn = getattr(lib, fn_name)
        fn.argtypes = list(argtypes)
        fn.restype = restype[0] if restype else None
    return lib
