"""The shipped default model: loads with no arguments, matches transformers, keeps its quality."""

from __future__ import annotations

import json

import pytest
import torch

from engine import LLM, SamplingParams
from engine.chat.tool_calls import parse_tool_calls
from engine.config import DEFAULT_MODEL_DIR, data_dir
from engine.model.loader import load_model
from engine.tokenizer import ChatTokenizer, render_chat

EVAL = json.loads((DEFAULT_MODEL_DIR / "eval.json").read_text())
HAVE_DATA = (data_dir() / "tau-bench-airline" / "trajectories.json").exists()


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM()


def test_shipped_model_is_small_and_has_an_mtp_module() -> None:
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert size <= 40 * 2**20
    model, cfg = load_model(DEFAULT_MODEL_DIR)
    assert model.mtp is not None and cfg.num_experts == 8 and cfg.num_experts_per_tok == 2
    assert 15e6 < sum(p.numel() for p in model.parameters()) < 60e6


def test_transformers_loads_the_base_weights_with_equal_logits() -> None:
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32).eval()
    ours, _ = load_model(DEFAULT_MODEL_DIR, dtype=torch.float32)
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    ids = torch.tensor([tok.encode_chat([{"role": "user", "content": "I want to cancel reservation ABC123."}])])
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.compute_logits(ours.forward_dense(ids))
    assert (ref - got).abs().max().item() <= 1e-4


def test_default_llm_replies_like_an_airline_agent(llm: LLM) -> None:
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    prompt = tok.encode_chat(
        [{"role": "system", "content": "# Airline Agent Policy\nYou are an airline agent."},
         {"role": "user", "content": "Hi, I would like to cancel my flight reservation."}]
    )
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=48, stop_token_ids=(tok.end_id,)))[0]
    assert out.text.strip(), "empty reply"
    assert any(w in out.text.lower() for w in ("user id", "reservation", "help", "cancel")), out.text


@pytest.mark.skipif(not HAVE_DATA, reason="needs ../shared/data/tau-bench-airline (AGENTRT_DATA_DIR)")
def test_held_out_perplexity_stays_below_the_recorded_figure() -> None:
    from engine.train.data import load_airline
    from engine.train.evaluate import perplexity

    figures = perplexity(DEFAULT_MODEL_DIR, load_airline(), max_windows=8)
    assert figures["perplexity"] < EVAL["perplexity"] * 1.15


@pytest.mark.skipif(not HAVE_DATA, reason="needs ../shared/data/tau-bench-airline (AGENTRT_DATA_DIR)")
def test_held_out_tool_turns_mostly_produce_well_formed_calls(llm: LLM) -> None:
    from engine.train.data import load_airline
    from engine.train.evaluate import tool_call_turns

    data = load_airline()
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    names = {t["function"]["name"] for t in data.tools}
    cases = tool_call_turns(data)[:8]
    prompts = [tok.encode(render_chat(conv, data.tools))[-900:] for conv, _ in cases]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=96, stop_token_ids=(tok.end_id,)))
    good = sum(bool(c) and c[0][0] in names for c in (parse_tool_calls(o.text) for o in outs))
    assert good >= len(cases) // 2


@pytest.mark.skipif(not HAVE_DATA, reason="needs ../shared/data/tau-bench-airline (AGENTRT_DATA_DIR)")
def test_the_demo_skills_on_work_it_never_saw_stay_within_a_few_points_of_the_recorded_figures() -> None:
    """First tool calls of held-out runs, held-out synthetic requests and extraction (docs/model.md).
    Both ways: a drop is a regression, a rise means eval.json (and docs/model.md) must be updated."""
    from engine.train.data import load_airline
    from engine.train.evaluate import skill_figures

    figures = skill_figures(DEFAULT_MODEL_DIR, load_airline())
    for key in ("first_call_name_rate", "first_call_exact_rate", "synthetic_exact_rate", "extraction_exact_rate"):
        assert abs(figures[key] - EVAL[key]) <= 0.05, (key, figures[key], EVAL[key])
