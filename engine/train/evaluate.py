"""Quality figures of a trained model on the held-out airline tasks.

* perplexity of the base model (next token) and of the MTP head (token t+2), windows of `seq_len`
* MTP top-1 accuracy for token t+2
* the demo's skills (`skill_figures`): first tool calls of held-out runs and synthetic requests,
  schema-constrained extraction
* tool-call rate: over held-out assistant turns that call a tool, the fraction whose greedy output
  (prompt = the conversation so far, truncated to the last `seq_len - max_new` tokens) contains a
  well-formed tool call naming a real tool
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from engine.chat.tool_calls import parse_tool_calls
from engine.model.loader import load_model
from engine.tokenizer import ChatTokenizer, render_chat
from engine.train.data import AirlineData, render_conversations


@torch.no_grad()
def perplexity(model_dir: Path, data: AirlineData, seq_len: int = 1024, max_windows: int = 64) -> dict[str, float]:
    model, _ = load_model(model_dir, dtype=torch.float32)
    model.eval()
    tok = ChatTokenizer(model_dir)
    windows: list[list[int]] = []
    for text in render_conversations(data.held_out, data.tools):
        toks = tok.encode(text)
        windows += [toks[i : i + seq_len] for i in range(0, len(toks) - seq_len // 4, seq_len)]
    windows = [w for w in windows if len(w) > 8][:max_windows]
    nll = nll2 = 0.0
    n1 = n2 = correct2 = 0
    for w in windows:
        ids: torch.Tensor = torch.tensor([w])
        pre = model.forward_dense(ids, return_prenorm=True)
        logits = model.compute_logits(model.norm(pre[:, :-1]))
        nll += torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
        n1 += ids.shape[1] - 1
        if model.mtp is not None and ids.shape[1] > 2:
            l2 = model.compute_logits(model.forward_mtp_dense(pre[:, :-2], ids[:, 1:-1]))
            nll2 += torch.nn.functional.cross_entropy(l2[0], ids[0, 2:], reduction="sum").item()
            correct2 += int((l2[0].argmax(-1) == ids[0, 2:]).sum())
            n2 += ids.shape[1] - 2
    out = {"perplexity": math.exp(nll / n1), "eval_tokens": float(n1)}
    if n2:
        out |= {"mtp_perplexity": math.exp(nll2 / n2), "mtp_top1_accuracy": correct2 / n2}
    return out


def tool_call_turns(data: AirlineData) -> list[tuple[list[dict[str, Any]], str]]:
    """(conversation so far, expected tool name) for each held-out assistant turn that calls a tool."""
    cases = []
    for conv in data.held_out:
        for i, m in enumerate(conv):
            if m["role"] == "assistant" and m.get("tool_calls"):
                cases.append((conv[:i], m["tool_calls"][0]["function"]["name"]))
    return cases


def tool_call_rate(model_dir: Path, data: AirlineData, seq_len: int = 1024, max_new: int = 96, limit: int = 60) -> dict[str, float]:
    from engine import LLM, SamplingParams

    llm = LLM(model_dir, device="cpu")
    tok = ChatTokenizer(model_dir)
    names = {t["function"]["name"] for t in data.tools}
    cases = tool_call_turns(data)[:limit]
    prompts = [tok.encode(render_chat(conv, data.tools))[-(seq_len - max_new) :] for conv, _ in cases]
    params = SamplingParams(temperature=0.0, max_tokens=max_new, stop_token_ids=(tok.end_id,))
    outs = llm.generate(prompts, params)
    well_formed = right_name = 0
    for (_, expected), out in zip(cases, outs, strict=True):
        calls = parse_tool_calls(out.text)
        if calls and calls[0][0] in names:
            well_formed += 1
            right_name += calls[0][0] == expected
    return {
        "tool_call_turns": float(len(cases)),
        "tool_call_well_formed_rate": well_formed / max(1, len(cases)),
        "tool_call_expected_name_rate": right_name / max(1, len(cases)),
    }


def _first_call_cases(convs: list[list[dict[str, Any]]]) -> list[tuple[list[dict[str, Any]], str, dict[str, Any]]]:
    from engine.train.synthetic import first_tool_call

    return [case for case in map(first_tool_call, convs) if case is not None]


def _call_scores(llm: Any, tok: ChatTokenizer, cases: list[tuple[list[dict[str, Any]], str, dict[str, Any]]],
                 tools: list[dict[str, Any]], max_new: int = 64) -> tuple[float, float]:
    """(right tool name rate, exact name + arguments rate) of greedy outputs at each case's turn."""
    from engine import SamplingParams

    prompts = [tok.encode(render_chat(conv, tools)) for conv, _, _ in cases]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_new, stop_token_ids=(tok.end_id,)))
    name = exact = 0
    for (_, expected, args), out in zip(cases, outs, strict=True):
        calls = parse_tool_calls(out.text)
        if calls and calls[0][0] == expected:
            name += 1
            exact += calls[0][1] == args
    return name / max(1, len(cases)), exact / max(1, len(cases))


def skill_figures(model_dir: Path, data: AirlineData, data_dir: str | Path | None = None, synthetic: int = 100) -> dict[str, float]:
    """The demo's skills, on work the model never trained on (docs/model.md):

    * first tool call of each held-out recorded run: the recorded tool named, and its arguments exact;
    * the first tool call of `synthetic` held-out synthetic conversations (eval users): name + arguments exact;
    * schema-constrained extraction of held-out names/wordings (`engine.train.extraction`): JSON exact."""
    import json

    from engine import LLM, SamplingParams
    from engine.train.extraction import extraction_examples
    from engine.train.synthetic import synthetic_conversations

    llm = LLM(model_dir, device="cpu")
    tok = ChatTokenizer(model_dir)
    recorded = _first_call_cases(data.held_out)
    first_name, first_exact = _call_scores(llm, tok, recorded, data.tools)
    system = data.held_out[0][0]["content"]
    held = _first_call_cases(synthetic_conversations(synthetic, "eval", system, seed=1, data_dir=data_dir))
    _, synth_exact = _call_scores(llm, tok, held, data.tools)
    examples = extraction_examples(synthetic, "eval", seed=1)
    right = 0
    for kind in sorted({ex.kind for ex in examples}):  # one batch per schema
        group = [ex for ex in examples if ex.kind == kind]
        params = SamplingParams(temperature=0.0, max_tokens=64, json_schema=group[0].schema)
        for ex, out in zip(group, llm.generate([tok.encode(render_chat(ex.messages()[:1])) for ex in group], params), strict=True):
            try:
                right += json.loads(out.text) == ex.answer
            except ValueError:
                pass
    return {"first_call_cases": float(len(recorded)), "first_call_name_rate": first_name, "first_call_exact_rate": first_exact,
            "synthetic_cases": float(len(held)), "synthetic_exact_rate": synth_exact,
            "extraction_cases": float(len(examples)), "extraction_exact_rate": right / max(1, len(examples))}
