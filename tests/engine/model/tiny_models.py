"""Tiny random transformers models (odd shapes) of every supported family, and the FP4 check
every MoE family runs. Imported by conftest.py's fixtures and by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

COMMON: dict[str, Any] = dict(
    vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
    max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=1, bos_token_id=0,
)
def make_dense(path: Path, arch: str, seed: int = 0, **over: Any) -> Path:
    """Save a tiny random `qwen3` or `llama` model (head_dim 12 or 8, intermediate 40) under `path`."""
    import transformers

    kw = {**COMMON, "intermediate_size": 40, **over}
    torch.manual_seed(seed)
    if arch == "qwen3":
        model: Any = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=12, **kw))
    elif arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    else:
        raise ValueError(arch)
    model.save_pretrained(path)
    return path


def gpt_oss_config(**over: Any) -> Any:
    """A tiny gpt-oss config: window 5 on alternate layers, YaRN, 4 experts of 32 (MXFP4-ready)."""
    import transformers

    rope = {"rope_type": "yarn", "factor": 8.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
            "original_max_position_embeddings": 32, "rope_theta": 150000.0}
    kw: dict[str, Any] = dict(
        vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
        intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, sliding_window=5, max_position_embeddings=256,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], rope_parameters=rope,
        initializer_range=0.1, eos_token_id=1, bos_token_id=0, pad_token_id=0, tie_word_embeddings=False,
    )
    kw.update(over)
    return transformers.GptOssConfig(**kw)


def make_gpt_oss(seed: int = 0, **over: Any) -> Any:
    """A tiny random transformers GptOssForCausalLM with non-zero sinks and biases (eval mode)."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.GptOssForCausalLM(gpt_oss_config(**over)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sinks" in name or "bias" in name:
                p.normal_(0.0, 0.5)
    return model


def make_deepseek(q_lora_rank: int | None = 16, seed: int = 0, **over: Any) -> Any:
    """A tiny random transformers DeepseekV3ForCausalLM (eval): MLA with rank 20 + rope 8, 8 experts
    in 4 groups (2 picked), one shared expert, a dense first layer, YaRN with mscale."""
    import transformers

    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "mscale": 1.0,
            "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0, "rope_theta": 10000.0}
    kw: dict[str, Any] = dict(
        vocab_size=97, hidden_size=48, intermediate_size=40, moe_intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=3, num_key_value_heads=3, n_shared_experts=1, n_routed_experts=8, num_experts_per_tok=3,
        n_group=4, topk_group=2, routed_scaling_factor=2.5, kv_lora_rank=20, q_lora_rank=q_lora_rank, qk_rope_head_dim=8,
        v_head_dim=12, qk_nope_head_dim=10, first_k_dense_replace=1, max_position_embeddings=256, rope_parameters=rope,
        initializer_range=0.1, eos_token_id=1, bos_token_id=0, pad_token_id=0, tie_word_embeddings=False,
    )
    kw.update(over)
    torch.manual_seed(seed)
    model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**kw)).eval()
    with torch.no_grad():
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.normal_(0.0, 0.3)
    return model


def fp4_logits(path: Path, fmt: str, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits of the model served with FP4 experts, of the fp32 model whose experts are those FP4
    weights dequantised, of the original fp32 model) for `ids`, via engine.LLM on the CPU."""
    from engine import LLM
    from engine.model.layers import MoE
    from engine.model.loader import load_model
    from engine.quantize import quantize_model_experts

    served = LLM(path, device="cpu", dtype="float32", block_size=4, num_kv_blocks=64, quantization=fmt)
    original, _ = load_model(path)
    dequantised, _ = load_model(path)
    quantize_model_experts(dequantised, fmt)
    for module in dequantised.modules():
        if isinstance(module, MoE) and module.quantized is not None:
            module.w13 = torch.nn.Parameter(module.quantized.w13.dequantize(), requires_grad=False)
            module.w2 = torch.nn.Parameter(module.quantized.w2.dequantize(), requires_grad=False)
            module.quantized = None
    with torch.no_grad():
        return tuple(m.compute_logits(m.forward_dense(ids)) for m in (served.model, dequantised, original))  # type: ignore[return-value]


def random_prompts(n: int, seed: int, lo: int = 3, hi: int = 30) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 97, (int(k),), generator=g).tolist() for k in torch.randint(lo, hi, (n,), generator=g)]


def cpu_llm(path: Path, **kw: object) -> Any:
    from engine import LLM

    opts: dict[str, object] = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)
    opts.update(kw)
    return LLM(path, **opts)  # type: ignore[arg-type]


def hf_greedy(hf: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """transformers' argmax continuation with its KV cache (no EOS suppression, unlike generate's
    min_new_tokens)."""
    tokens: list[int] = []
    with torch.no_grad():
        out = hf(torch.tensor([prompt]), use_cache=True)
        for _ in range(n):
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(tok))
            out = hf(tok, cache=out.cache, use_cache=True)
    return tokens


def assert_serving_equals_transformers(path: Path, new_tokens: int = 12) -> Any:
    """Greedy outputs equal transformers' for a lone request (chunked prefill) and then a batch of
    three sharing a 14-token prefix with it plus an unrelated one; the later ones hit the prefix cache.
    Returns the LLM for further checks."""
    import transformers

    from engine import SamplingParams

    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    shared = random_prompts(1, seed=7, lo=14, hi=15)[0]
    prompts = [shared + tail for tail in random_prompts(3, seed=3, lo=2, hi=9)] + random_prompts(1, seed=5)
    refs = [hf_greedy(hf, p, new_tokens) for p in prompts]
    llm = cpu_llm(path, max_num_batched_tokens=8)  # chunked prefill
    greedy = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    first = llm.generate(prompts[:1], greedy)
    rest = llm.generate(prompts[1:], greedy)  # batched, shared-prefix cache hits
    assert [o.token_ids for o in first + rest] == refs
    assert sum(o.usage.cached_tokens for o in rest) >= 2 * new_tokens
    return llm
