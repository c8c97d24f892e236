"""CPU threads: affinity, cgroup quota files, TUNELAB_THREADS / OMP_NUM_THREADS / train.threads, the run header."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from tunelab.config import ConfigError, load_config
from tunelab.utils import threads as th


@pytest.fixture()
def four_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


def _cgroup(tmp_path, own: str = "/", files: dict[str, str] | None = None):
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="ascii")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"0::{own}\n", encoding="ascii")
    return root, proc


def test_affinity_is_the_default_without_a_quota(tmp_path, four_cores):
    root, proc = _cgroup(tmp_path, files={"cpu.max": "max 100000\n"})
    assert th.cgroup_cpu_limit(root, proc) is None
    assert th.available_cpus(root, proc) == 4
    root2, proc2 = _cgroup(tmp_path / "none")  # no cgroup files at all
    assert th.available_cpus(root2, proc2) == 4


@pytest.mark.parametrize(("files", "own", "limit", "cpus"), [
    ({"cpu.max": "150000 100000\n"}, "/", 1.5, 2),  # v2 at the root: 1.5 CPUs rounds up to 2
    ({"cpu.max": "max 100000", "a/cpu.max": "100000 100000", "a/b/cpu.max": "max 100000"}, "/a/b", 1.0, 1),
    ({"cpu.max": "800000 100000"}, "/", 8.0, 4),  # a quota above the affinity: the affinity counts
    ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, "/", 3.0, 3),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, "/", None, 4),  # v1, no limit
    ({"cpu.max": "garbage"}, "/", None, 4),  # unreadable: ignored
])
def test_cgroup_quota_files(tmp_path, four_cores, files, own, limit, cpus):
    root, proc = _cgroup(tmp_path, own, files)
    assert th.cgroup_cpu_limit(root, proc) == limit
    assert th.available_cpus(root, proc) == cpus


def test_precedence_config_then_env_then_omp_then_cores(tmp_path, four_cores):
    root, proc = _cgroup(tmp_path, files={"cpu.max": "200000 100000"})
    kw = {"root": root, "proc_cgroup": proc}
    assert th.resolve_threads(None, {}, **kw) == (2, "available cores")
    assert th.resolve_threads(None, {"OMP_NUM_THREADS": "3"}, **kw) == (3, "OMP_NUM_THREADS")
    assert th.resolve_threads(None, {"OMP_NUM_THREADS": "3", "TUNELAB_THREADS": " 6 "}, **kw) == (6, "TUNELAB_THREADS")
    assert th.resolve_threads(5, {"TUNELAB_THREADS": "6"}, **kw) == (5, "train.threads")
    assert th.resolve_threads(None, {"OMP_NUM_THREADS": "lots"}, **kw) == (2, "available cores")
    with pytest.raises(ValueError, match=r"TUNELAB_THREADS='0': must be a whole number of threads >= 1"):
        th.resolve_threads(None, {"TUNELAB_THREADS": "0"}, **kw)


def test_config_field(tmp_path):
    assert load_config(None, ["data.train=x.json", "train.threads=3"]).train.threads == 3
    assert load_config(None, ["data.train=x.json"]).train.threads is None
    with pytest.raises(ConfigError, match="train.threads"):
        load_config(None, ["data.train=x.json", "train.threads=0"])


@pytest.fixture()
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_run_header_and_run_json_show_the_threads(tmp_path, addition_file, monkeypatch, restore_threads):
    from tunelab.cli import app

    monkeypatch.setenv("TUNELAB_THREADS", "2")
    out = tmp_path / "run"
    cfg = {"model": {"name": "tiny-llama"}, "data": {"train": str(addition_file), "val_size": 0.0, "max_length": 64},
           "method": {"name": "lora", "r": 2}, "train": {"max_steps": 1, "batch_size": 4, "report": False},
           "output_dir": str(out)}
    (tmp_path / "c.yaml").write_text(json.dumps(cfg), encoding="utf-8")
    res = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps the header at the terminal width
    assert "parameters (0.13%) on cpu in float32, 2 CPU threads" in text, res.output
    assert torch.get_num_threads() == 2
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["threads"] == 2
    # train.threads in the config wins over the environment
    res = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), f"output_dir={tmp_path / 'run2'}",
                                   "train.threads=1"])
    assert res.exit_code == 0, res.output
    assert "on cpu in float32, 1 CPU thread data:" in " ".join(res.output.split()) and torch.get_num_threads() == 1
    monkeypatch.setenv("TUNELAB_THREADS", "many")
    res = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), f"output_dir={tmp_path / 'run3'}"])
    assert res.exit_code != 0 and "TUNELAB_THREADS='many': must be a whole number" in " ".join(res.output.split())
