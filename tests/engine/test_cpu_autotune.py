"""The per-CPU autotune of the C kernels' work split: every candidate computes bitwise the same
outputs (so tuning can never change a result, and decode still equals verification), the choice is
cached beside the library and read back without tuning again, and AGENTRT_AUTOTUNE turns it off or
forces a re-tune."""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import pytest
import torch

from engine.kernels.cpu import attention as cpu_attention
from engine.kernels.cpu import autotune, native
from engine.kernels.cpu import linear as cpu_linear


def _address(params: tuple[int, ...]) -> tuple[ctypes.Array[ctypes.c_int64], int]:
    arr = (ctypes.c_int64 * len(params))(*params)
    return arr, ctypes.addressof(arr)


@pytest.mark.skipif(not cpu_linear.available(), reason="no C compiler / CPU for the kernels")
@pytest.mark.parametrize(("rows", "k", "n", "dtype"), [(1, 64, 40, torch.float32), (5, 96, 100, torch.bfloat16),
                                                       (13, 48, 200, torch.float32), (16, 200, 16, torch.bfloat16)])
def test_every_linear_candidate_gives_bitwise_the_same_output(rows: int, k: int, n: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(rows * 1000 + n)
    panels = cpu_linear.pack(torch.randn(n, k, generator=g).to(dtype), dtype)
    x, bias = torch.randn(rows, k, generator=g), torch.randn(n, generator=g)
    lib = cpu_linear._KERNELS.require()
    ref = cpu_linear._run(lib, x, panels, n, bias, _address(cpu_linear.DEFAULT)[1])
    torch.testing.assert_close(ref, torch.nn.functional.linear(x, cpu_linear.unpack(panels, n), bias), atol=1e-4, rtol=1e-4)
    for cand in cpu_linear.CANDIDATES:
        arr, addr = _address(cand)
        assert torch.equal(cpu_linear._run(lib, x, panels, n, bias, addr), ref), cand


@pytest.mark.skipif(not cpu_attention.available(), reason="no C compiler / CPU for the kernels")
@pytest.mark.parametrize(("query_lens", "ctx_lens", "heads"), [
    ([1], [300], (8, 2, 64)),  # decode
    ([1] * 5, [20, 47, 64, 100, 333], (8, 2, 64)),  # a decode batch
    ([17, 9], [700, 90], (4, 1, 128)),  # verification: 68 rows per KV head, several tiled items
    ([3, 1], [50, 97], (6, 3, 24)),  # a head size only the row path takes
])
def test_every_attention_candidate_gives_bitwise_the_same_output(query_lens: list[int], ctx_lens: list[int],
                                                               heads: tuple[int, int, int]) -> None:
    from tests.engine.test_cpu_attention import _case

    q, k, v, meta = _case(query_lens, ctx_lens, heads, 16, seed=len(query_lens))
    ref = cpu_attention.paged_attention(q, k, v, meta, 0.125, tune=_address(cpu_attention.DEFAULT)[1])
    for cand in cpu_attention.CANDIDATES:
        arr, addr = _address(cand)
        assert torch.equal(cpu_attention.paged_attention(q, k, v, meta, 0.125, tune=addr), ref), cand


def _space(calls: list[tuple[int, ...]]) -> autotune.Space:
    """A toy family: knob 0 picks how much useless work a call does (1 is fastest), knob 1 does nothing."""

    def workloads() -> dict[str, autotune.Workload]:
        x = torch.randn(64, 64)

        def run(address: int) -> torch.Tensor:
            params = tuple((ctypes.c_int64 * 2).from_address(address))
            calls.append(params)
            for _ in range(params[0]):
                y = x @ x
            return y
        return {"matmul": run}
    return autotune.Space(("repeats", "noop"), (6, 0), ((6, 0), (1, 0), (6, 1)), workloads)


@pytest.fixture
def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(autotune, "BUDGET_S", 0.1)
    monkeypatch.setattr(autotune, "BUSY_FACTOR", 1e9)  # a loaded CI machine still tunes the toy
    monkeypatch.delenv(autotune.ENV, raising=False)
    return str(tmp_path / "toy_0123.so")


def test_the_choice_is_cached_beside_the_library_and_read_back_without_tuning(library: str) -> None:
    calls: list[tuple[int, ...]] = []
    first = autotune.choose("toy", library, _space(calls), "Test CPU", 2)
    assert first.source == "tuned" and first.params == (1, 0)  # 6x less work wins by far more than MARGIN
    cached = json.loads(autotune.cache_path(library).read_text())["choices"]
    assert cached[autotune.entry_key("Test CPU", 2)]["params"] == [1, 0]
    calls.clear()
    again = autotune.choose("toy", library, _space(calls), "Test CPU", 2)
    assert (again.source, again.params, calls) == ("cache", (1, 0), [])  # read back: no kernel call at all
    other = autotune.choose("toy", library, _space(calls), "Other CPU", 2)
    assert other.source == "tuned" and calls  # another CPU model (or thread count) tunes for itself


def test_env_turns_tuning_off_or_forces_it(library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    monkeypatch.setenv(autotune.ENV, "0")
    off = autotune.choose("toy", library, _space(calls), "Test CPU", 2)
    assert (off.source, off.params, calls) == ("default", (6, 0), [])
    assert not autotune.cache_path(library).exists()
    monkeypatch.setenv(autotune.ENV, "1")
    assert autotune.choose("toy", library, _space(calls), "Test CPU", 2).source == "tuned"
    monkeypatch.setenv(autotune.ENV, "force")
    assert autotune.choose("toy", library, _space(calls), "Test CPU", 2).source == "tuned"  # cached, tuned again
    monkeypatch.setenv(autotune.ENV, "1")
    assert autotune.choose("toy", library, _space(calls), "Test CPU", 2, force=True).source == "tuned"


def test_a_cached_choice_outside_the_candidates_or_writable_by_others_is_ignored(library: str) -> None:
    path = autotune.cache_path(library)
    key = autotune.entry_key("Test CPU", 2)
    path.write_text(json.dumps({"choices": {key: {"params": [99, 0]}}}))
    os.chmod(path, 0o600)
    assert autotune.load(library, _space([]), key) is None
    path.write_text(json.dumps({"choices": {key: {"params": [1, 0]}}}))
    assert autotune.load(library, _space([]), key) == (1, 0)
    os.chmod(path, 0o666)
    assert autotune.load(library, _space([]), key) is None


def test_a_candidate_that_changes_the_output_is_never_chosen() -> None:
    x = torch.randn(8)

    def workloads() -> dict[str, autotune.Workload]:
        # candidate (1,) is "faster" (no work) but rounds differently: it must be dropped
        return {"sum": lambda address: x * 1.0 if (ctypes.c_int64 * 1).from_address(address)[0] == 0 else x + 1e-3}
    space = autotune.Space(("variant",), (0,), ((0,), (1,)), workloads)
    assert autotune.identical(space, workloads(), space.candidates) == [(0,)]
    assert autotune.tune("toy", space, 1, budget_s=0.05).params == (0,)


@pytest.mark.skipif(not cpu_linear.available(), reason="no C compiler / CPU for the kernels")
def test_kernels_retune_installs_the_new_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(autotune, "BUDGET_S", 0.05)
    monkeypatch.setattr(autotune, "BUSY_FACTOR", 1e9)
    monkeypatch.setattr(autotune, "cache_path", lambda library: tmp_path / "linear.tune.json")  # not the user's cache
    monkeypatch.delenv(autotune.ENV, raising=False)
    kernels = cpu_linear._KERNELS
    before = kernels.choice
    try:
        choice = kernels.retune()
        assert choice is not None and choice.source == "tuned" and choice.params in cpu_linear.CANDIDATES
        installed = tuple((ctypes.c_int64 * len(cpu_linear.KNOBS)).from_address(kernels.tune))
        assert installed == choice.params
        assert (tmp_path / "linear.tune.json").exists()
    finally:
        if before is not None:
            kernels.apply(before)
    assert cpu_linear._KERNELS in native.TUNABLE and cpu_attention._KERNELS in native.TUNABLE


def test_a_machine_too_busy_to_tune_keeps_the_defaults_and_caches_nothing(library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autotune, "BUSY_FACTOR", 0.0)  # any screening round "overruns"
    choice = autotune.choose("toy", library, _space([]), "Test CPU", 2)
    assert (choice.source, choice.params) == ("default", (6, 0))
    assert not autotune.cache_path(library).exists()
