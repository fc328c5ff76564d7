"""Triton kernels for the CUDA path. Triton is imported lazily: the modules holding `@triton.jit`
functions (`attention_kernels`, `moe_kernels`) are imported only when a kernel is launched."""
