"""Stage-2 fine-tuning: alternates shared-prefix and plain batches, resumes, saves a loadable model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.model.loader import load_model, save_model
from engine.train.finetune import FinetuneBatches, FinetuneConfig, FinetuneData, finetune
from tests.engine.train.test_prefix import tiny_model


def data() -> FinetuneData:
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(10, 250, (n,), generator=g).tolist()  # noqa: E731
    return FinetuneData(prefix=ids(12), synthetic=[ids(9), ids(5)], recorded=[ids(7)], extraction=ids(80), code=ids(80))


def cfg(steps: int) -> FinetuneConfig:
    return FinetuneConfig(steps=steps, batch_size=2, suffix_len=8, plain_len=8, plain_every=2, warmup=1, checkpoint_every=1)


def test_a_resumed_fine_tune_ends_where_an_uninterrupted_one_ends(tmp_path: Path) -> None:
    save_model(tiny_model(), tmp_path / "init", dtype=torch.float32)
    straight = finetune(tmp_path / "init", tmp_path / "a", FinetuneBatches(data(), cfg(4)), cfg(4))
    finetune(tmp_path / "init", tmp_path / "b", FinetuneBatches(data(), cfg(2)), cfg(2))
    resumed = finetune(tmp_path / "init", tmp_path / "b", FinetuneBatches(data(), cfg(4)), cfg(4))
    assert resumed["step"] == 4 and resumed["kind"] == "plain"  # steps alternate prefix, plain
    assert abs(resumed["loss"] - straight["loss"]) < 1e-5
    a, _ = load_model(tmp_path / "a")
    init, _ = load_model(tmp_path / "init")
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), init.state_dict().values(), strict=True))


def test_suffix_batches_pad_and_mask_and_bad_configs_are_rejected() -> None:
    ids, mask = FinetuneBatches(data(), cfg(1)).suffixes()
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert all(int(m.sum()) in (5, 7, 8) for m in mask)  # suffixes cut at suffix_len=8, the rest padding
    with pytest.raises(ValueError, match="plain_every"):
        FinetuneConfig(plain_every=1)
