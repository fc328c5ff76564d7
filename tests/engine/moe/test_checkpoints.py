"""Pre-quantised FP4 checkpoints: save -> load round trips equal quantise-at-load, tensor layouts
match the formats' conventions, malformed files fail naming the tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import LLM, SamplingParams
from engine.errors import ModelLoadError
from engine.model.fp4_checkpoint import QUANT_CONFIGS, import_experts
from engine.model.loader import load_model
from engine.quantize import quantize_checkpoint


@pytest.fixture(scope="module")
def tiny32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3-MoE whose hidden and expert sizes are multiples of 32 (both FP4 block sizes)."""
    from tests.engine.conftest import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny32"), "qwen3_moe", seed=4, hidden_size=64)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("model*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _fp4_tensors(mlp: torch.nn.Module) -> list[torch.Tensor]:
    """A serving MoE layer's FP4 experts: the packed tensors, or the CPU panels built from them."""
    q = mlp.quantized
    if q is not None:
        return [q.w13.packed, q.w2.packed, q.w13.scales.view(torch.uint8), q.w2.scales.view(torch.uint8), q.w13.dequantize()]
    p = mlp.cpu_experts
    assert p is not None and hasattr(p, "c13"), "FP4 experts were lost"
    return [p.c13, p.s13, p.rs13, p.c2, p.s2, p.rs2]


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_prequantised_checkpoint_equals_quantise_at_load(tiny32: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / fmt
    quantize_checkpoint(tiny32, fmt, out)
    assert json.loads((out / "config.json").read_text())["quantization_config"] == QUANT_CONFIGS[fmt]
    opts = dict(device="cpu", dtype="float32", block_size=4, num_kv_blocks=128)
    at_load = LLM(tiny32, quantization=fmt, **opts)  # type: ignore[arg-type]
    pre = LLM(out, **opts)  # type: ignore[arg-type]
    for a, b in zip(at_load.model.layers, pre.model.layers, strict=True):
        assert b.mlp.w13.numel() == 0  # no dense expert copy was allocated
        for ta, tb in zip(_fp4_tensors(a.mlp), _fp4_tensors(b.mlp), strict=True):
            assert torch.equal(ta, tb)
    prompts = [[3, 9, 27, 81, 5], [7, 7, 1, 2]]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    assert [o.token_ids for o in pre.generate(prompts, params)] == [o.token_ids for o in at_load.generate(prompts, params)]


def test_layouts_follow_gpt_oss_and_modelopt_names(tiny32: Path, tmp_path: Path) -> None:
    quantize_checkpoint(tiny32, "mxfp4", tmp_path / "mx")
    quantize_checkpoint(tiny32, "nvfp4", tmp_path / "nv")
    mx, nv = _tensors(tmp_path / "mx"), _tensors(tmp_path / "nv")
    e, h, i = 8, 64, 32
    assert mx["model.layers.0.mlp.experts.gate_up_proj_blocks"].shape == (e, 2 * i, h // 32, 16)
    assert mx["model.layers.0.mlp.experts.gate_up_proj_scales"].dtype == torch.uint8
    assert mx["model.layers.1.mlp.experts.down_proj_blocks"].shape == (e, h, i // 32, 16)
    assert nv["model.layers.0.mlp.experts.3.up_proj.weight"].shape == (i, h // 2)
    assert nv["model.layers.0.mlp.experts.3.up_proj.weight_scale"].dtype == torch.float8_e4m3fn
    assert nv["model.layers.0.mlp.experts.3.down_proj.weight_scale_2"].shape == ()
    assert not any(k.endswith("experts.0.gate_proj.weight") and v.dtype != torch.uint8 for k, v in nv.items())
    assert nv["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16  # attention stays dense


def test_per_expert_second_level_scales_are_honoured(tiny32: Path, tmp_path: Path) -> None:
    """ModelOpt checkpoints carry one weight_scale_2 per expert and projection: doubling one
    expert's scale_2 and halving its block scales must dequantise to the same weights."""
    out = tmp_path / "nv"
    quantize_checkpoint(tiny32, "nvfp4", out)
    before = load_model(out)[0].layers[0].mlp.quantized.w13.dequantize()
    tensors = _tensors(out)
    name = "model.layers.0.mlp.experts.2.gate_proj"
    scale = tensors[name + ".weight_scale"].float()
    assert bool((scale / 2).to(torch.float8_e4m3fn).float().eq(scale / 2).all())  # exact in E4M3 here
    tensors[name + ".weight_scale"] = (scale / 2).to(torch.float8_e4m3fn)
    tensors[name + ".weight_scale_2"] = tensors[name + ".weight_scale_2"] * 2
    for f in out.glob("model*.safetensors"):
        f.unlink()
    (out / "model.safetensors.index.json").unlink(missing_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    q = load_model(out)[0].layers[0].mlp.quantized
    assert isinstance(q.w13.tensor_scale, torch.Tensor)  # per-row now
    torch.testing.assert_close(q.w13.dequantize(), before, atol=0, rtol=0)


def test_malformed_fp4_tensors_fail_naming_the_tensor(tiny32: Path, tmp_path: Path) -> None:
    out = tmp_path / "mx"
    quantize_checkpoint(tiny32, "mxfp4", out)
    tensors = _tensors(out)
    bad = "model.layers.1.mlp.experts.down_proj_scales"
    tensors[bad] = tensors[bad][:, :, :0]
    for f in out.glob("model*.safetensors"):
        f.unlink()
    (out / "model.safetensors.index.json").unlink(missing_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="down_proj_scales"):
        load_model(out)
    with pytest.raises(ModelLoadError, match="missing tensor"):
        from engine.model.config import ModelConfig

        import_experts(ModelConfig.from_hf(out), 0, "nvfp4", {})
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq"}
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unsupported quantization_config"):
        load_model(out)


def test_the_cli_refuses_to_overwrite_its_source(tiny32: Path) -> None:
    with pytest.raises(ValueError, match="differ"):
        quantize_checkpoint(tiny32, "nvfp4", tiny32)
