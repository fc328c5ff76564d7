"""Stage 2 of the default model: fine-tune on the skill the demo needs, from the stage-1 weights.

Stage 1 (`engine.train.loop`) teaches the domain on 1,024-token windows of the recorded runs and
Python source. Stage 2 starts from those weights and trains, per step, either
* a shared-prefix batch (`engine.train.prefix`): the system turn (policy + tools) encoded once, then
  `batch_size` conversations after it at their true positions, up to `suffix_len` tokens each:
  synthetic conversations (`engine.train.synthetic`, train users only) or recorded train runs; or
* (every `plain_every`-th step) a plain batch of `plain_len`-token windows, 3/4 schema-extraction
  examples (`engine.train.extraction`, train names/wordings) and 1/4 Python source,
with next-token + MTP (t+2) loss on real tokens only, AdamW with warm-up and cosine decay.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from engine.model.loader import load_model, save_model
from engine.tokenizer import ChatTokenizer, render_chat
from engine.train.loop import adamw, lr_at, optimizer_step, progress_bar, resume, save_checkpoint
from engine.train.prefix import encode_prefix, suffix_loss

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class FinetuneConfig:
    steps: int = 100
    batch_size: int = 4
    suffix_len: int = 512
    plain_len: int = 512
    plain_every: int = 3
    synthetic_fraction: float = 0.65
    lr: float = 1e-3
    warmup: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    mtp_weight: float = 0.3
    seed: int = 0
    threads: int = 1
    checkpoint_every: int = 20

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.suffix_len < 8 or self.plain_len < 8 or self.plain_every < 2:
            raise ValueError("steps and batch_size must be >= 1, suffix_len/plain_len >= 8, plain_every >= 2")


@dataclass(slots=True)
class FinetuneData:
    """Token ids: the shared prefix, conversations after it (synthetic, recorded), plain streams."""

    prefix: list[int]
    synthetic: list[list[int]]
    recorded: list[list[int]]
    extraction: list[int]
    code: list[int]


def encode_data(tok: ChatTokenizer, system: str, tools: list[dict[str, Any]], synthetic: list[list[dict[str, Any]]],
                recorded: list[list[dict[str, Any]]], extraction: list[list[dict[str, Any]]], code: list[str]) -> FinetuneData:
    """Render and tokenize; every conversation must open with exactly the shared system turn."""
    prefix = tok.encode(render_chat([{"role": "system", "content": system}], tools, add_generation_prompt=False))

    def after_prefix(conv: list[dict[str, Any]]) -> list[int]:
        ids = tok.encode(render_chat(conv, tools, add_generation_prompt=False))
        if ids[: len(prefix)] != prefix:
            raise ValueError("a conversation does not open with the shared system turn")
        return ids[len(prefix):]

    eos = tok.special["<|eos|>"]
    return FinetuneData(prefix, [after_prefix(c) for c in synthetic], [after_prefix(c) for c in recorded],
                        [i for ex in extraction for i in tok.encode(render_chat(ex, add_generation_prompt=False))],
                        [i for text in code for i in tok.encode(text) + [eos]])


class FinetuneBatches:
    def __init__(self, data: FinetuneData, cfg: FinetuneConfig) -> None:
        self.data, self.cfg, self.rng = data, cfg, random.Random(cfg.seed)

    def suffixes(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for _ in range(self.cfg.batch_size):
            pool = self.data.synthetic if self.rng.random() < self.cfg.synthetic_fraction or not self.data.recorded else self.data.recorded
            rows.append(self.rng.choice(pool)[: self.cfg.suffix_len])
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return ids, mask

    def plain(self) -> torch.Tensor:
        n = self.cfg.plain_len + 1
        rows = []
        for i in range(self.cfg.batch_size):
            src = self.data.extraction if i % 4 != 3 or len(self.data.code) <= n else self.data.code  # 3/4 extraction
            start = self.rng.randrange(0, max(1, len(src) - n + 1))
            rows.append((src[start : start + n] + [0] * n)[:n])
        return torch.tensor(rows)


def finetune(init: Path, out: Path, batches: FinetuneBatches, cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune the model in `init` and save it (config + weights, bf16) to `out`; resumable."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model, _ = load_model(init, dtype=torch.float32)
    model.train()
    opt = adamw(model, cfg.lr, cfg.weight_decay)
    ckpt = out / "finetune_checkpoint.pt"
    step = resume(ckpt, model, opt, batches)
    log: dict[str, Any] = {}
    start, tokens = time.perf_counter(), 0
    with progress_bar() as bar:
        task = bar.add_task("fine-tuning", total=cfg.steps, completed=step, info="")
        while step < cfg.steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            if step % cfg.plain_every == cfg.plain_every - 1:
                ids = batches.plain()
                base, mtp = model.loss(ids, mtp_weight=cfg.mtp_weight)
                kind, n = "plain", ids.numel()
            else:
                ids, mask = batches.suffixes()
                base, mtp = suffix_loss(model, encode_prefix(model, batches.data.prefix), ids, mask, cfg.mtp_weight)
                kind, n = "prefix", int(mask.sum())
            loss = base + cfg.mtp_weight * mtp if mtp is not None else base
            optimizer_step(model, opt, loss)
            step, tokens = step + 1, tokens + n
            rate = tokens / (time.perf_counter() - start)
            log = {"step": step, "kind": kind, "loss": base.item(), "mtp_loss": mtp.item() if mtp is not None else 0.0, "tokens_per_s": rate}
            bar.update(task, completed=step, info=f"{kind} loss {log['loss']:.3f} mtp {log['mtp_loss']:.3f} {rate:,.0f} tok/s")
            if step % 10 == 0:
                logger.info("step %d %s loss %.4f mtp %.4f %.0f tok/s", step, kind, log["loss"], log["mtp_loss"], rate)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint(ckpt, model, opt, step, batches)
    save_model(model.cpu(), out, dtype=torch.bfloat16)
    log["train_seconds"] = time.perf_counter() - start
    log["config"] = asdict(cfg)
    return log
