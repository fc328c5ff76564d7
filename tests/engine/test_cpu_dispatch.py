"""The CPU kernels' build is keyed by the CPU it was made for, and runs only on CPUs it is for:
x86-64 with AVX2 and FMA; elsewhere the engine keeps torch's ops (flags mocked here)."""

from __future__ import annotations

import logging

import pytest

from engine.kernels.cpu import cpuinfo, native
from engine.kernels.cpu import linear as cpu_linear

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu sse sse2 avx fma avx2 bmi2 avx512f avx512bw

processor\t: 1
model name\t: should not be read
flags\t\t: fpu
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp
CPU implementer\t: 0x41
"""


def features(arch: str = "x86_64", flags: str = "sse2 avx fma avx2") -> cpuinfo.CpuFeatures:
    return cpuinfo.CpuFeatures(arch, frozenset(flags.split()), "test cpu")


def test_cpuinfo_parses_the_first_processor_of_x86_and_arm() -> None:
    x86 = cpuinfo.parse_cpuinfo(X86_CPUINFO, "x86_64")
    assert x86.model == "AMD EPYC 7763 64-Core Processor"
    assert {"avx2", "avx512f", "fma"} <= x86.flags and x86.is_x86
    arm = cpuinfo.parse_cpuinfo(ARM_CPUINFO, "aarch64")
    assert "asimd" in arm.flags and not arm.is_x86 and arm.model == "aarch64"
    assert cpuinfo.parse_cpuinfo("", "arm64").flags == frozenset()


@pytest.mark.parametrize(("cpu", "expected"), [
    (features(), True),
    (features(flags="sse2 avx fma avx2 avx512f"), True),
    (features(flags="sse2 avx"), False),  # x86 without AVX2: torch
    (features(flags="sse2 avx avx2"), False),  # no FMA
    (features("aarch64", "fp asimd"), False),  # ARM: torch
    (features("arm64", ""), False),  # macOS on Apple silicon (no /proc/cpuinfo)
    (features("x86_64", ""), False),  # flags unreadable: play safe
])
def test_c_kernels_run_only_on_x86_with_avx2_and_fma(cpu: cpuinfo.CpuFeatures, expected: bool) -> None:
    supported, why = cpuinfo.c_kernels_supported(cpu)
    assert supported is expected
    assert bool(why) is not expected


def test_cache_key_changes_with_the_cpu_flags_and_architecture() -> None:
    base = native.cache_key("linear", "/usr/bin/cc", features())
    assert native.cache_key("linear", "/usr/bin/cc", features()) == base
    assert native.cache_key("linear", "/usr/bin/cc", features(flags="avx2 fma avx sse2")) == base  # flag order is irrelevant
    assert native.cache_key("linear", "/usr/bin/cc", features(flags="sse2 avx fma avx2 avx512f")) != base
    assert native.cache_key("linear", "/usr/bin/cc", features("i686")) != base
    assert native.cache_key("ops", "/usr/bin/cc", features()) != base
    assert native.cache_key("linear", "/usr/bin/gcc-12", features()) != base


def test_build_on_an_unsupported_cpu_returns_none_without_compiling(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(cpuinfo, "detect", lambda: features("aarch64", "fp asimd"))
    monkeypatch.setenv("AGENTRT_CACHE_DIR", str(tmp_path))
    with caplog.at_level(logging.INFO, logger=native.__name__):
        assert native.build.__wrapped__("linear", ()) is None  # the uncached build: a fresh decision
    assert list(tmp_path.iterdir()) == []  # nothing compiled or cached
    assert "aarch64 is not x86-64" in caplog.text


def test_build_on_a_supported_cpu_is_keyed_by_this_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    here, compiler = cpuinfo.detect(), native.find_compiler()
    if not cpuinfo.c_kernels_supported(here)[0] or compiler is None:
        pytest.skip("this machine does not run the C kernels")
    monkeypatch.setenv("AGENTRT_CACHE_DIR", str(tmp_path))
    assert native.build.__wrapped__("ops", ()) is not None
    assert [p.name for p in tmp_path.iterdir()] == [f"ops_{native.cache_key('ops', compiler, here)}.so"]
    other = cpuinfo.CpuFeatures(here.arch, here.flags | {"made_up_flag"}, here.model)
    assert native.cache_key("ops", compiler, other) != native.cache_key("ops", compiler, here)


@pytest.fixture
def arm_cpu(monkeypatch: pytest.MonkeyPatch):
    """This process sees an ARM CPU: every kernel module's build is decided afresh (and again after)."""
    monkeypatch.setattr(cpuinfo, "detect", lambda: features("aarch64", "fp asimd"))
    native.build.cache_clear()
    yield
    monkeypatch.undo()
    native.build.cache_clear()


@pytest.mark.usefixtures("arm_cpu")
def test_on_arm_layers_keep_torch_linears() -> None:
    from torch import nn

    from engine.model.layers import prepare_for_inference

    assert not cpu_linear.available()
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    prepare_for_inference(model)
    assert all(type(m) is nn.Linear for m in model)  # no PackedLinear: torch's BLAS, not scalar C


@pytest.mark.usefixtures("arm_cpu")
def test_calling_a_kernel_where_it_is_off_raises_a_typed_error() -> None:
    import torch

    from engine.errors import KernelUnavailableError
    from engine.kernels.cpu import ops as cpu_ops

    with pytest.raises(KernelUnavailableError, match="linear CPU kernels"):
        cpu_linear.packed_linear(torch.randn(2, 8), torch.zeros(1, 8, 16), 16)
    with pytest.raises(KernelUnavailableError, match="ops CPU kernels"):
        cpu_ops.rms_norm(torch.randn(2, 8), torch.ones(8), 1e-6)
