"""Every CPU kernel source also compiles for x86 machines without AVX-512 (and without AVX2): the
wider paths sit behind #ifdef, and CI machines may lack them."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.kernels.cpu import native

FAMILIES = sorted(p.stem for p in native.SOURCE_DIR.glob("*.c"))

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("cc") is None,
                                reason="x86 target flags need an x86 C compiler")


def test_every_kernel_family_is_a_c_file() -> None:
    assert FAMILIES == ["attention", "decoder", "fp4_matmul", "fp4_panels", "linear", "moe_dense", "ops"]


@pytest.mark.parametrize("target", [("-mno-avx512f",), ("-mno-avx512f", "-mno-avx2", "-mno-fma")])
@pytest.mark.parametrize("name", FAMILIES)
def test_kernel_source_compiles_for_narrower_x86(name: str, target: tuple[str, ...], tmp_path: Path) -> None:
    src = native.SOURCE_DIR / f"{name}.c"
    out = subprocess.run(["cc", *native.FLAGS, *target, f"-I{native.SOURCE_DIR}", str(src), "-o", str(tmp_path / f"{name}.so"), *native.LIBS],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
