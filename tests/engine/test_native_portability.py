"""Every CPU kernel source also compiles for x86 machines without AVX-512 (and without AVX2): the
wider paths sit behind #ifdef, and CI machines may lack them."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from engine import native
from engine.model import cpu_attention, cpu_linear, cpu_ops
from engine.moe import cpu_dense, cpu_fp4, cpu_fp4_panels

SOURCES = {
    "attention": cpu_attention._SOURCE, "linear": cpu_linear.SOURCE, "ops": cpu_ops._SOURCE,
    "dense_moe": cpu_dense._SOURCE, "fp4": cpu_fp4._SOURCE, "fp4_panels": cpu_fp4_panels._SOURCE,
}

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("cc") is None,
                                reason="x86 target flags need an x86 C compiler")


@pytest.mark.parametrize("target", [("-mno-avx512f",), ("-mno-avx512f", "-mno-avx2", "-mno-fma")])
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_kernel_source_compiles_for_narrower_x86(name: str, target: tuple[str, ...], tmp_path: Path) -> None:
    src = tmp_path / f"{name}.c"
    src.write_text(SOURCES[name])
    out = subprocess.run(["cc", *native.FLAGS, *target, str(src), "-o", str(tmp_path / f"{name}.so"), *native.LIBS],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
