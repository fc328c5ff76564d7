"""The training loop: AdamW + warmup/cosine, joint next-token and MTP (t+2) loss, resumable checkpoints."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from engine.model.config import ModelConfig
from engine.model.loader import save_model
from engine.model.qwen3_moe import MoEForCausalLM

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class TrainConfig:
    steps: int = 1200
    batch_size: int = 16
    seq_len: int = 1024
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 60
    weight_decay: float = 0.05
    mtp_weight: float = 0.3
    airline_fraction: float = 0.75
    seed: int = 0
    checkpoint_every: int = 200
    device: str = "cpu"
    threads: int = 2

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 8:
            raise ValueError("steps, batch_size must be >= 1 and seq_len >= 8")
        if not 0.0 <= self.airline_fraction <= 1.0:
            raise ValueError(f"airline_fraction must be in [0, 1], got {self.airline_fraction}")


def default_model_config(vocab_size: int, end_id: int) -> ModelConfig:
    return ModelConfig(
        architecture="Qwen3MoeForCausalLM", vocab_size=vocab_size, hidden_size=256, num_layers=6,
        num_heads=4, num_kv_heads=2, head_dim=64, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=320, intermediate_size=1024, norm_topk_prob=True, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=True, qk_norm=True,
        eos_token_id=(end_id,), bos_token_id=None, mtp_num_layers=1,
    )


def draft_model_config(vocab_size: int, end_id: int) -> ModelConfig:
    """The shipped draft model for speculative decoding: same tokenizer, 2 dense layers, hidden 128
    (~1.5M parameters, ~12x fewer than the default model), no MTP module."""
    return ModelConfig(
        architecture="Qwen3MoeForCausalLM", vocab_size=vocab_size, hidden_size=128, num_layers=2,
        num_heads=2, num_kv_heads=1, head_dim=64, num_experts=1, num_experts_per_tok=1,
        moe_intermediate_size=384, intermediate_size=384, norm_topk_prob=True, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=True, qk_norm=True,
        eos_token_id=(end_id,), bos_token_id=None, mtp_num_layers=0, mlp_only_layers=(0, 1),
    )


def init_weights(model: MoEForCausalLM, seed: int) -> None:
    """Normal(0, 0.02) weights, residual output projections scaled by 1/sqrt(2 * layers), unit norms."""
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 / math.sqrt(2 * model.config.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                std = 0.02 * (scale if name.endswith(("o_proj.weight", ".w2")) else 1.0)
                p.copy_(torch.randn(p.shape, generator=g) * std)


class Batches:
    """Random windows of seq_len+1 tokens: airline conversations or the stdlib stream."""

    def __init__(self, airline: list[list[int]], stdlib: list[int], cfg: TrainConfig) -> None:
        self.airline, self.stdlib, self.cfg = airline, stdlib, cfg
        self.rng = random.Random(cfg.seed)

    def window(self) -> list[int]:
        n = self.cfg.seq_len + 1
        use_airline = self.rng.random() < self.cfg.airline_fraction or len(self.stdlib) <= n
        src = self.rng.choice(self.airline) if use_airline else self.stdlib
        if len(src) <= n:
            return src + [0] * (n - len(src))
        start = self.rng.randrange(0, len(src) - n + 1)
        return src[start : start + n]

    def next(self) -> torch.Tensor:
        return torch.tensor([self.window() for _ in range(self.cfg.batch_size)], dtype=torch.long)


class Schedule(Protocol):
    lr: float
    warmup: int
    steps: int
    min_lr_ratio: float


class HasRng(Protocol):
    rng: random.Random


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.95) with weight decay on matrices only (not norms or biases)."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Backward, clip the gradient norm to 1.0, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def progress_bar() -> Progress:
    """The training progress bar: steps, an info field (loss, rate) and the time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn())


def lr_at(step: int, cfg: Schedule) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model_cfg: ModelConfig, batches: Batches, cfg: TrainConfig, out: Path) -> dict[str, float]:
    """Train, checkpointing to out/checkpoint.pt (resumed when present); save the model to `out`."""
    torch.manual_seed(cfg.seed)
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    model = MoEForCausalLM(model_cfg)
    init_weights(model, cfg.seed)
    model.to(cfg.device)
    opt = adamw(model, cfg.lr, cfg.weight_decay)
    step = resume(out / "checkpoint.pt", model, opt, batches)
    log: dict[str, float] = {}
    start, tokens = time.perf_counter(), 0
    with progress_bar() as bar:
        task = bar.add_task("training", total=cfg.steps, completed=step, info="")
        while step < cfg.steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            ids = batches.next().to(cfg.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.device.startswith("cuda")):
                base, mtp = model.loss(ids, mtp_weight=cfg.mtp_weight)
                loss = base + cfg.mtp_weight * mtp if mtp is not None else base
            optimizer_step(model, opt, loss)
            step += 1
            tokens += ids.numel()
            rate = tokens / (time.perf_counter() - start)
            log = {"step": step, "loss": base.item(), "mtp_loss": mtp.item() if mtp is not None else 0.0, "tokens_per_s": rate}
            bar.update(task, completed=step, info=f"loss {log['loss']:.3f} mtp {log['mtp_loss']:.3f} {rate:,.0f} tok/s")
            if step % 50 == 0:
                logger.info("step %d loss %.4f mtp %.4f %.0f tok/s", step, log["loss"], log["mtp_loss"], rate)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint(out / "checkpoint.pt", model, opt, step, batches)
    save_model(model.cpu(), out, dtype=torch.bfloat16)
    log["train_seconds"] = time.perf_counter() - start
    log["config"] = asdict(cfg)  # type: ignore[assignment]
    return log


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, batches: HasRng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "rng": batches.rng.getstate(), "torch_rng": torch.get_rng_state()}
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def resume(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, batches: HasRng) -> int:
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    batches.rng.setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    logger.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"])
