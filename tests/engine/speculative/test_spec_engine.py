"""Speculative decoding inside the engine: lossless greedy output, correct KV after rejections."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    motif = torch.randint(2, 128, (6,), generator=g).tolist()
    return [motif * 4 + [9, 9], torch.randint(2, 128, (20,), generator=g).tolist(), (motif + [5]) * 3]


def test_greedy_output_with_ngram_speculation_equals_plain_decoding(tiny_qwen: Path) -> None:
    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)
    plain = LLM(tiny_qwen, **opts).generate(_prompts(), GREEDY)  # type: ignore[arg-type]
    spec_llm = LLM(tiny_qwen, speculative="ngram", num_speculative_tokens=3, **opts)  # type: ignore[arg-type]
    spec = spec_llm.generate(_prompts(), GREEDY)
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    proposed = sum(o.usage.spec_proposed_tokens for o in spec)
    accepted = sum(o.usage.spec_accepted_tokens for o in spec)
    assert proposed > 0 and 0 < accepted <= proposed


def test_kv_after_rejections_equals_the_kv_of_plain_decoding(tiny_qwen: Path) -> None:
    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)
    prompt = _prompts()[0]
    a = LLM(tiny_qwen, **opts)  # type: ignore[arg-type]
    b = LLM(tiny_qwen, speculative="ngram", num_speculative_tokens=4, **opts)  # type: ignore[arg-type]
    out_a = a.generate([prompt], GREEDY)[0]
    out_b = b.generate([prompt], GREEDY)[0]
    assert out_a.token_ids == out_b.token_ids and out_b.usage.spec_accepted_tokens < out_b.usage.spec_proposed_tokens
    tokens = prompt + out_a.token_ids
    ma = a.core.scheduler.radix.match_prefix(tokens, count=False)  # type: ignore[union-attr]
    mb = b.core.scheduler.radix.match_prefix(tokens, count=False)  # type: ignore[union-attr]
    assert ma.num_tokens == mb.num_tokens >= len(prompt)
    ka = a.core.runner.kv_cache.k[:, ma.block_ids]
    kb = b.core.runner.kv_cache.k[:, mb.block_ids]
    torch.testing.assert_close(ka, kb, atol=1e-5, rtol=1e-5)


def test_stop_tokens_inside_accepted_drafts_end_the_request_there(tiny_qwen: Path) -> None:
    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)
    prompt = _prompts()[2]
    full = LLM(tiny_qwen, **opts).generate([prompt], GREEDY)[0].token_ids  # type: ignore[arg-type]
    stop = full[10]
    params = SamplingParams(temperature=0.0, max_tokens=48, stop_token_ids=(stop,), ignore_eos=True)
    spec = LLM(tiny_qwen, speculative="ngram", **opts).generate([prompt], params)[0]  # type: ignore[arg-type]
    assert spec.token_ids == full[: full.index(stop) + 1]
    short = LLM(tiny_qwen, speculative="ngram", **opts).generate([prompt], SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True))[0]  # type: ignore[arg-type]
    assert short.token_ids == full[:7]


def _save_tiny(path: Path, *, layers: int, mtp: int, seed: int) -> Path:
    from engine.model.config import ModelConfig
    from engine.model.loader import save_model
    from engine.model.qwen3_moe import MoEForCausalLM
    from engine.train.loop import init_weights

    cfg = ModelConfig(
        architecture="Qwen3MoeForCausalLM", vocab_size=128, hidden_size=64, num_layers=layers, num_heads=4,
        num_kv_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        intermediate_size=64, norm_topk_prob=True, rms_norm_eps=1e-6, rope_theta=10000.0,
        max_position_embeddings=512, tie_word_embeddings=False, qk_norm=True, eos_token_id=(1,),
        bos_token_id=None, mtp_num_layers=mtp,
    )
    model = MoEForCausalLM(cfg)
    init_weights(model, seed)
    with torch.no_grad():  # larger weights than init: a peaky, repetitive random model
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8.0)
    save_model(model, path, dtype=torch.float32)
    return path


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A target with an MTP module and a 1-layer draft model of the same vocabulary."""
    root = tmp_path_factory.mktemp("spec_pair")
    return _save_tiny(root / "target", layers=2, mtp=1, seed=1), _save_tiny(root / "draft", layers=1, mtp=0, seed=2)


@pytest.mark.parametrize("drafter", ["suffix", "ngram", "mtp", "draft"])
def test_greedy_output_with_each_drafter_equals_plain_decoding(tiny_pair: tuple[Path, Path], drafter: str) -> None:
    target, draft = tiny_pair
    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=512)
    prompts = _prompts()
    plain = LLM(target, **opts).generate(prompts, GREEDY)  # type: ignore[arg-type]
    llm = LLM(target, speculative=drafter, num_speculative_tokens=4, draft_model=draft, **opts)  # type: ignore[arg-type]
    first = llm.generate(prompts, GREEDY)
    again = llm.generate(prompts, GREEDY)  # the suffix tree now holds the first outputs; caches are warm
    assert [o.token_ids for o in first] == [o.token_ids for o in plain]
    assert [o.token_ids for o in again] == [o.token_ids for o in plain]
    proposed = sum(o.usage.spec_proposed_tokens for o in first + again)
    accepted = sum(o.usage.spec_accepted_tokens for o in first + again)
    assert proposed > 0 and 0 <= accepted <= proposed
    if drafter == "suffix":  # a repeated request is drafted from the tree almost entirely
        assert sum(o.usage.spec_accepted_tokens for o in again) > 0.8 * sum(len(o.token_ids) for o in again) - 2 * len(again)


def test_greedy_output_with_the_per_step_drafter_choice_equals_plain_decoding(tiny_pair: tuple[Path, Path]) -> None:
    """All four drafters enabled, the chooser picking per request and step: lossless, and more
    than one drafter's drafts end up verified."""
    target, draft = tiny_pair
    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=512)
    prompts = _prompts()
    plain = LLM(target, **opts).generate(prompts, GREEDY)  # type: ignore[arg-type]
    llm = LLM(target, speculative="suffix,ngram,mtp,draft", num_speculative_tokens=6, draft_model=draft, **opts)  # type: ignore[arg-type]
    used: set[str] = set()
    record = llm.core.speculator.record

    def spy(seq: object, accepted: int) -> None:
        used.add(seq.spec.drafter)  # type: ignore[attr-defined]
        record(seq, accepted)  # type: ignore[arg-type]

    llm.core.speculator.record = spy  # type: ignore[method-assign]
    for _ in range(2):
        assert [o.token_ids for o in llm.generate(prompts, GREEDY)] == [o.token_ids for o in plain]
    assert len(used) >= 2, used


def test_speculation_that_cannot_pay_for_its_verify_step_is_not_attempted(tiny_pair: tuple[Path, Path]) -> None:
    target, _ = tiny_pair
    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=512, speculative="ngram")
    cheap = LLM(target, **opts).generate(_prompts(), GREEDY)  # type: ignore[arg-type]
    dear = LLM(target, spec_verify_overhead=50.0, **opts).generate(_prompts(), GREEDY)  # type: ignore[arg-type]
    assert [o.token_ids for o in dear] == [o.token_ids for o in cheap]
    assert sum(o.usage.spec_proposed_tokens for o in cheap) > 0 == sum(o.usage.spec_proposed_tokens for o in dear)


def test_sampled_output_with_the_draft_model_is_reproducible_and_in_range(tiny_pair: tuple[Path, Path]) -> None:
    target, draft = tiny_pair
    llm = LLM(target, device="cpu", dtype="float32", block_size=4, num_kv_blocks=512, speculative="draft", draft_model=draft)
    params = SamplingParams(temperature=0.8, max_tokens=24, ignore_eos=True, seed=5)
    a = llm.generate(_prompts(), params)
    b = llm.generate(_prompts(), params)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert all(0 <= t < 128 for o in a for t in o.token_ids)


@pytest.mark.parametrize(("top_k", "top_p", "temperature"), [(3, 1.0, 0.9), (None, 0.8, 0.5)])
def test_sampled_speculative_tokens_stay_inside_the_top_k_top_p_support(
    tiny_pair: tuple[Path, Path], top_k: int | None, top_p: float, temperature: float
) -> None:
    """Every token a speculating request emits (accepted drafts, corrections and bonus tokens) lies
    in the top-k / top-p support of the target's distribution at its position (dense recompute)."""
    from engine.sampler import probabilities

    target, _ = tiny_pair
    llm = LLM(target, device="cpu", dtype="float32", block_size=4, num_kv_blocks=512, speculative="ngram", num_speculative_tokens=4)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=40, ignore_eos=True, seed=11)
    outs = llm.generate(_prompts(), params)
    assert sum(o.usage.spec_accepted_tokens for o in outs) > 0  # drafts were accepted, not only bonus tokens
    for prompt, out in zip(_prompts(), outs, strict=True):
        ids = torch.tensor([prompt + out.token_ids])
        with torch.inference_mode():
            logits = llm.model.compute_logits(llm.model.forward_dense(ids)[0])  # [len, vocab]
        for j, tok in enumerate(out.token_ids):
            support = probabilities(logits[len(prompt) + j - 1], params) > 0
            assert support[tok], (j, tok, int(support.sum()))


def test_requests_choose_among_the_engines_drafters(tiny_pair: tuple[Path, Path]) -> None:
    from engine.errors import InvalidRequestError

    target, _ = tiny_pair
    llm = LLM(target, device="cpu", dtype="float32", block_size=4, num_kv_blocks=512, speculative="suffix,mtp")
    plain = llm.generate(_prompts()[:1], SamplingParams(temperature=0.0, max_tokens=16, speculative=False))[0]
    assert plain.usage.spec_proposed_tokens == 0
    mtp = llm.generate(_prompts()[:1], SamplingParams(temperature=0.0, max_tokens=16, speculative="mtp"))[0]
    assert mtp.token_ids == plain.token_ids and mtp.usage.spec_proposed_tokens > 0
    assert mtp.usage.spec_proposed_tokens <= len(mtp.token_ids)  # MTP drafts one token per step
    with pytest.raises(InvalidRequestError, match="not enabled"):
        llm.generate(_prompts()[:1], SamplingParams(temperature=0.0, speculative="draft"))


def test_mtp_drafts_of_the_shipped_model_are_mostly_accepted() -> None:
    from engine.tokenizer import ChatTokenizer

    llm = LLM(speculative="mtp")
    tok = ChatTokenizer(llm.config.model_path)
    prompt = tok.encode_chat([{"role": "user", "content": "I need to change my flight reservation, please."}])
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=48))[0]
    plain = LLM().generate([prompt], SamplingParams(temperature=0.0, max_tokens=48))[0]
    assert out.token_ids == plain.token_ids
    assert out.usage.spec_accepted_tokens >= 0.5 * out.usage.spec_proposed_tokens > 0


def test_shipped_model_greedy_output_with_suffix_speculation_is_token_identical() -> None:
    """The shipped model (64-dim heads: verification rows and prefill run the tiled CPU attention)
    gives the same greedy tokens with and without speculation, over turns that repeat earlier ones."""
    from engine.tokenizer import ChatTokenizer

    plain, spec = LLM(), LLM(speculative="suffix")
    tok = ChatTokenizer(plain.config.model_path)
    chat = [{"role": "user", "content": "I need to change my flight reservation ABC123, please."}]
    params = SamplingParams(temperature=0.0, max_tokens=64)
    proposed = 0
    for turn in range(3):
        prompt = tok.encode_chat(chat)
        a, b = plain.generate([prompt], params)[0], spec.generate([prompt], params)[0]
        assert b.token_ids == a.token_ids, turn
        proposed += b.usage.spec_proposed_tokens
        chat += [{"role": "assistant", "content": a.text}, {"role": "user", "content": "My user id is mia_li_1000."}]
    assert proposed > 0


def test_preloaded_drafts_are_verified_like_any_other(tiny_qwen: Path) -> None:
    from engine.errors import InvalidRequestError

    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)
    prompt = _prompts()[1]
    plain = LLM(tiny_qwen, **opts).generate([prompt], GREEDY)[0]  # type: ignore[arg-type]
    warm = LLM(tiny_qwen, speculative="suffix", num_speculative_tokens=4, **opts)  # type: ignore[arg-type]
    # A warm tree holding this very output (and a wrong variant of it): drafts come from it, and
    # verification still yields exactly the plain tokens.
    wrong = [(t + 1) % 128 for t in plain.token_ids]
    assert warm.preload_drafts([prompt[-4:] + plain.token_ids, prompt[-4:] + wrong]) == 2
    out = warm.generate([prompt], GREEDY)[0]
    assert out.token_ids == plain.token_ids and out.usage.spec_accepted_tokens > 0
    with pytest.raises(InvalidRequestError, match="suffix drafter"):
        LLM(tiny_qwen, speculative="ngram", **opts).preload_drafts([[1, 2, 3]])  # type: ignore[arg-type]


def test_draft_history_restores_the_same_drafts_in_a_new_engine(tiny_qwen: Path) -> None:
    from engine.errors import InvalidRequestError

    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)
    first, second = _prompts()[0], _prompts()[1]
    served = LLM(tiny_qwen, speculative="suffix", num_speculative_tokens=4, **opts)  # type: ignore[arg-type]
    out = served.generate([first], GREEDY)[0]
    history = served.draft_history()
    keep = served.core.speculator.suffix.prompt_context  # type: ignore[union-attr]
    assert history == [(first + out.token_ids)[len(first) - keep :]]  # the output, with its prompt's last tokens
    restarted = LLM(tiny_qwen, speculative="suffix", num_speculative_tokens=4, **opts)  # type: ignore[arg-type]
    assert restarted.preload_drafts(history) == 1 and restarted.draft_history() == history
    sa, sb = served.core.speculator.suffix, restarted.core.speculator.suffix
    assert sa is not None and sb is not None
    for cut in range(len(first) - 2, len(first) + len(out.token_ids)):
        context = (first + out.token_ids)[:cut]
        assert sb.tree_draft(context, 4) == sa.tree_draft(context, 4), cut  # the same tree, the same drafts
    assert restarted.generate([second], GREEDY)[0].token_ids == served.generate([second], GREEDY)[0].token_ids
    with pytest.raises(InvalidRequestError, match="suffix drafter"):
        LLM(tiny_qwen, **opts).draft_history()  # type: ignore[arg-type]


def test_preloading_a_token_outside_the_vocabulary_is_refused_and_serving_goes_on(tiny_qwen: Path) -> None:
    from engine.errors import InvalidRequestError

    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=256)
    prompt = _prompts()[1]
    plain = LLM(tiny_qwen, **opts).generate([prompt], GREEDY)[0]  # type: ignore[arg-type]
    warm = LLM(tiny_qwen, speculative="suffix", num_speculative_tokens=4, **opts)  # type: ignore[arg-type]
    vocab = warm.core.model_config.vocab_size
    good = prompt[-4:] + plain.token_ids
    # A saved history that was tampered with: the model's own continuation, then ids past the vocabulary.
    # Indexed, it would be drafted after this prompt and fail the request in the engine step.
    with pytest.raises(InvalidRequestError, match=r"document 1: token id .* outside the vocabulary"):
        warm.preload_drafts([good, prompt[-4:] + plain.token_ids[:1] + [vocab + 7] * 4])
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        warm.preload_drafts([[1, -3, 2]])
    assert warm.draft_history() == []  # nothing of a refused batch was indexed
    assert warm.generate([prompt], GREEDY)[0].token_ids == plain.token_ids
