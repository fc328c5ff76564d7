"""Training loop: deterministic, resumable from its checkpoint, saves a loadable model."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.model.loader import load_model
from engine.train.loop import Batches, TrainConfig, default_model_config, lr_at, train


def tiny_cfg(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=2, seq_len=16, warmup=2, checkpoint_every=2, threads=1)


def corpus() -> tuple[list[list[int]], list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(10, 200, (40,), generator=g).tolist() for _ in range(4)], torch.randint(10, 200, (100,), generator=g).tolist()


def small_model() -> object:
    cfg = default_model_config(256, 6)
    cfg.num_layers, cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts = 1, 32, 16, 4
    cfg.num_heads, cfg.num_kv_heads, cfg.head_dim = 2, 1, 16
    return cfg


def test_a_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    airline, stdlib = corpus()
    straight = train(small_model(), Batches(airline, stdlib, tiny_cfg(4)), tiny_cfg(4), tmp_path / "a")  # type: ignore[arg-type]
    train(small_model(), Batches(airline, stdlib, tiny_cfg(2)), tiny_cfg(2), tmp_path / "b")  # type: ignore[arg-type]
    resumed = train(small_model(), Batches(airline, stdlib, tiny_cfg(4)), tiny_cfg(4), tmp_path / "b")  # type: ignore[arg-type]
    assert resumed["step"] == 4
    assert abs(resumed["loss"] - straight["loss"]) < 1e-5
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == 1e-4 and lr_at(9, cfg) == 1e-3
    assert lr_at(55, cfg) < lr_at(20, cfg) and abs(lr_at(100, cfg) - 1e-4) < 1e-9
