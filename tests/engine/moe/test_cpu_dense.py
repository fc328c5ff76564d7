"""The compiled dense MoE layer (fp32 and lossless-bf16 expert weights) against the torch reference."""

from __future__ import annotations

import pytest
import torch

from engine.kernels.cpu import linear as cpu_linear
from engine.kernels.cpu import moe_dense as cpu_dense
from engine.model.config import ModelConfig
from engine.model.layers import DenseMLP, MoE, prepare_for_inference
from engine.moe.reference import moe_experts
from engine.moe.routing import route

pytestmark = pytest.mark.skipif(not cpu_dense.available(), reason="no C compiler to build the CPU MoE kernel")


def _experts(e: int, h: int, i: int, bf16_exact: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w13, w2 = torch.randn(e, 2 * i, h, generator=g) * 0.1, torch.randn(e, h, i, generator=g) * 0.1
    if bf16_exact:
        w13, w2 = w13.bfloat16().float(), w2.bfloat16().float()
    return w13, w2


@pytest.mark.parametrize("bf16_exact", [False, True])
@pytest.mark.parametrize(("tokens", "e", "k", "h", "i"), [(1, 8, 2, 64, 40), (3, 4, 2, 40, 24), (17, 8, 2, 64, 32), (32, 3, 3, 24, 20), (0, 4, 2, 32, 16)])
def test_dense_moe_equals_reference(bf16_exact: bool, tokens: int, e: int, k: int, h: int, i: int) -> None:
    w13, w2 = _experts(e, h, i, bf16_exact, seed=tokens * 10 + e)
    experts = cpu_dense.DenseExperts(w13, w2)
    assert experts.bf16 == bf16_exact  # bf16 storage exactly when it is lossless
    g = torch.Generator().manual_seed(7)
    x = torch.randn(tokens, h, generator=g)
    weights, ids = route(torch.randn(tokens, e, generator=g), k, renormalize=True)
    with torch.no_grad():
        ref = moe_experts(x, weights, ids, w13, w2)
    torch.testing.assert_close(cpu_dense.dense_moe(x, weights, ids, experts), ref, atol=2e-5, rtol=1e-5)


def test_many_rows_on_one_expert_and_prefill_sized_batches() -> None:
    w13, w2 = _experts(2, 32, 16, False, seed=3)
    x = torch.randn(20, 32)
    ids = torch.tensor([[0, 1]] * 20)  # 20 rows per expert: three full row tiles and a partial one
    weights = torch.rand(20, 2)
    with torch.no_grad():
        ref = moe_experts(x, weights, ids, w13, w2)
    torch.testing.assert_close(cpu_dense.dense_moe(x, weights, ids, cpu_dense.DenseExperts(w13, w2)), ref, atol=2e-5, rtol=1e-5)
    w13, w2 = _experts(8, 48, 40, True, seed=4)
    x = torch.randn(300, 48)
    weights, ids = route(torch.randn(300, 8), 2, renormalize=False)
    with torch.no_grad():
        ref = moe_experts(x, weights, ids, w13, w2)
    torch.testing.assert_close(cpu_dense.dense_moe(x, weights, ids, cpu_dense.DenseExperts(w13, w2)), ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("inter", [8, 13, 40])
def test_packing_round_trips_and_pads_the_intermediate_size(inter: int) -> None:
    w13, w2 = _experts(3, 24, inter, inter != 13, seed=inter)
    experts = cpu_dense.DenseExperts(w13, w2)
    assert experts.inter_padded % 8 == 0 and experts.inter_padded - inter < 8
    a, b = experts.unpacked()
    assert torch.equal(a, w13) and torch.equal(b, w2)


def test_a_token_does_not_depend_on_its_batch() -> None:
    """Fixed summation order: a token's output is bitwise the same alone and in any batch."""
    w13, w2 = _experts(8, 64, 32, False, seed=5)
    experts = cpu_dense.DenseExperts(w13, w2)
    x = torch.randn(24, 64)
    weights, ids = route(torch.randn(24, 8), 2, renormalize=True)
    full = cpu_dense.dense_moe(x, weights, ids, experts)
    for t in (0, 7, 23):
        assert torch.equal(cpu_dense.dense_moe(x[t : t + 1], weights[t : t + 1], ids[t : t + 1], experts), full[t : t + 1])


def test_bad_inputs_raise() -> None:
    w13, w2 = _experts(2, 32, 16, False, seed=1)
    experts = cpu_dense.DenseExperts(w13, w2)
    with pytest.raises(ValueError, match="belong together"):
        cpu_dense.DenseExperts(w13, w2[:, :, :8])
    with pytest.raises(ValueError, match="expert ids"):
        cpu_dense.dense_moe(torch.randn(1, 32), torch.ones(1, 1), torch.full((1, 1), 2), experts)
    with pytest.raises(ValueError, match="hidden size"):
        cpu_dense.dense_moe(torch.randn(1, 16), torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long), experts)
    with pytest.raises(ValueError, match="must both be"):
        cpu_dense.dense_moe(torch.randn(2, 32), torch.ones(2, 2), torch.zeros(2, 1, dtype=torch.long), experts)


def _layer(kind: type[torch.nn.Module]) -> torch.nn.Module:
    cfg = ModelConfig(architecture="Qwen3MoeForCausalLM", vocab_size=32, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                      num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, intermediate_size=52)
    layer = kind(cfg)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return layer


@pytest.mark.parametrize("kind", [MoE, DenseMLP])
def test_mlp_layers_use_the_kernel_when_prepared_and_agree(kind: type[torch.nn.Module]) -> None:
    """MoE layers run the driver; a dense MLP runs it as one always-routed expert."""
    layer = _layer(kind)
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        ref = layer(x)
        prepare_for_inference(layer)
        assert layer.cpu_experts is not None and not layer.cpu_experts.bf16
        assert layer.w13.numel() == 0 and layer.w2.numel() == 0  # one copy of the weights: the panels
        torch.testing.assert_close(layer(x), ref, atol=2e-5, rtol=1e-5)
    if kind is MoE:
        assert isinstance(layer.gate, cpu_linear.PackedLinear)  # the router's linear is packed too


@pytest.mark.parametrize("glu", [False, True])
@pytest.mark.parametrize("bf16_exact", [False, True])
def test_k_blocked_expert_tiles_equal_whole_k_tiles_bitwise(glu: bool, bf16_exact: bool) -> None:
    """A decode batch on one always-routed expert (the dense decoder's MLP) and a routed batch, with
    the linear tune's k-block on (panel.h rows_panels_kblocked) and off: bitwise the same layer."""
    from engine.kernels.activation import ClampedGlu
    from engine.kernels.cpu import autotune

    kernels = cpu_linear._KERNELS
    kernels.available()  # settles the family's choice first, so applying ours below sticks
    saved = kernels.choice
    h, i = 136, 300
    results: dict[int, list[torch.Tensor]] = {}
    try:
        for kb in (0, 64, 128):
            kernels.apply(autotune.Choice(tuple(kb if name == "k_block" else v for name, v in zip(cpu_linear.KNOBS, cpu_linear.DEFAULT, strict=True)), "default"))
            outs = []
            for tokens, e, k in ((16, 1, 1), (24, 3, 2), (31, 1, 1)):
                w13, w2 = _experts(e, h, i, bf16_exact, seed=tokens + e)
                g = torch.Generator().manual_seed(tokens)
                gl = ClampedGlu(torch.randn(e, 2 * i, generator=g), torch.randn(e, h, generator=g), limit=1.5, alpha=1.702) if glu else None
                experts = cpu_dense.DenseExperts(w13, w2, gl)
                x = torch.randn(tokens, h, generator=g)
                if e == 1:
                    weights, ids = torch.ones(tokens, 1), torch.zeros(tokens, 1, dtype=torch.int64)
                else:
                    weights, ids = route(torch.randn(tokens, e, generator=g), k, renormalize=True)
                outs.append(cpu_dense.dense_moe(x, weights, ids, experts))
            results[kb] = outs
    finally:
        if saved is not None:
            kernels.apply(saved)
    for kb, outs in results.items():
        assert all(torch.equal(a, b) for a, b in zip(outs, results[0], strict=True)), kb
