"""The native kernel cache never loads a library someone else could have planted (issue 18 item 9)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from engine.kernels.cpu import native

SOURCE = "long long add_one(long long x) { return x + 1; }\n"


def _planted(folder: Path, name: str) -> Path:
    compiler = shutil.which("cc") or ""
    digest = native._sources_digest()
    key = hashlib.sha256((name + digest + " ".join(native.FLAGS) + compiler).encode()).hexdigest()[:16]  # the name build() looks for
    path = folder / f"{name}_{key}.so"
    path.write_bytes(b"not a library: loading this would fail")
    return path


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
@pytest.mark.parametrize("where", ["folder", "file"])
def test_a_library_in_a_writable_cache_is_rebuilt_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    sources = tmp_path / "src"
    sources.mkdir()
    name = f"trust_probe_{where}"
    (sources / f"{name}.c").write_text(SOURCE)
    monkeypatch.setattr(native, "SOURCE_DIR", sources)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("AGENTRT_CACHE_DIR", str(cache))
    monkeypatch.delenv("CC", raising=False)
    planted = _planted(cache, name)
    os.chmod(cache if where == "folder" else planted, 0o777)
    lib = native.build(name, (("add_one", (ctypes.c_longlong,), ctypes.c_longlong),))
    assert lib is not None and lib.add_one(41) == 42  # built privately: the planted file was ignored
    assert planted.read_bytes().startswith(b"not a library")
