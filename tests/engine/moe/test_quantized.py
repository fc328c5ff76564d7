"""FP4 experts on the CPU path agree with the dense reference run on dequantised weights."""

from __future__ import annotations

import pytest
import torch

from engine.moe.quantized import QuantizedExperts, moe_experts_fp4
from engine.moe.reference import moe_experts
from engine.moe.routing import route


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("num_tokens", [1, 5, 33])
def test_fp4_experts_match_the_reference_on_dequantised_weights(fmt: str, num_tokens: int) -> None:
    g = torch.Generator().manual_seed(num_tokens)
    e, h, i = 6, 64, 32
    w13, w2 = torch.randn(e, 2 * i, h, generator=g) * 0.1, torch.randn(e, h, i, generator=g) * 0.1
    q = QuantizedExperts(w13, w2, fmt)
    x = torch.randn(num_tokens, h, generator=g)
    weights, ids = route(torch.randn(num_tokens, e, generator=g), 2, True)
    got = moe_experts_fp4(x, weights, ids, q)
    ref = moe_experts(x, weights, ids, q.w13.dequantize(), q.w2.dequantize())
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert q.nbytes * 3.5 <= (w13.numel() + w2.numel()) * 2


def test_engine_with_fp4_experts_generates_and_mostly_agrees_with_bf16() -> None:
    from engine import LLM, SamplingParams

    prompt = list(range(100, 160))
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    base = LLM().generate([prompt], params)[0].token_ids
    fp4 = LLM(quantization="nvfp4").generate([prompt], params)[0].token_ids
    assert len(fp4) == 16 and sum(a == b for a, b in zip(base, fp4, strict=True)) >= 8
