"""The Triton fused FP4 MoE kernel against the torch reference (dequantise, then moe_experts).

Without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set here before triton
is imported); with CUDA the same checks run compiled, plus a timing comparison marked `gpu`.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from engine.moe.quantized import QuantizedExperts  # noqa: E402
from engine.moe.reference import moe_experts  # noqa: E402
from engine.moe.routing import route  # noqa: E402
from engine.moe.triton_moe import (  # noqa: E402
    BLOCK_M,
    MAX_SPLIT_K,
    align_by_expert,
    align_by_expert_reference,
    fused_moe,
    fused_moe_fp4,
    split_k_for,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _case(fmt: str, tokens: int, top_k: int, experts: int = 4, hidden: int = 64, inter: int = 64, seed: int = 0,
          skip_expert: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, QuantizedExperts]:
    g = torch.Generator().manual_seed(seed)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=g) * 0.1
    w2 = torch.randn(experts, hidden, inter, generator=g) * 0.1
    x = torch.randn(tokens, hidden, generator=g)
    logits = torch.randn(tokens, experts, generator=g)
    if skip_expert is not None:
        logits[:, skip_expert] = -1e9  # an expert that receives no tokens
    weights, ids = route(logits, top_k, renormalize=True)
    q = QuantizedExperts(w13.to(DEVICE), w2.to(DEVICE), fmt)
    return x.to(DEVICE), weights.to(DEVICE), ids.to(DEVICE), q


def _reference(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, q: QuantizedExperts) -> torch.Tensor:
    with torch.no_grad():
        return moe_experts(x.float(), weights, ids, q.w13.dequantize(torch.float32), q.w2.dequantize(torch.float32))


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize(("tokens", "top_k"), [(1, 1), (3, 2), (7, 2)])
def test_kernel_equals_the_torch_reference(fmt: str, tokens: int, top_k: int) -> None:
    x, w, ids, q = _case(fmt, tokens, top_k, seed=tokens * 10 + top_k, skip_expert=3)
    assert not (ids == 3).any()
    out = fused_moe_fp4(x, w, ids, q)
    torch.testing.assert_close(out.float(), _reference(x, w, ids, q), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4", "dense"])
@pytest.mark.parametrize("tiles", [{"swap_ab": True}, {"block_m": 32, "block_k": 128, "block_n": 16}, {"swap_ab": True, "block_k": 32},
                                   {"split_k": 2}, {"split_k": 3, "block_k": 32, "swap_ab": True}])
def test_tile_options_give_the_same_result(fmt: str, tiles: dict[str, int | bool]) -> None:
    x, w, ids, q = _case("nvfp4" if fmt == "dense" else fmt, 9, 2, hidden=96, inter=64, seed=5)
    ref = _reference(x, w, ids, q)
    experts = (q.w13.dequantize(torch.float32), q.w2.dequantize(torch.float32)) if fmt == "dense" else q
    torch.testing.assert_close(fused_moe(x, w, ids, experts, **tiles).float(), ref, atol=1e-4, rtol=1e-4)  # type: ignore[arg-type]


def test_split_k_fills_the_device_only_when_the_grid_is_small() -> None:
    assert split_k_for(programs=4, k=2880, block_k=64, sm_count=132) == MAX_SPLIT_K  # decode: few row blocks
    assert split_k_for(programs=100, k=2880, block_k=64, sm_count=132) == 3
    assert split_k_for(programs=264, k=2880, block_k=64, sm_count=132) == 1  # the grid already fills the device
    assert split_k_for(programs=4, k=128, block_k=64, sm_count=132) == 2  # never more slices than K tiles


def test_bf16_activations_and_non_multiple_of_tile_sizes() -> None:
    # hidden 96 and intermediate 48 are multiples of the NVFP4 block that only partly fill 64-wide K tiles
    x, w, ids, q = _case("nvfp4", 5, 2, experts=3, hidden=96, inter=48, seed=7)
    out = fused_moe_fp4(x.to(torch.bfloat16), w, ids, q)
    assert out.dtype == torch.bfloat16
    ref = _reference(x.to(torch.bfloat16), w, ids, q)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)  # bf16 output rounding (8-bit mantissa)


def test_nan_block_scales_propagate() -> None:
    x, w, ids, q = _case("mxfp4", 2, 1, seed=3)
    q.w13.scales[ids[0, 0], 0, 0] = 255  # E8M0 NaN in a gate row used by token 0
    out = fused_moe_fp4(x, w, ids, q)
    assert torch.isnan(out[0]).any()


def test_align_by_expert_pads_each_expert_to_whole_blocks() -> None:
    ids = torch.tensor([[2, 0], [2, 1], [0, 2]])
    sorted_ids, block_expert, num_padded = align_by_expert_reference(ids, 4, block_m=4)
    assert num_padded == 12 and block_expert.tolist() == [0, 1, 2]  # expert 3 has no pairs, no block
    runs = sorted_ids.view(3, 4).tolist()
    sentinel = ids.numel()
    assert runs[0] == [1, 4, sentinel, sentinel]  # expert 0: pairs (token 0, slot 1), (token 2, slot 0)
    assert runs[1] == [3, sentinel, sentinel, sentinel]
    assert runs[2] == [0, 2, 5, sentinel]
    assert BLOCK_M >= 16


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_alignment_equals_the_loop_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    experts = (3, 8, 40)[seed % 3]
    tokens, top_k, block_m = 1 + seed * 7, 1 + seed % 4, (4, 16)[seed % 2]
    logits = torch.randn(tokens, experts, generator=g)
    ids = torch.topk(logits, min(top_k, experts), dim=-1).indices
    ref_ids, ref_blocks, ref_n = align_by_expert_reference(ids, experts, block_m)
    fast_ids, fast_blocks, fast_n = align_by_expert(ids.to(DEVICE), experts, block_m)
    assert int(fast_n.item()) == ref_n and fast_ids.numel() >= ref_n and fast_ids.numel() % block_m == 0
    assert fast_ids[:ref_n].cpu().tolist() == ref_ids.tolist()
    assert (fast_ids[ref_n:] == ids.numel()).all()  # the tail is all padding
    assert fast_blocks[: ref_n // block_m].cpu().tolist() == ref_blocks.tolist()


@pytest.mark.parametrize(("tokens", "top_k"), [(1, 1), (5, 2), (9, 3)])
def test_dense_weights_equal_the_torch_reference(tokens: int, top_k: int) -> None:
    g = torch.Generator().manual_seed(tokens)
    w13 = torch.randn(4, 2 * 48, 80, generator=g) * 0.1
    w2 = torch.randn(4, 80, 48, generator=g) * 0.1
    x = torch.randn(tokens, 80, generator=g)
    weights, ids = route(torch.randn(tokens, 4, generator=g), top_k, renormalize=False)
    with torch.no_grad():
        ref = moe_experts(x, weights, ids, w13, w2)
    # column-major expert stacks (how the CPU serving path stores them) give the same result
    for a, b in ((w13, w2), (w13.transpose(1, 2).contiguous().transpose(1, 2), w2.transpose(1, 2).contiguous().transpose(1, 2))):
        out = fused_moe(x.to(DEVICE), weights.to(DEVICE), ids.to(DEVICE), (a.to(DEVICE), b.to(DEVICE)))
        torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)


def test_bad_shapes_raise() -> None:
    x, w, ids, q = _case("nvfp4", 2, 2)
    with pytest.raises(ValueError, match="top_k"):
        fused_moe_fp4(x, w[:, :1], ids, q)
    with pytest.raises(ValueError, match="hidden"):
        fused_moe_fp4(x[:, :32], w, ids, q)
    with pytest.raises(ValueError, match="block_k"):
        fused_moe_fp4(x, w, ids, q, block_k=48)
    with pytest.raises(ValueError, match="block_m"):
        fused_moe(x, w, ids, q, block_m=24)
    with pytest.raises(ValueError, match="split_k 0"):
        fused_moe(x, w, ids, q, split_k=0)


def _time(fn: object) -> float:
    import time

    assert callable(fn)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / 20 * 1e6


@pytest.mark.gpu
def test_kernel_speed_against_bf16_grouped_gemm() -> None:
    for tokens in (1, 16, 64):
        x, w, ids, q = _case("nvfp4", tokens, 2, experts=8, hidden=1024, inter=512, seed=1)
        ref = _reference(x, w, ids, q)
        out = fused_moe_fp4(x.bfloat16(), w, ids, q).float()
        assert (out - ref).norm() / ref.norm() < 1e-2  # bf16 operands: ~3e-3 relative, element errors near zero are larger
        w13, w2 = q.w13.dequantize(torch.bfloat16), q.w2.dequantize(torch.bfloat16)
        dense = fused_moe(x.bfloat16(), w, ids, (w13, w2)).float()
        assert (dense - ref).norm() / ref.norm() < 1e-2
        timings = {"fp4 kernel": _time(functools.partial(fused_moe_fp4, x.bfloat16(), w, ids, q)),
                   "bf16 grouped (same kernel)": _time(functools.partial(fused_moe, x.bfloat16(), w, ids, (w13, w2))),
                   "bf16 torch": _time(functools.partial(moe_experts, x.bfloat16(), w, ids, w13, w2))}
        print(f"tokens {tokens}: " + ", ".join(f"{k} {v:.0f} us" for k, v in timings.items()))
