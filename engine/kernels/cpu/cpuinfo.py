"""What this CPU can run: its architecture, instruction-set flags and model name (pure Python).

The C kernels are built with -march=native, so a build is only valid on a CPU with the same
instruction sets: `CpuFeatures.fingerprint` goes into the build's cache key, and a cache shared
between machines (a home directory, a container image) never hands one CPU another's build.
They run only where they beat torch: x86-64 with AVX2 and FMA (`c_kernels_supported`). Elsewhere
(ARM, x86 without AVX2, or a CPU whose flags cannot be read) the engine keeps torch's own ops,
whose BLAS is vectorised for that CPU, rather than the kernels' scalar `#else` loops.

Flags come from /proc/cpuinfo (Linux: the `flags` line on x86, `Features` on ARM), in the manner of
llama.cpp's ggml-cpu feature checks but at build time rather than per call.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

X86_MACHINES = frozenset({"x86_64", "amd64", "x64"})
REQUIRED_X86_FLAGS = ("avx2", "fma")  # the kernels' vector paths; without them only scalar loops remain
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True, slots=True)
class CpuFeatures:
    arch: str  # platform.machine(), lower case (x86_64, aarch64, arm64, ...)
    flags: frozenset[str]  # instruction-set flags as the kernel names them (avx2, avx512f, asimd, ...)
    model: str  # "AMD EPYC 7763 64-Core Processor", or the architecture when unknown
    # x86 family / model / stepping numbers: they name the core generation where a VM shows only a
    # generic model name ("AMD EPYC"); empty when unknown
    ident: str = ""

    @property
    def name(self) -> str:
        """The model name with its family/model numbers when known: what benchmark tables print."""
        return f"{self.model} ({self.ident})" if self.ident else self.model

    @property
    def is_x86(self) -> bool:
        return self.arch in X86_MACHINES

    def fingerprint(self) -> str:
        """Architecture and every flag, hashed: equal exactly when two CPUs can share a -march=native build."""
        text = self.arch + ":" + " ".join(sorted(self.flags))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_cpuinfo(text: str, machine: str) -> CpuFeatures:
    """CpuFeatures from the text of /proc/cpuinfo (the first processor's entries) and platform.machine()."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: Linux lists the same flags for every core
            continue
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip().lower(), value.strip())
    flags = fields.get("flags") or fields.get("features") or ""
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or machine
    numbers = [(label, fields[key]) for label, key in (("family", "cpu family"), ("model", "model"), ("stepping", "stepping"))
               if fields.get(key, "").isdigit()]
    ident = " ".join(f"{label} {value}" for label, value in numbers)
    return CpuFeatures(machine.lower(), frozenset(flags.split()), model, ident)


@functools.cache
def detect() -> CpuFeatures:
    """This machine's CpuFeatures (no flags when /proc/cpuinfo cannot be read, e.g. macOS)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine() or "unknown")


def c_kernels_supported(features: CpuFeatures) -> tuple[bool, str]:
    """Whether the C kernels should run on this CPU, and why not when they should not."""
    if not features.is_x86:
        return False, f"{features.arch} is not x86-64"
    missing = [f for f in REQUIRED_X86_FLAGS if f not in features.flags]
    if missing:
        return False, f"the CPU lacks {', '.join(missing)}"
    return True, ""
