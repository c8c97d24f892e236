"""Multi-task runs: task names and weights in data.train, each task validated on its own, metrics per task."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tunelab
from tunelab.cli import app
from tunelab.config import ConfigError, build_config
from tunelab.config.data import DataCfg
from tunelab.data.formats import parse_records
from tunelab.data.io import read_records
from tunelab.data.pipeline import collate, prepare_data, split_train_val
from tunelab.data.templates import resolve_template, tokenize_conversation
from tunelab.engine.loop import evaluate_loss, evaluate_sets
from tunelab.models import load_model
from tunelab.run import Run
from tunelab.training.lm_loss import sft_loss

DEMO = "llamafactory_demo"


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.data import cache as tcache

    monkeypatch.setattr(tcache, "tokenized_root", lambda: tmp_path / "cache" / "tokenized")  # this test's own


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture()
def two_tasks(tmp_path: Path, shared_data: Path) -> dict[str, Path]:
    """English and Chinese Alpaca records as two tasks, each with a train file and its own eval file."""
    en = json.loads((shared_data / DEMO / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    zh = json.loads((shared_data / DEMO / "alpaca_zh_demo.json").read_text(encoding="utf-8"))
    return {"en": write_rows(tmp_path / "en.json", en[:20]), "en_val": write_rows(tmp_path / "en_val.json", en[20:25]),
            "zh": write_rows(tmp_path / "zh.json", zh[:40]), "zh_val": write_rows(tmp_path / "zh_val.json", zh[40:43])}


def hf_mean_loss(model, tokenizer, template: str, path: Path, max_length: int) -> tuple[float, int]:
    """(mean per-target-token loss, target count) of a file, one example at a time with HF's own loss."""
    convs = parse_records(read_records(path), "auto")[0]
    total, count = 0.0, 0
    with torch.no_grad():
        for conv in convs:
            t = tokenize_conversation(tokenizer, template, conv, max_length)
            ids, labels = torch.tensor([t.input_ids]), torch.tensor([t.labels])
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n  # HF: mean over shifted targets
            count += n
    return total / count, count


# --- config ------------------------------------------------------------------------------------------------

def test_task_names_default_to_the_file_stem_and_keep_their_order() -> None:
    cfg = build_config({"data": {"train": [{"path": "d/qa.jsonl", "weight": 3},
                                           {"path": "chat.json", "task": "general", "eval": "chat_val.json"}]}})
    assert cfg.data.tasks() == ["qa", "general"]
    assert cfg.data.sources()[1].eval == "chat_val.json"
    assert build_config({"data": {"train": "one.json"}}).data.tasks() == []  # a single file is not multi-task


@pytest.mark.parametrize(("data", "message"), [
    ({"train": [{"path": "a/qa.json"}, {"path": "b/qa.json"}]},
     "data.train[1].task: 'qa' is already the task of data.train[0]; give each source its own task: name"),
    ({"train": [{"path": "x.json", "task": "q a"}]},
     "data.train[0].task: 'q a' can hold only letters, digits, '_', '.' and '-'"),
    ({"train": [{"path": "x.json", "evl": "v.json"}]},
     "data.train[0].evl: unknown key; valid keys: path, weight, format, columns, task, eval"),
    ({"train": [{"path": "a.json"}, {"path": "b.json"}], "eval": "v.json"},
     "data.eval: with several tasks each is validated on its own; move this file to data.train[i].eval"),
    ({"train": [{"path": "a.json", "eval": "x.json"}], "eval": "v.json"},
     "data.train[0].eval: data.eval is set too; keep one of them"),
])
def test_config_errors_name_the_task_entry(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_config({"data": data}, "multi.yaml")
    assert "multi.yaml" in str(e.value) and message in str(e.value)


def test_stages_reading_one_file_refuse_several_tasks() -> None:
    cfg = DataCfg(train=[{"path": "a.json"}, {"path": "b.json"}])
    with pytest.raises(ValueError, match="data.train: stage dpo reads one training file, got 2 sources; "
                                         "multi-task runs are supported by stage sft and pretrain"):
        cfg.single_train("dpo")
    assert DataCfg(train="a.json").single_train("dpo") == "a.json"


def test_a_one_file_stage_given_two_tasks_fails_before_loading_anything(tmp_path: Path) -> None:
    from tunelab.config import ConfigError
    from tunelab.training.setup import load_split

    loaded = []
    cfg = DataCfg(train=[{"path": str(tmp_path / "a.json")}, {"path": str(tmp_path / "b.json")}])
    with pytest.raises(ConfigError, match="data.train: stage reward reads one training file, got 2 sources"):
        load_split(cfg, loaded.append, 0, stage="reward")
    assert loaded == []


# --- data: weights, splits, per-task validation -------------------------------------------------------------

def test_weights_set_the_mixture_and_every_task_holds_out_its_own_validation(two_tasks, tiny_tokenizer) -> None:
    template = resolve_template(tiny_tokenizer, None)
    cfg = DataCfg(train=[{"path": str(two_tasks["en"]), "weight": 0.75},
                         {"path": str(two_tasks["zh"]), "weight": 0.25}],
                  val_size=0.25, max_length=64)
    data = prepare_data(cfg, tiny_tokenizer, template, seed=3)
    # by hand: 20 -> 15 train + 5 val, 40 -> 30 + 10; shares 0.75/0.25 of train parts: total = min(15/.75, 30/.25) = 20
    tasks = data.stats["tasks"]
    assert {k: (v["train_samples"], v["val_samples"]) for k, v in tasks.items()} == {"en": (15, 5), "zh": (5, 10)}
    assert data.stats["train_samples"] == 20 == len(data.train) and set(data.val_sets) == {"en", "zh"}
    assert len(data.val) == 15 and data.stats["val_samples"] == 15
    # each task's validation is exactly the seeded split of its own file, and none of it is trained on
    en_convs = parse_records(read_records(two_tasks["en"]), "auto")[0]
    _, en_val = split_train_val(en_convs, 0.25, 3)
    expect = [tokenize_conversation(tiny_tokenizer, template, c, 64).input_ids for c in en_val]
    assert [t.input_ids for t in data.val_sets["en"]] == expect
    train_ids = {tuple(t.input_ids) for t in data.train}
    assert not train_ids & {tuple(t.input_ids) for v in data.val_sets.values() for t in v}
    # a second preparation comes from the cache with the same per-task sets
    again = prepare_data(cfg, tiny_tokenizer, template, seed=3)
    assert again.stats["cache"] == "hit"
    assert {k: [t.input_ids for t in v] for k, v in again.val_sets.items()} == \
        {k: [t.input_ids for t in v] for k, v in data.val_sets.items()}


def test_a_task_eval_file_replaces_its_split(two_tasks, tiny_tokenizer) -> None:
    cfg = DataCfg(train=[{"path": str(two_tasks["en"]), "eval": str(two_tasks["en_val"])},
                         {"path": str(two_tasks["zh"]), "task": "chinese"}], val_size=0.25, max_length=64, cache=False)
    data = prepare_data(cfg, tiny_tokenizer, resolve_template(tiny_tokenizer, None), seed=0)
    tasks = data.stats["tasks"]
    assert tasks["en"]["val_samples"] == 5 and tasks["en"]["eval"] == str(two_tasks["en_val"])  # the file, whole
    assert tasks["chinese"]["val_samples"] == 10  # 25% of 40 held out
    assert (tasks["en"]["train_samples"], tasks["chinese"]["train_samples"]) == (20, 20)  # equal weights: min(20, 30)


# --- engine: named eval sets ---------------------------------------------------------------------------------

def test_per_set_losses_equal_evaluating_each_set_alone(two_tasks, tiny_tokenizer) -> None:
    template = resolve_template(tiny_tokenizer, None)
    model = load_model("tiny-llama")
    sets = {name: [tokenize_conversation(tiny_tokenizer, template, c, 48)
                   for c in parse_records(read_records(two_tasks[f"{name}_val"]), "auto")[0]] for name in ("en", "zh")}
    collate_fn = lambda s: collate(s, tiny_tokenizer.pad_token_id)
    overall, per_set = evaluate_sets(model, sets, collate_fn, sft_loss, 2, torch.device("cpu"), _nullcontext)
    for name in sets:  # the independent reference: HF's own loss, example by example
        ref, _ = hf_mean_loss(model, tiny_tokenizer, template, two_tasks[f"{name}_val"], 48)
        assert per_set[name] == pytest.approx(ref, rel=1e-5)
    union = evaluate_loss(model, sets["en"] + sets["zh"], collate_fn, sft_loss, 2, torch.device("cpu"), _nullcontext)
    assert overall == pytest.approx(union, rel=1e-6)  # token-weighted, not the mean of the two
    assert overall != pytest.approx((per_set["en"] + per_set["zh"]) / 2, rel=1e-9)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


# --- end to end ----------------------------------------------------------------------------------------------

def test_two_task_sft_run_reports_each_task_and_eval_scores_per_task(two_tasks, tmp_path, tiny_tokenizer) -> None:
    out = tmp_path / "mt"
    cfg = {"model": {"name": "tiny-llama"}, "stage": "sft", "output_dir": str(out),
           "data": {"train": [{"path": str(two_tasks["en"]), "weight": 0.5, "eval": str(two_tasks["en_val"])},
                              {"path": str(two_tasks["zh"]), "weight": 0.5, "task": "chinese",
                               "eval": str(two_tasks["zh_val"])}], "max_length": 48},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "train": {"max_steps": 3, "batch_size": 8, "lr": 2e-3, "eval_every": 2, "report": True, "seed": 0}}
    run = tunelab.train(cfg, progress=False)

    reloaded = Run(out)
    evals = [m for m in reloaded.metrics() if "eval_loss" in m]
    assert [m["step"] for m in evals] == [2, 3] and all("loss" not in m for m in evals)
    last = evals[-1]
    model, tok, template = reloaded.load_model(device="cpu")
    refs = {task: hf_mean_loss(model, tok, template, two_tasks[f"{f}_val"], 48)
            for task, f in (("en", "en"), ("chinese", "zh"))}
    for task, (ref, _) in refs.items():  # the logged per-task losses are those of the saved model
        assert last[f"eval_loss/{task}"] == pytest.approx(ref, rel=1e-4)
        assert last[f"eval_ppl/{task}"] == pytest.approx(math.exp(last[f"eval_loss/{task}"]), rel=1e-9)
    pooled = sum(loss * n for loss, n in refs.values()) / sum(n for _, n in refs.values())
    assert last["eval_loss"] == pytest.approx(pooled, rel=1e-4)

    summary, info = run.summary, reloaded.info
    assert summary["eval_loss_per_task"] == {"en": last["eval_loss/en"], "chinese": last["eval_loss/chinese"]}
    assert summary["data"]["tasks"]["en"]["train_samples"] == 20 == summary["data"]["tasks"]["chinese"]["train_samples"]
    assert info["tasks"]["chinese"] == {**summary["data"]["tasks"]["chinese"], "val_samples": 3}
    assert "validation chinese" in (out / "report.html").read_text(encoding="utf-8")  # one curve per task

    # tunelab eval with one data file per task: metrics per task and their mean, predictions tagged by task
    result = CliRunner().invoke(app, ["eval", str(out), "--data", f"en={two_tasks['en_val']}",
                                      "--data", f"chinese={two_tasks['zh_val']}", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    (saved,) = (out / "eval").glob("en+chinese-*.json")
    record = json.loads(saved.read_text(encoding="utf-8"))
    metrics = record["metrics"]
    assert metrics["en/loss"] == pytest.approx(refs["en"][0], rel=1e-4) and metrics["chinese/n"] == 3
    assert metrics["mean/loss"] == pytest.approx((metrics["en/loss"] + metrics["chinese/loss"]) / 2, rel=1e-9)
    assert record["n"] == 8 and record["settings"]["tasks"] == {"en": str(two_tasks["en_val"]),
                                                                "chinese": str(two_tasks["zh_val"])}
    rows = [json.loads(line) for line in saved.with_suffix(".predictions.jsonl").read_text().splitlines()]
    assert [r["task"] for r in rows] == ["en"] * 5 + ["chinese"] * 3


def test_eval_refuses_two_files_with_one_task_name(two_tasks, tmp_path) -> None:
    from tunelab.eval.evaluate import task_files

    assert task_files([str(two_tasks["en_val"]), f"zh={two_tasks['zh_val']}"]) == {
        "en_val": str(two_tasks["en_val"]), "zh": str(two_tasks["zh_val"])}
    with pytest.raises(ValueError, match=r"task 'en_val' is already .*en_val.json; name them as TASK=FILE"):
        task_files([str(two_tasks["en_val"]), str(two_tasks["en_val"])])


def test_pretrain_with_two_tasks_reports_each(shared_data: Path, tmp_path: Path) -> None:
    web = [json.loads(line) for line in (shared_data / DEMO / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()]
    (tmp_path / "web.jsonl").write_text("".join(json.dumps({"text": r["text"][:300]}) + "\n" for r in web[:30]))
    news = (shared_data / "fudan_news_train.jsonl").read_text(encoding="utf-8").splitlines()[:10]
    (tmp_path / "news.jsonl").write_text("\n".join(news) + "\n", encoding="utf-8")  # chat records: user turns are read
    out = tmp_path / "pt"
    cfg = {"model": {"name": "tiny-llama"}, "stage": "pretrain", "output_dir": str(out),
           "data": {"train": [{"path": str(tmp_path / "web.jsonl"), "weight": 1},
                              {"path": str(tmp_path / "news.jsonl"), "weight": 1}],
                    "max_length": 64, "val_size": 0.2, "max_samples": 12},
           "method": {"name": "lora", "r": 4, "alpha": 8},
           "train": {"max_steps": 1, "batch_size": 8, "report": False}}
    run = tunelab.train(cfg, progress=False)
    tasks = run.summary["data"]["tasks"]
    # by hand: 30 web documents -> 24 train / 6 val; 10 news -> 8 / 2; equal weights take 8 + 8 documents,
    # of which data.max_samples keeps 12 (the validation documents are not cut)
    assert (tasks["web"]["val_documents"], tasks["news"]["val_documents"]) == (6, 2)
    assert tasks["web"]["train_documents"] + tasks["news"]["train_documents"] == 12
    (line,) = [m for m in run.metrics() if "eval_loss" in m]
    assert {"eval_loss/web", "eval_loss/news", "eval_ppl/news"} <= set(line)
    low, high = sorted([line["eval_loss/web"], line["eval_loss/news"]])
    assert low <= line["eval_loss"] <= high  # the pooled loss lies between the tasks'
    assert run.info["tasks"]["news"]["val_samples"] == tasks["news"]["val_samples"] > 0


def test_pretrain_reads_the_user_turns_of_chat_records(shared_data: Path) -> None:
    from tunelab.stages.pretrain import load_documents

    path = shared_data / "fudan_news_val.jsonl"
    docs = load_documents(str(path))
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert len(docs) == 320 and docs[0].text == first["messages"][1]["content"]  # the user turn, no system prompt
    assert docs[0].where == f"{path}:1"
