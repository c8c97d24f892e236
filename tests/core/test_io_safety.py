"""Atomic writes honour the umask and turn a full disk into one clear error, leaving nothing half-written."""

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from tunelab.utils.io import DiskFullError, atomic_dir, atomic_write_json, atomic_write_text, save_torch


@pytest.fixture()
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_files_and_folders_get_the_umask_permissions_of_a_plain_open(tmp_path, umask, mask):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
    (tmp_path / "plain-dir").mkdir()
    assert (tmp_path / "d").stat().st_mode & 0o777 == (tmp_path / "plain-dir").stat().st_mode & 0o777 == 0o777 & ~mask


def test_full_disk_while_writing_a_file_names_it_and_leaves_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"old": True})
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _Full(real_fdopen(fd, mode)))
    with pytest.raises(DiskFullError) as e:
        atomic_write_json(target, {"new": "x" * 100})
    assert str(e.value) == f"no space left on device at {target}"
    monkeypatch.undo()
    assert target.read_text().strip().startswith('{\n  "old"')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left


class _Full:
    """A file object whose writes fail with ENOSPC."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_torch_save_on_a_full_disk_says_so_instead_of_unexpected_pos(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, mode="r", *a, **k: _Full(real_open(p, mode, *a, **k))
                        if Path(str(p)).suffix == ".pt" and "w" in mode else real_open(p, mode, *a, **k))
    with pytest.raises(DiskFullError) as e:
        save_torch({"x": torch.zeros(1000)}, tmp_path / "s.pt")
    assert str(e.value) == f"no space left on device at {tmp_path / 's.pt'}"


@pytest.fixture()
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs, where this process may mount one (root, not in a restricted container)."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_real_full_disk_torch_and_safetensors_and_text(tiny_tmpfs):
    from safetensors.torch import save_file

    big = {"w": torch.zeros(200_000)}  # 800 KB: more than the filesystem holds
    with pytest.raises(DiskFullError, match=f"no space left on device at {tiny_tmpfs / 'ck'}$"):
        with atomic_dir(tiny_tmpfs / "ck") as tmp:
            save_torch(big, tmp / "optimizer.pt")
    with pytest.raises(DiskFullError, match="at .*/ad$"):
        with atomic_dir(tiny_tmpfs / "ad") as tmp:
            save_file(big, str(tmp / "adapter_model.safetensors"))
    with pytest.raises(DiskFullError, match="at .*/t.txt$"):
        atomic_write_text(tiny_tmpfs / "t.txt", "x" * 1_000_000)
    assert list(tiny_tmpfs.iterdir()) == []  # nothing half-written left
