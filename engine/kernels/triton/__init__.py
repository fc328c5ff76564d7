"""Triton kernels for the CUDA path. Triton is imported lazily: the modules holding `@triton.jit`
functions (`attention_kernels`, `moe_kernels`) are imported only when a kernel is launched, so the
CPU engine imports and serves where Triton is not installed (it has wheels only for Linux
x86_64/aarch64; pyproject's environment marker installs it only there)."""

from __future__ import annotations

import functools


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (the GPU paths use it; CPU serving never needs it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
