"""The native kernel cache never loads a library someone else could have planted (issue 18 item 9)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from engine import native

SOURCE = "long long add_one(long long x) { return x + 1; }\n"


def _planted(folder: Path, name: str, source: str) -> Path:
    compiler = shutil.which("cc") or ""
    key = hashlib.sha256((source + " ".join(native.FLAGS) + compiler).encode()).hexdigest()[:16]  # the name build() looks for
    path = folder / f"{name}_{key}.so"
    path.write_bytes(b"not a library: loading this would fail")
    return path


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
@pytest.mark.parametrize("where", ["folder", "file"])
def test_a_library_in_a_writable_cache_is_rebuilt_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    monkeypatch.setenv("AGENTRT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    name = f"trust_probe_{where}"
    planted = _planted(tmp_path, name, SOURCE)
    os.chmod(tmp_path if where == "folder" else planted, 0o777)
    lib = native.build(name, SOURCE, (("add_one", (ctypes.c_longlong,), ctypes.c_longlong),))
    assert lib is not None and lib.add_one(41) == 42  # built privately: the planted file was ignored
    assert planted.read_bytes().startswith(b"not a library")
