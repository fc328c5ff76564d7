"""gpt-oss's biased clamped-GLU experts in the Triton fused MoE (dense and MXFP4, with and without
split-K) against the torch twin `moe_experts_glu`. Without CUDA the kernels run in Triton's
interpreter (TRITON_INTERPRET=1, set before triton is imported)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from engine.kernels.activation import ClampedGlu  # noqa: E402
from engine.moe.quantized import QuantizedExperts  # noqa: E402
from engine.moe.reference import moe_experts_glu  # noqa: E402
from engine.moe.routing import route  # noqa: E402
from engine.moe.triton_moe import fused_moe  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _case(tokens: int, top_k: int, seed: int, e: int = 4, h: int = 64, i: int = 64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    w13, w2 = torch.randn(e, 2 * i, h, generator=g) * 0.3, torch.randn(e, h, i, generator=g) * 0.1
    x = torch.randn(tokens, h, generator=g)
    weights, ids = route(torch.randn(tokens, e, generator=g), top_k, renormalize=True)
    return w13, w2, x, weights, ids, torch.randn(e, 2 * i, generator=g), torch.randn(e, h, generator=g)


@pytest.mark.parametrize("fmt", ["dense", "mxfp4"])
@pytest.mark.parametrize(("tokens", "top_k", "split_k"), [(1, 2, 1), (7, 3, 2)])
def test_triton_glu_equals_torch_twin(fmt: str, tokens: int, top_k: int, split_k: int) -> None:
    w13, w2, x, weights, ids, b13, b2 = _case(tokens, top_k, seed=tokens)
    glu = ClampedGlu(b13.to(DEVICE), b2.to(DEVICE), limit=1.5, alpha=1.702)
    if fmt == "dense":
        experts: QuantizedExperts | tuple[torch.Tensor, torch.Tensor] = (w13.to(DEVICE), w2.to(DEVICE))
        ref = moe_experts_glu(x, weights, ids, ClampedGlu(b13, b2, 1.5, 1.702), lambda n: (w13[n], w2[n]))
    else:
        q = QuantizedExperts(w13, w2, fmt)
        experts = q.to(DEVICE)
        ref = moe_experts_glu(x, weights, ids, ClampedGlu(b13, b2, 1.5, 1.702), lambda n: q.expert(n, torch.float32))
    out = fused_moe(x.to(DEVICE), weights.to(DEVICE), ids.to(DEVICE), experts, split_k=split_k, glu=glu)
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)


def test_glu_biases_that_do_not_fit_raise() -> None:
    w13, w2, x, weights, ids, b13, b2 = _case(2, 2, seed=0)
    with pytest.raises(ValueError, match="do not fit"):
        fused_moe(x, weights, ids, (w13, w2), glu=ClampedGlu(b13[:, :8], b2, 1.0, 1.0))
