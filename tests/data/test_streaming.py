"""`data.streaming: true`: lazy JSONL, bounded shuffle buffer, same batches as the list path, exact resume."""

from __future__ import annotations

import json
import os
import signal
from functools import partial

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import ConfigError, LoraCfg, TrainCfg, build_config
from tunelab.config.schema import DataCfg
from tunelab.data import streaming
from tunelab.data.io import DataError, Record
from tunelab.data.pipeline import collate, epoch_order, prepare_data
from tunelab.data.streaming import (
    TrainStream,
    check_streaming,
    iter_jsonl,
    prepare_stream,
    shuffle_buffer,
)
from tunelab.data.templates import resolve_template
from tunelab.engine.loop import TrainingInterrupted, fit
from tunelab.engine.recipe import Recipe, Setup
from tunelab.methods import get_method
from tunelab.models import load_model
from tunelab.training.lm_loss import sft_loss


def write_jsonl(path, n, start=0):
    rows = [{"instruction": f"question {i} " + "about things " * (i % 4),
             "output": f"answer {i} " + "with detail " * (1 + i % 3)} for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_cfg(path, **kw) -> DataCfg:
    return DataCfg(train=str(path), val_size=0.0, max_length=96, cache=False, streaming=True, **kw)


@pytest.fixture(scope="module")
def template(tiny_tokenizer):
    return resolve_template(tiny_tokenizer, None)


def lora_model(seed=0):
    torch.manual_seed(seed)
    return get_method("lora").apply(load_model("tiny-llama"), LoraCfg(r=4, alpha=8))


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run_fit(model, run_dir, samples=(), stream=None, loss_fn=sft_loss, **train):
    cfg = TrainCfg(**{"max_steps": 10, "batch_size": 2, "grad_accum": 2, "lr": 5e-3, "warmup_ratio": 0.1,
                      "seed": 7, **train})
    return fit(Setup(model, get_method("lora"), run_dir, torch.device("cpu"), []),
               Recipe(train=cfg, samples=list(samples), val=[], collate=partial(collate, pad_id=2), loss=loss_fn,
                      order=epoch_order, stream=stream), progress=False)


# --- the shuffle buffer -----------------------------------------------------------------------------------


def test_buffer_larger_than_input_gives_the_list_paths_epoch_order():
    for epoch in range(3):
        assert list(shuffle_buffer(range(10), 100, seed=7, epoch=epoch)) == epoch_order(10, 7, epoch)


def test_small_buffer_is_a_seeded_permutation_holding_at_most_size_items():
    peak: dict = {}
    out = list(shuffle_buffer(range(1000), 16, seed=3, epoch=0, peak=peak))
    assert sorted(out) == list(range(1000)) and out != list(range(1000))
    assert peak["buffer"] == 16
    assert out == list(shuffle_buffer(range(1000), 16, seed=3, epoch=0))
    assert out != list(shuffle_buffer(range(1000), 16, seed=3, epoch=1))
    assert out != list(shuffle_buffer(range(1000), 16, seed=4, epoch=0))


def test_stream_never_holds_more_records_than_the_buffer(tmp_path, tiny_tokenizer, template, monkeypatch):
    """Count live Record objects while streaming 3,000 records through a 32-record buffer."""
    live = {"n": 0}
    made = {"n": 0}

    class CountedRecord(Record):
        def __init__(self, *args):
            super().__init__(*args)
            live["n"] += 1
            made["n"] += 1

        def __del__(self):
            live["n"] -= 1

    monkeypatch.setattr(streaming, "Record", CountedRecord)
    path = write_jsonl(tmp_path / "big.jsonl", 3000)
    cfg = data_cfg(path, shuffle_buffer=32)
    stream = TrainStream(cfg, tiny_tokenizer, template, "alpaca", seed=1, stats={})
    most, seen = 0, 0
    for _, batch in stream(4, {}):
        most = max(most, live["n"])
        seen += len(batch)
        if seen >= 3000:  # one whole epoch
            break
    assert made["n"] == 3000 and seen == 3000
    assert stream.peak["buffer"] == 32
    assert most <= 32 + 1  # the buffer, plus the record being read


# --- reading --------------------------------------------------------------------------------------------


def test_json_array_and_other_files_say_how_to_convert(tmp_path):
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    with pytest.raises(DataError, match=r"d\.json: a JSON array cannot be streamed; .*tunelab data convert .*d\.json"):
        list(iter_jsonl(arr))
    (tmp_path / "d.csv").write_text("instruction,output\nq,a\n")
    with pytest.raises(DataError, match=r"d\.csv: data.streaming reads JSONL files only; .*tunelab data convert"):
        list(iter_jsonl(tmp_path / "d.csv"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        list(iter_jsonl(bad))


def test_val_records_are_the_first_records_and_not_trained_on(tmp_path, tiny_tokenizer, template):
    path = write_jsonl(tmp_path / "d.jsonl", 8)
    data = prepare_stream(data_cfg(path, val_records=3), tiny_tokenizer, template, seed=0)
    assert data.format == "alpaca" and len(data.val) == 3
    rendered = tiny_tokenizer.decode(data.val[0].input_ids)
    assert "question 0" in rendered
    wheres = sorted(int(r.where.rsplit(":", 1)[1]) for r in data.stream.raw(0))
    assert wheres == [4, 5, 6, 7, 8]  # lines 1-3 are validation


# --- config ---------------------------------------------------------------------------------------------


def run_cfg(path, **train):
    return build_config({"model": {"name": "tiny-llama"}, "data": {"train": str(path), "streaming": True},
                         "train": {"report": False, **train}})


def test_max_steps_is_required(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", 4)
    with pytest.raises(ConfigError, match=r"train.max_steps: required with data.streaming"):
        check_streaming(run_cfg(path))
    check_streaming(run_cfg(path, max_steps=3))  # fine


def test_cli_refuses_streaming_without_max_steps(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", 4)
    cfg = {"model": {"name": "tiny-llama"}, "data": {"train": str(path), "streaming": True},
           "method": {"name": "full"}, "train": {"batch_size": 2, "report": False}, "output_dir": str(tmp_path / "r")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "--quiet"])
    assert res.exit_code != 0
    assert "train.max_steps: required with data.streaming" in " ".join(res.output.split())


# --- training -------------------------------------------------------------------------------------------


def test_buffer_covering_the_file_trains_exactly_like_the_list_path(tmp_path, tiny_tokenizer, template):
    path = write_jsonl(tmp_path / "d.jsonl", 7)  # 4 micro-batches an epoch, the last one partial
    listed = prepare_data(data_cfg(path).model_copy(update={"streaming": False}), tiny_tokenizer, template, seed=7)
    a = lora_model()
    res_a = run_fit(a, tmp_path / "a", samples=listed.train)  # 10 steps = 20 micro-batches = 5 epochs
    streamed = prepare_stream(data_cfg(path, shuffle_buffer=100), tiny_tokenizer, template, seed=7)
    b = lora_model()
    res_b = run_fit(b, tmp_path / "b", stream=streamed.stream)
    assert res_b.step == 10 and res_b.summary["epochs"] == 5
    assert res_b.summary["tokens"] == res_a.summary["tokens"]
    assert res_b.summary["train_loss"] == pytest.approx(res_a.summary["train_loss"], rel=1e-6)
    sa, sb = lora_state(a), lora_state(b)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=1e-7)


def test_interrupt_then_resume_equals_uninterrupted(tmp_path, tiny_tokenizer, template):
    path = write_jsonl(tmp_path / "d.jsonl", 11)  # buffer 3 < 11 records: random picks while reading

    def fresh_stream():
        return prepare_stream(data_cfg(path, shuffle_buffer=3), tiny_tokenizer, template, seed=7).stream

    straight = lora_model()
    res = run_fit(straight, tmp_path / "a", stream=fresh_stream())
    calls = {"n": 0}

    def interrupting_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 10:  # during step 5, in the middle of the second epoch
            os.kill(os.getpid(), signal.SIGINT)
        return sft_loss(model, batch)

    with pytest.raises(TrainingInterrupted) as e:
        run_fit(lora_model(), tmp_path / "b", stream=fresh_stream(), loss_fn=interrupting_loss)
    saved = json.loads((e.value.checkpoint / "trainer_state.json").read_text())
    assert saved["step"] == 5 and saved["stream"] == {"epoch": 1, "records": 8}  # 6 micro-batches an epoch
    resumed = lora_model(seed=123)  # different init: everything must come from the checkpoint
    res2 = run_fit(resumed, tmp_path / "b", stream=fresh_stream(), resume="auto")
    assert res2.step == 10
    a, b = lora_state(straight), lora_state(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    assert res2.summary["train_loss"] == pytest.approx(res.summary["train_loss"], rel=1e-5)


def test_streaming_run_through_the_cli(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", 9)
    cfg = {"model": {"name": "tiny-llama"},
           "data": {"train": str(path), "streaming": True, "shuffle_buffer": 4, "val_records": 2, "max_length": 96},
           "method": {"name": "full"}, "train": {"max_steps": 4, "batch_size": 2, "report": False},
           "output_dir": str(tmp_path / "run")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["epochs"] == 1  # 7 training records: 4 micro-batches an epoch
    assert summary["data"]["streaming"] is True and summary["data"]["val_samples"] == 2
    assert summary["eval_loss"] is not None
