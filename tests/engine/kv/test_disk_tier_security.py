"""The disk KV tier is private and cannot be fed another block (issue 18 item 9)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from engine.errors import KVTierError
from engine.kv.tiers import DiskKVTier, HostKVTier


def _block(seed: int) -> torch.Tensor:
    return torch.randn(2, 4, 2, 8, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


def _empty() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(2, 4, 2, 8, dtype=torch.bfloat16), torch.empty(2, 4, 2, 8, dtype=torch.bfloat16)


def test_folder_and_files_are_private(tmp_path: Path) -> None:
    loose = tmp_path / "kv"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    disk = DiskKVTier(loose, 4)
    disk.store(b"a" * 16, _block(0), _block(1))
    assert loose.stat().st_mode & 0o777 == 0o700
    assert disk.path(b"a" * 16).stat().st_mode & 0o777 == 0o600


def test_a_folder_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    with pytest.raises(KVTierError, match="belongs to uid"):
        DiskKVTier(tmp_path / "kv", 4)


def test_a_planted_symlink_is_neither_written_through_nor_read(tmp_path: Path) -> None:
    disk = DiskKVTier(tmp_path / "kv", 4)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    key = b"k" * 16
    disk.path(key).symlink_to(victim)
    disk.store(key, _block(0), _block(1))
    assert victim.read_text() == "precious" and not disk.path(key).is_symlink()
    other = b"o" * 16
    disk.keys[other] = None
    disk.path(other).symlink_to(disk.path(key))  # a link to a valid block is still not followed
    assert disk.load(other) is None and disk.num_corrupt == 1


def test_a_well_formed_block_of_another_key_is_a_miss(tmp_path: Path) -> None:
    disk = DiskKVTier(tmp_path / "kv", 4)
    host = HostKVTier(1, disk, disk_min_hits=0)
    a, b = b"a" * 16, b"b" * 16
    disk.store(a, _block(0), _block(1))
    disk.store(b, _block(2), _block(3))
    disk.path(b).write_bytes(disk.path(a).read_bytes())  # swapped in: valid file, wrong key
    assert host.restore(b, *_empty()) is None and disk.num_corrupt == 1
    assert host.restore(a, *_empty()) == "disk"


@pytest.mark.parametrize("header", [b'{"shape": "x", "dtype": "bfloat16"}', b'{"shape": [2, 4, 2, 8], "dtype": "nope"}',
                                    b'{"shape": [1, 1], "dtype": "bfloat16"}', b"[]"])
def test_a_corrupt_header_with_a_valid_checksum_is_a_miss(tmp_path: Path, header: bytes) -> None:
    from engine.kv.tiers import _MAGIC, _digest, _write_private

    disk = DiskKVTier(tmp_path / "kv", 4)
    key = b"c" * 16
    payload = b"\x00" * 512
    disk.keys[key] = None
    _write_private(disk.path(key), _MAGIC + header + b"\n" + _digest(key, header, payload) + payload)
    host = HostKVTier(1, disk)
    assert host.restore(key, *_empty()) is None and key not in disk


def test_a_block_of_another_shape_is_a_miss(tmp_path: Path) -> None:
    disk = DiskKVTier(tmp_path / "kv", 4)
    key = b"s" * 16
    disk.store(key, torch.zeros(1, 4, 2, 8, dtype=torch.bfloat16), torch.zeros(1, 4, 2, 8, dtype=torch.bfloat16))
    assert HostKVTier(1, disk).restore(key, *_empty()) is None and key not in disk
