"""The engine's one config dataclass. Environment variables are read here and nowhere else."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default_model"
DEFAULT_DRAFT_MODEL_DIR = Path(__file__).parent / "assets" / "draft_model"
DRAFTERS = ("suffix", "ngram", "mtp", "draft")


@dataclass(slots=True)
class EngineConfig:
    """How to run the engine.

    `model=None` is the shipped default model. `num_kv_blocks=None` sizes the KV cache from
    `kv_cache_memory_gb`. `max_model_len=None` takes the model's `max_position_embeddings`.
    Raises ValueError on out-of-range values.
    """

    model: str | Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory_gb: float = 1.0
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    num_threads: int | None = None
    host_kv_blocks: int = 0  # host-memory KV tier size in blocks (0 = off)
    disk_kv_dir: str | Path | None = None  # disk KV tier below the host tier (needs host_kv_blocks)
    disk_kv_blocks: int = 0
    disk_kv_min_hits: int = 2  # write a block to disk only if it was used at least this often
    # ThunderAgent pausing (needs host_kv_blocks): pause pinned agents when the device KV working set
    # passes this fraction of the pool; None = off (pins are then only released under pressure).
    kv_pause_fraction: float | None = 0.95
    kv_storage_budget_bytes: int = 256 << 20  # KV bytes the storage worker may have in flight (disk writes, prefetches)
    quantization: str | None = None  # None, "nvfp4" or "mxfp4": FP4 MoE experts (quantised at load)
    # Speculative decoding: None (off), or one or more of "suffix" (global suffix tree over earlier
    # prompts and outputs), "ngram" (prompt lookup), "mtp" (the model's MTP module, 1 token),
    # "draft" (a small draft model), comma-separated. A request with speculative=True gets the
    # drafter and draft length with the most expected tokens per verify cost, chosen every step
    # from the drafters' match confidence and the request's acceptance history (speculative/chooser.py).
    speculative: str | None = None
    num_speculative_tokens: int = 4
    # A verify step's cost in plain decode steps: 1 + overhead + per_token * drafts. Fitted to the
    # shipped model's CPU steps at 1.5k-2k tokens of context (median process CPU time, 1 thread,
    # relative to a 1-row step): 2 rows 1.12, 3 rows 1.17, 5 rows 1.33, 9 rows 1.48, 17 rows 2.32.
    # benchmarks/verify_cost.py re-measures the curve and splits it by kernel (docs/benchmarks.md).
    spec_verify_overhead: float = 0.15
    spec_token_cost: float = 0.06
    # Tree verification: a greedy request drafted by the suffix drafter alone verifies a token tree
    # (its global tree's branches and the prompt-lookup chain) in one step instead of one chain, where
    # the runner supports token-tree attention (CPU fp32 on the AVX2 two-pass kernel, a model with plain
    # GQA, no MTP or draft model); elsewhere it drafts chains (runner.ModelRunner.tree_verification).
    spec_tree: bool = False
    draft_model: str | Path | None = None  # the "draft" drafter's model (None = the shipped one)
    cuda_graphs: bool = True  # on CUDA, replay captured graphs for pure decode steps (engine/cuda_graphs.py)
    # On CPU, run a step's kernels on fewer threads while other processes keep cores busy
    # (engine/kernels/cpu/busy.py). None: on, unless OMP_WAIT_POLICY=passive is set (its sleeping
    # barrier waiters already give a stalled thread its core back).
    adaptive_cpu_threads: bool | None = None

    def __post_init__(self) -> None:
        if self.model is None and os.environ.get("AGENTRT_MODEL"):
            self.model = os.environ["AGENTRT_MODEL"]
        if self.adaptive_cpu_threads is None:
            self.adaptive_cpu_threads = os.environ.get("OMP_WAIT_POLICY", "").strip().lower() != "passive"
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be auto/bfloat16/float16/float32, got {self.dtype!r}")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kv_pause_fraction is not None and not 0.0 < self.kv_pause_fraction <= 1.0:
            raise ValueError(f"kv_pause_fraction must be None or in (0, 1], got {self.kv_pause_fraction}")
        if self.kv_storage_budget_bytes < 1:
            raise ValueError(f"kv_storage_budget_bytes must be >= 1, got {self.kv_storage_budget_bytes}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be None or >= 1, got {self.num_kv_blocks}")
        if self.quantization not in (None, "nvfp4", "mxfp4"):
            raise ValueError(f"quantization must be None, 'nvfp4' or 'mxfp4', got {self.quantization!r}")
        bad = [d for d in self.drafters if d not in DRAFTERS]
        if bad or (self.speculative is not None and not self.drafters):
            raise ValueError(f"speculative must be None or a comma-separated subset of {DRAFTERS}, got {self.speculative!r}")
        if not 1 <= self.num_speculative_tokens <= 16:
            raise ValueError(f"num_speculative_tokens must be in [1, 16], got {self.num_speculative_tokens}")
        if self.spec_verify_overhead < 0 or self.spec_token_cost < 0:
            raise ValueError(f"spec_verify_overhead and spec_token_cost must be >= 0, got {self.spec_verify_overhead}, {self.spec_token_cost}")
        if self.kv_cache_memory_gb <= 0:
            raise ValueError(f"kv_cache_memory_gb must be > 0, got {self.kv_cache_memory_gb}")

    @property
    def drafters(self) -> tuple[str, ...]:
        """The enabled drafters, the default one first."""
        if not self.speculative:
            return ()
        return tuple(d.strip() for d in self.speculative.split(",") if d.strip())

    @property
    def draft_model_path(self) -> Path:
        return Path(self.draft_model) if self.draft_model is not None else DEFAULT_DRAFT_MODEL_DIR

    @property
    def model_path(self) -> Path:
        return Path(self.model) if self.model is not None else DEFAULT_MODEL_DIR

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolve_dtype(self, device: torch.device | None = None) -> torch.dtype:
        """'auto' is bf16 on CUDA; on CPU it is fp32, because CPUs without native bf16 matmul
        (AVX2-only, like the CI machine) run bf16 MoE decode slower than fp32 (docs/benchmarks.md)."""
        if self.dtype == "auto":
            device = device or self.resolve_device()
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[self.dtype]


class DataDirError(FileNotFoundError):
    """The public data directory (../shared/data or $AGENTRT_DATA_DIR) is missing a needed file."""


def data_dir(override: str | Path | None = None) -> Path:
    """The public data directory: `override`, else $AGENTRT_DATA_DIR, else <repo>/../shared/data."""
    if override is not None:
        return Path(override)
    env = os.environ.get("AGENTRT_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def data_file(*parts: str, override: str | Path | None = None) -> Path:
    """A file under the data directory; raises DataDirError naming the path and the setting."""
    path = data_dir(override).joinpath(*parts)
    if not path.exists():
        raise DataDirError(
            f"data file {path} not found: set AGENTRT_DATA_DIR (or pass a data dir) to the folder holding {parts[0]}/"
        )
    return path
