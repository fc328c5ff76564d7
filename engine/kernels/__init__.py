"""The engine's kernels: C sources for the CPU (`cpu/`, built on first use) and Triton kernels for
CUDA (`triton/`, imported lazily), plus the FP4 weight format they share with `engine.moe`.

Kernels import torch and each other, never model code (`engine.model`, `engine.moe`): the model
and MoE layers call kernels, not the reverse (tests/test_import_rules.py).
"""
