"""The one-call C decoder stack (engine/kernels/cpu/decoder.py) equals the per-layer CPU path
bitwise: hidden states and the KV it writes, over prefill, chunked and decode steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.kernels.cpu import decoder as cpu_decoder
from engine.model.attention import AttentionMetadata, KVCache
from engine.model.layers import prepare_for_inference
from engine.model.loader import load_model

pytestmark = pytest.mark.skipif(not cpu_decoder.available(), reason="this machine does not run the C kernels")

BLOCK = 4


def _steps() -> list[tuple[list[int], list[int]]]:
    """(new tokens, context after the step) per sequence, for consecutive steps of three sequences:
    a prefill, a chunk of one of them beside decodes, then decodes."""
    return [([5, 9, 3], [5, 9, 3]), ([1, 1, 7], [6, 10, 10]), ([1, 1, 1], [7, 11, 11]), ([1, 1, 1], [8, 12, 12])]


def _run(model: torch.nn.Module, use_stack: bool) -> tuple[list[torch.Tensor], KVCache]:
    cfg = model.config
    kv = KVCache.allocate(cfg.num_layers, 16, BLOCK, cfg.num_kv_heads, cfg.head_dim, torch.float32, "cpu")
    tables = [[0, 1, 2, 3], [4, 5, 6, 7], [9, 8, 11, 10]]  # the last one not in block order
    g = torch.Generator().manual_seed(0)
    saved = model.cpu_stack
    model.cpu_stack = saved if use_stack else None
    outs = []
    try:
        for new, ctx in _steps():
            meta = AttentionMetadata.build(new, ctx, tables, BLOCK, "cpu")
            ids = torch.randint(2, cfg.vocab_size, (sum(new),), generator=g)
            pos = torch.tensor([p for n, c in zip(new, ctx, strict=True) for p in range(c - n, c)])
            with torch.inference_mode():
                outs.append(model.forward_prenorm(ids, pos, kv, meta))
    finally:
        model.cpu_stack = saved
    return outs, kv


@pytest.mark.parametrize("arch", ["tiny_qwen3", "tiny_llama"])
def test_stack_equals_the_per_layer_path_bitwise(arch: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(arch)
    model, _ = load_model(path)
    prepare_for_inference(model)
    assert model.cpu_stack is not None  # qwen3: head norms; llama: biased projections, no head norms
    fast, kv_fast = _run(model, use_stack=True)
    slow, kv_slow = _run(model, use_stack=False)
    for a, b in zip(fast, slow, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(kv_fast.k, kv_slow.k) and torch.equal(kv_fast.v, kv_slow.v)
    assert kv_fast.k.abs().sum() > 0


def test_models_with_other_layers_get_no_stack(tiny_gpt_oss: Path) -> None:
    model, _ = load_model(tiny_gpt_oss)
    prepare_for_inference(model)
    assert model.cpu_stack is None


def test_a_slot_outside_the_cache_raises(tiny_qwen3: Path) -> None:
    model, cfg = load_model(tiny_qwen3)
    prepare_for_inference(model)
    kv = KVCache.allocate(cfg.num_layers, 2, BLOCK, cfg.num_kv_heads, cfg.head_dim, torch.float32, "cpu")
    meta = AttentionMetadata.build([1], [1], [[0]], BLOCK, "cpu")
    x = torch.randn(1, cfg.hidden_size)
    cos, sin = model.rotary.tables(torch.tensor([0]))
    with pytest.raises(ValueError, match="KV slots"):
        model.cpu_stack.run(x, cos, sin, kv.k, kv.v, meta, torch.tensor([99]))


def test_shedding_threads_under_load_changes_no_token(tiny_qwen3: Path) -> None:
    from tiny_models import cpu_llm, random_prompts

    from engine import SamplingParams
    from engine.kernels.cpu.busy import ThreadShedder

    prompts = random_prompts(4, seed=2)
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    quiet = cpu_llm(tiny_qwen3, adaptive_cpu_threads=False, num_threads=2)
    busy = cpu_llm(tiny_qwen3, num_threads=2)
    busy.core.runner.shedder = ThreadShedder(2, cpus=2, read=lambda: 50)  # a machine full of other work
    assert [o.token_ids for o in busy.generate(prompts, greedy)] == [o.token_ids for o in quiet.generate(prompts, greedy)]
    assert busy.core.runner._threads == 1 and torch.get_num_threads() == 2  # ran on one, restored after


def test_only_models_on_the_c_kernels_alone_shed_threads(tiny_qwen3: Path, tiny_deepseek: Path) -> None:
    from tiny_models import cpu_llm

    assert cpu_llm(tiny_qwen3).core.runner.shedder is not None
    assert cpu_llm(tiny_qwen3, adaptive_cpu_threads=False).core.runner.shedder is None
    assert cpu_llm(tiny_deepseek).core.runner.shedder is None  # latent attention runs torch einsums
