"""The native kernel cache never loads a library someone else could have planted (issue 18 item 9)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from engine.kernels.cpu import native, ops


def _built(cache: Path) -> Path:
    native.build.cache_clear()
    assert native.build("ops", ops._SIGNATURES) is not None
    (library,) = cache.glob("ops_*.so")
    return library


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler")
@pytest.mark.parametrize("where", ["folder", "file"])
def test_a_library_in_a_writable_cache_is_rebuilt_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    monkeypatch.setenv("AGENTRT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    planted = _built(tmp_path)
    planted.write_bytes(b"not a library: loading this would fail")  # someone replaced the cached build
    os.chmod(tmp_path if where == "folder" else planted, 0o777)
    try:
        native.build.cache_clear()
        lib = native.build("ops", ops._SIGNATURES)
        assert lib is not None  # built privately: the planted file was ignored
        assert planted.read_bytes().startswith(b"not a library")
    finally:
        native.build.cache_clear()
