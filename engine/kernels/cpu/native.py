"""Small C kernels for the CPU path, built with the system C compiler on first use.

The kernels are the .c/.h files beside this module (one .c per kernel family, shared headers for
the SIMD helpers and the panel tiles). A binding module hands the name of its .c file and its
ctypes signatures to `build`; the shared library is compiled once into ~/.cache/agentrt/ (or
$AGENTRT_CACHE_DIR), keyed by the sources, the flags, the compiler and the CPU (architecture and
instruction-set flags, `cpuinfo`: a -march=native build is used only where it was built for), and
loaded through ctypes (calls release the GIL). No torch headers are needed, so a
build takes about a second. Without a working compiler `build` returns None and callers keep their
torch path, which is also every kernel's test oracle; so does a CPU the kernels are not for (not
x86-64 with AVX2 and FMA: torch's ops are faster there than the kernels' scalar loops).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from engine.errors import KernelUnavailableError
from engine.kernels.cpu import autotune, cpuinfo

logger = logging.getLogger(__name__)

# Vectorise dot products (reassociation) without -ffast-math's no-NaN assumption: NaN inputs must
# still poison their outputs.
FLAGS = ("-O3", "-march=native", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC")
LIBS = ("-lm",)
SOURCE_DIR = Path(__file__).resolve().parent

I64 = ctypes.c_int64
F32 = ctypes.c_float
PTR = ctypes.c_void_p


def cache_dir() -> Path:
    return Path(os.environ.get("AGENTRT_CACHE_DIR") or Path.home() / ".cache" / "agentrt")


def _sources_digest() -> str:
    """Every .c/.h of the kernel directory (a header change rebuilds every family that may include it)."""
    h = hashlib.sha256()
    for path in sorted(SOURCE_DIR.glob("*.[ch]")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def find_compiler() -> str | None:
    """$CC, else cc, else gcc (a full path), or None."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def cache_key(name: str, compiler: str, features: cpuinfo.CpuFeatures) -> str:
    """The build's identity: kernel family, every kernel source, flags, compiler path and the CPU's
    architecture + instruction-set flags (a build made elsewhere is never loaded here)."""
    parts = (name, _sources_digest(), " ".join(FLAGS), compiler, features.fingerprint())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _trusted(path: Path) -> bool:
    """Only this user can have written it: ours, not a symlink, not group- or world-writable."""
    st = os.lstat(path)
    return not stat.S_ISLNK(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _trusted_target(filename: str) -> Path:
    """Where to keep (and load) a built library. A library found in the cache is loaded only if the
    folder and the file are trusted; otherwise it is rebuilt in a private per-process folder, since a
    name derived from the sources is easy to plant for anyone who can write the cache."""
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = folder / filename
    if _trusted(folder) and (not os.path.lexists(target) or _trusted(target)):
        return target
    logger.warning("kernel cache %s (or %s in it) is not private to this user: building in a private folder",
                   folder, filename)
    return Path(tempfile.mkdtemp(prefix="agentrt-kernels-")) / filename


@functools.cache
def build(name: str, signatures: tuple[tuple[Any, ...], ...]) -> ctypes.CDLL | None:
    """Compile `<name>.c` (once per content of the kernel sources) and load it, declaring each
    (function, argtypes[, restype]) of `signatures` (no restype: void). Returns None (callers
    keep torch) on a CPU the kernels are not for, and, with a warning, when no compiler works."""
    features = cpuinfo.detect()
    supported, why = cpuinfo.c_kernels_supported(features)
    if not supported:
        logger.info("the %s CPU kernels are off on this CPU (%s): torch path instead", name, why)
        return None
    compiler = find_compiler()
    if compiler is None:
        logger.warning("no C compiler found: the %s CPU kernels are off (torch path instead)", name)
        return None
    key = cache_key(name, compiler, features)
    try:
        target = _trusted_target(f"{name}_{key}.so")
        if not target.exists():
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                out = Path(tmp) / f"{name}.so"
                cmd = [compiler, *FLAGS, f"-I{SOURCE_DIR}", str(SOURCE_DIR / f"{name}.c"), "-o", str(out), *LIBS]
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
                os.replace(out, target)  # atomic: concurrent builders race harmlessly
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = exc.stderr.decode(errors="replace")[-500:] if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else str(exc)
        logger.warning("could not build the %s CPU kernels (%s): torch path instead", name, detail)
        return None
    for fn_name, argtypes, *restype in signatures:
        fn = getattr(lib, fn_name)
        fn.argtypes = list(argtypes)
        fn.restype = restype[0] if restype else None
    return lib


TUNABLE: list[Kernels] = []  # the families with an autotune space, for `retune_all`


class Kernels:
    """One kernel family as its binding uses it: `get()` the library (built on first use) or None,
    `available()`, and `require()` the library or raise KernelUnavailableError.

    With an autotune `space` (see autotune.py), the first `get()` that finds a library also settles
    the family's work split on this CPU (cached beside the library, tuned when not), and `tune` is
    the address of the settings in force: the bindings pass it to every call."""

    def __init__(self, name: str, signatures: tuple[tuple[Any, ...], ...], space: autotune.Space | None = None) -> None:
        self.name, self.signatures, self.space = name, signatures, space
        self.choice: autotune.Choice | None = None
        self._params = (ctypes.c_int64 * len(space.default))(*space.default) if space else None
        self.tune = ctypes.addressof(self._params) if self._params is not None else 0  # 0: the kernel's defaults
        self._pending = space is not None
        if space is not None:
            TUNABLE.append(self)

    def get(self) -> ctypes.CDLL | None:
        lib = build(self.name, self.signatures)
        if self._pending and lib is not None:
            self._pending = False  # first: the tuning's own kernel calls come back through here
            self._settle(lib, force=False)
        return lib

    def retune(self) -> autotune.Choice | None:
        """Tune again now (whatever the cache or AGENTRT_AUTOTUNE=on say) and cache the result;
        None when the family has no space or no library here."""
        lib = build(self.name, self.signatures)
        if lib is None or self.space is None:
            return None
        self._pending = False
        self._settle(lib, force=True)
        return self.choice

    def _settle(self, lib: ctypes.CDLL, force: bool) -> None:
        assert self.space is not None and self._params is not None
        try:
            choice = autotune.choose(self.name, lib._name, self.space, cpuinfo.detect().name, torch.get_num_threads(), force)
        except (OSError, RuntimeError, ValueError) as exc:
            logger.warning("autotune of the %s CPU kernels failed (%s): their default work split stays", self.name, exc)
            choice = autotune.Choice(self.space.default, "default")
        self.apply(choice)

    def apply(self, choice: autotune.Choice) -> None:
        """Put `choice` in force (the bindings read the settings through `tune` on every call)."""
        assert self._params is not None
        self.choice = choice
        self._params[:] = list(choice.params)

    def available(self) -> bool:
        return self.get() is not None

    def require(self) -> ctypes.CDLL:
        lib = self.get()
        if lib is None:
            raise KernelUnavailableError(f"the {self.name} CPU kernels are not available here (no C compiler, "
                                         "or not an x86-64 CPU with AVX2 and FMA); check available() first")
        return lib


def retune_all() -> dict[str, autotune.Choice]:
    """Tune every tunable family that has a library here again (see Kernels.retune)."""
    return {k.name: choice for k in TUNABLE if (choice := k.retune()) is not None}
