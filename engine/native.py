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
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

# Vectorise dot products (reassociation) without -ffast-math's no-NaN assumption: NaN inputs must
# still poison their outputs.
FLAGS = ("-O3", "-march=native", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC")
LIBS = ("-lm",)

I64 = ctypes.c_int64
F32 = ctypes.c_float
PTR = ctypes.c_void_p


def cache_dir() -> Path:
    return Path(os.environ.get("AGENTRT_CACHE_DIR") or Path.home() / ".cache" / "agentrt")


@functools.cache
def build(name: str, source: str, signatures: tuple[tuple[str, tuple[type, ...]], ...]) -> ctypes.CDLL | None:
    """Compile `source` (once per content) and load it, declaring each (function, argtypes) of
    `signatures` (all return void). Returns None, with a warning, when no compiler works."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler found: the %s CPU kernels are off (torch path instead)", name)
        return None
    key = hashlib.sha256((source + " ".join(FLAGS) + compiler).encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}_{key}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
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
    for fn_name, argtypes in signatures:
        fn = getattr(lib, fn_name)
        fn.argtypes = list(argtypes)
        fn.restype = None
    return lib
