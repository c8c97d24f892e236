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


def _mount_tmpfs(folder: Path, kib: int) -> Path:
    """Mount a tmpfs of `kib` KiB at `folder`, or skip where this process may not (not root, a locked container)."""
    folder.mkdir()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)], capture_output=True)
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    return folder


@pytest.fixture()
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs."""
    mnt = _mount_tmpfs(tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}", 256)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: a file the failed run left open must not keep it mounted


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


def test_cli_train_on_a_full_disk_is_one_line_and_keeps_earlier_checkpoints(tmp_path, shared_data, full_disk_at_save):
    """The 4th torch.save (the 2nd checkpoint's optimizer state) finds the disk full after writing a little."""
    import yaml
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.engine.checkpoint import verify_checkpoint

    cfg = {"model": {"name": "tiny-llama"},
           "data": {"train": str(shared_data / "llamafactory_demo/alpaca_en_demo.json"), "max_samples": 16,
                    "max_length": 64, "val_size": 0},
           "method": {"name": "lora", "r": 2, "alpha": 4},
           "train": {"max_steps": 6, "batch_size": 4, "save_every": 2, "report": False},
           "output_dir": str(tmp_path / "r")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    full_disk_at_save(4)
    res = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "--quiet"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    step4 = tmp_path / "r" / "checkpoints" / "step-000004"
    assert lines == [f"error: no space left on device at {step4}"]
    assert "Traceback" not in res.output
    ckpts = sorted((tmp_path / "r" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-000002"] and verify_checkpoint(ckpts[0]) is None  # no .tmp left


def test_cli_train_into_a_really_full_filesystem(tmp_path, shared_data, tiny_tokenizer):
    """A tmpfs with room for the run folder and about two checkpoints: the third one fails cleanly."""
    import yaml
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.engine.checkpoint import verify_checkpoint

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    tokenizer_kib = sum(p.stat().st_size for p in (tmp_path / "tok").iterdir()) // 1024
    mnt = _mount_tmpfs(tmp_path / "fs", tokenizer_kib + 300)  # a checkpoint of this run is ~100 KiB
    try:
        cfg = {"model": {"name": "tiny-llama"},
               "data": {"train": str(shared_data / "llamafactory_demo/alpaca_en_demo.json"), "max_samples": 16,
                        "max_length": 64, "val_size": 0},
               "method": {"name": "lora", "r": 2, "alpha": 4},
               "train": {"max_steps": 30, "batch_size": 4, "save_every": 1, "save_total_limit": 100,
                         "report": False},
               "output_dir": str(mnt / "r")}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        res = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "--quiet"])
        assert res.exit_code == 2, res.output
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: no space left on device at {mnt / 'r'}"), lines
        ckpts = sorted((mnt / "r" / "checkpoints").iterdir())
        assert ckpts and all(p.name.startswith("step-") and verify_checkpoint(p) is None for p in ckpts)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: a file the failed run left open must not keep it mounted


def test_cli_train_when_the_metrics_log_finds_the_disk_full(tmp_path, shared_data, monkeypatch):
    """Not only atomic writes: a full disk under the metrics tracker's append is the same one line, exit 2."""
    import yaml
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.tracking.jsonl import JsonlTracker

    cfg = {"model": {"name": "tiny-llama"},
           "data": {"train": str(shared_data / "llamafactory_demo/alpaca_en_demo.json"), "max_samples": 8,
                    "max_length": 64, "val_size": 0},
           "method": {"name": "lora", "r": 2, "alpha": 4},
           "train": {"max_steps": 3, "batch_size": 4, "report": False},
           "output_dir": str(tmp_path / "r")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    real_log = JsonlTracker.log

    def full_on_step_2(self, metrics, step):
        if step == 2:
            self._f = _Full(self._f)
        return real_log(self, metrics, step)

    monkeypatch.setattr(JsonlTracker, "log", full_on_step_2)
    res = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == [f"error: no space left on device at {tmp_path / 'r' / 'metrics.jsonl'}"]
