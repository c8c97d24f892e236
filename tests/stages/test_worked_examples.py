"""The two worked examples of docs/worked-examples.md, end to end on the tiny model.

Chat-嬛嬛: our own short script -> `tunelab data extract-dialogue` -> LoRA SFT -> `tunelab chat`.
Fudan news: the shortened subsets -> `examples/fudan_sft.yaml` -> `tunelab eval --metrics classification
--compare base`, and `examples/fudan_classify_head.yaml`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import load_config
from tunelab.infer.generate import CHAT_REPETITION_PENALTY, generate
from tunelab.run import Run

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
SCRIPT = FIXTURES / "huanhuan_script.txt"
TINY = ["model.name=tiny-llama", "train.report=false", "--quiet"]

# What the script holds for 甄嬛 (alias 嬛嬛), written out by hand: the line said to her -> her answer.
# Stage directions go, a continuation line joins its speaker's line, two lines in a row by her merge,
# and the first line of 第2幕 (she opens the scene) has no prompt.
EXPECTED = [
    ("小姐，内务府送来的炭又少了一半。", "少便少罢，省着些用，总能熬过这个冬天。"),
    ("可是旁的宫里都是足足的，偏咱们这里短了。", "宫里的人惯会看人下菜碟，咱们若是去争，反倒落了口实。"),
    ("小主说得是。奴婢这就去把旧年的手炉找出来。", "有劳姑姑了，夜里风大，你也添件衣裳。"),
    ("嬛儿，你又一个人出来，也不叫我一声。", "姐姐来得正好，陪我走一走。"),
    ("哟，这不是莞贵人吗？好雅兴啊。", "给华妃娘娘请安。"),
    ("起来吧。本宫瞧着这园子里的花，倒没有妹妹开得艳。", "娘娘说笑了，嫔妾不过是路边的野草，哪里比得上娘娘的牡丹。"),
    ("朕听说你今日在御花园遇见了华妃。", "是。娘娘教导了臣妾几句，臣妾受益良多。"),
    ("你倒是会说话。", "臣妾不敢。夜深了，皇上喝口热茶暖暖身子。"),
]


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _extract(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "huanhuan_script.json"
    _cli("data", "extract-dialogue", SCRIPT, "--character", "甄嬛", "--alias", "嬛嬛", "-o", out, *extra)
    return out


def test_extract_dialogue_turns_the_script_into_the_hand_written_records(tmp_path: Path) -> None:
    records = json.loads(_extract(tmp_path).read_text(encoding="utf-8"))
    assert [(r["instruction"], r["output"]) for r in records] == EXPECTED
    assert all(r["input"] == "" for r in records)
    skipped = [json.loads(line) for line in (tmp_path / "huanhuan_script.rejected.jsonl").read_text().splitlines()]
    assert [(s["reason"], s["position"].rsplit(":", 1)[1], s["record"]["output"]) for s in skipped] == [
        ("no_prompt", "15", "今年的杏花开得倒早。")]
    with_history = json.loads(_extract(tmp_path, "--history", "1").read_text(encoding="utf-8"))
    assert with_history[1]["history"] == [list(EXPECTED[0])]  # same scene: the exchange before
    assert with_history[3]["history"] == []  # a new scene starts without history


def test_persona_pipeline_script_to_chat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _extract(tmp_path)
    run_dir = tmp_path / "huanhuan"
    monkeypatch.chdir(REPO)
    _cli("train", REPO / "examples" / "huanhuan_sft.yaml", *TINY, f"data.train={data}", "data.max_samples=null",
         "train.epochs=1", "train.max_steps=6", "train.batch_size=4", "train.lr=0.02", "train.warmup_ratio=0",
         f"output_dir={run_dir}")
    losses = [m["loss"] for m in Run(run_dir).metrics() if "loss" in m]
    assert len(losses) == 6 and losses[-1] < losses[0]  # 8 records, 3 epochs: the answers are being learned
    prompt = EXPECTED[4][0]
    reply = _cli("chat", run_dir, "--prompt", prompt, "--max-new-tokens", "12", "--repetition-penalty", "1.0").strip()
    # the same greedy answer straight from transformers, with the template the run saved
    model, tok, template = Run(run_dir).load_model(device="cpu")
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], chat_template=template,
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                             pad_token_id=tok.pad_token_id)
    want = tok.decode(out[0, ids.size(1):], skip_special_tokens=True).strip()
    assert reply and reply == want
    # by default chat penalizes repeats inside the answer (CHAT_REPETITION_PENALTY), as generate does when asked
    default = _cli("chat", run_dir, "--prompt", prompt, "--max-new-tokens", "12").strip()
    assert default == generate(model, tok, template, [[{"role": "user", "content": prompt}]], 12,
                               repetition_penalty=CHAT_REPETITION_PENALTY)[0]


def _evidence_script():
    spec = importlib.util.spec_from_file_location("stage_evidence", REPO / "scripts" / "stage_evidence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def fudan(tmp_path: Path, shared_data: Path) -> Path:
    """The example's data layout (runs/fudan/...) under tmp_path, 8 train / 8 validation records."""
    ev = _evidence_script()
    ev.fudan_subset(shared_data / "fudan_news_train.jsonl", tmp_path / "runs/fudan/fudan_train.jsonl", 8, 30)
    ev.fudan_subset(shared_data / "fudan_news_val.jsonl", tmp_path / "runs/fudan/fudan_val.jsonl", 8, 30)
    return tmp_path


def test_fudan_examples_are_the_documented_setups() -> None:
    sft, head = (load_config(REPO / "examples" / f"fudan_{n}.yaml") for n in ("sft", "classify_head"))
    assert sft.stage == "sft" and head.stage == "classify" and head.classify.mode == "head"
    assert sft.data.train == "runs/fudan/fudan_train.jsonl" and sft.data.eval == "runs/fudan/fudan_val.jsonl"
    # the head classifier reads the full files: all 320 validation records are scored
    assert head.data.train == "../shared/data/fudan_news_train.jsonl"
    assert head.data.eval == "../shared/data/fudan_news_val.jsonl"
    assert (head.classify.pooling, head.classify.head_input) == ("mean", "text")
    assert head.classify.labels is None  # the sorted labels of the data, so ROC AUC can be computed


def test_fudan_instruction_tuning_then_eval_against_base(fudan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(fudan)  # the example's data paths are relative: runs/fudan/...
    _cli("train", REPO / "examples" / "fudan_sft.yaml", *TINY, "data.max_length=160", "train.max_steps=1",
         "train.batch_size=4", "train.eval_every=null")
    run = Run(fudan / "runs/fudan-sft")
    assert run.config.stage == "sft"
    _cli("eval", run.path, "--data", "runs/fudan/fudan_val.jsonl", "--metrics", "classification",
         "--compare", "base", "--max-new-tokens", "6")
    saved = next((run.path / "eval").glob("fudan_val-vs-*.json"))
    record = json.loads(saved.read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in saved.with_suffix(".predictions.jsonl").read_text().splitlines()]
    assert record["n"] == len(rows) == 8 and record["compare"]["name"] == "base:tiny-llama"
    labels = sorted({r["label"] for r in rows})
    assert labels == sorted(["政治", "财经", "体育", "计算机"])
    # accuracy and macro-F1 of the generated labels, recomputed with scikit-learn from the saved predictions
    y_true, y_pred = [r["label"] for r in rows], [r["predicted_label"] for r in rows]
    metrics = record["metrics"]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="macro",
                                                         zero_division=0))
    # the constrained answer: the most likely of the four labels
    best = [max(r["label_probs"], key=r["label_probs"].get) for r in rows]
    assert metrics["ll_accuracy"] == pytest.approx(accuracy_score(y_true, best))
    assert set(record["compare"]["metrics"]) >= {"accuracy", "f1_macro", "ll_accuracy"}


def test_fudan_head_classifier_scores_the_validation_set(fudan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(fudan)
    _cli("train", REPO / "examples" / "fudan_classify_head.yaml", *TINY, "data.max_length=160",
         "data.train=runs/fudan/fudan_train.jsonl", "data.eval=runs/fudan/fudan_val.jsonl",
         "train.max_steps=1", "train.batch_size=4", "train.eval_every=null")
    run = Run(fudan / "runs/fudan-head")
    saved = next((run.path / "eval").glob("validation-*.json"))
    rows = [json.loads(line) for line in saved.with_suffix(".predictions.jsonl").read_text().splitlines()]
    y_true, y_pred = [r["reference"] for r in rows], [r["prediction"] for r in rows]
    assert len(rows) == 8
    assert run.summary["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert run.summary["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, labels=["政治", "财经", "体育", "计算机"],
                                                             average="macro", zero_division=0))


def test_the_worked_examples_page_names_only_files_that_exist() -> None:
    doc = (REPO / "docs" / "worked-examples.md").read_text(encoding="utf-8")
    named = set(re.findall(r"(?:examples|tests/stages/fixtures|(?:benchmarks/)?scripts)/[\w./-]+\.(?:yaml|txt|json|py)", doc))
    assert {"examples/fudan_sft.yaml", "examples/fudan_classify_head.yaml", "examples/huanhuan_sft.yaml",
            "tests/stages/fixtures/huanhuan_script.txt"} <= named
    assert [n for n in sorted(named) if not (REPO / n).is_file()] == []
    stages = (REPO / "docs" / "stages.md").read_text(encoding="utf-8")
    first_line = stages.split("# Training with a stage\n\n", 1)[1].splitlines()[0]
    assert "[worked-examples.md](worked-examples.md)" in first_line  # linked at the top of that part


def _persona_script():
    spec = importlib.util.spec_from_file_location("persona_eval", REPO / "scripts" / "persona_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_persona_eval_asks_only_lines_the_example_did_not_train_on(shared_data: Path) -> None:
    ev = _persona_script()
    records = json.loads((shared_data / "huanhuan.json").read_text(encoding="utf-8"))
    trained = {(r["instruction"] + r.get("input", ""), r["output"]) for r in records[:240]}
    prompts, refs = ev.heldout_prompts(shared_data / "huanhuan.json", skip=240, n=24)
    assert len(prompts) == len(refs) == 24
    step = (len(records) - 240) // 24  # evenly spread over the records after the trained ones
    want = records[240::step][:24]
    assert all(r["instruction"] in p[-1]["content"] for r, p in zip(want, prompts))
    assert refs == [r["output"] for r in want]
    assert not any((p[-1]["content"], a) in trained for p, a in zip(prompts, refs))
    assert [p[0]["content"] for p in ev.fixed_prompts()] == ["你是谁？", "小主，皇上今晚翻了您的牌子。",
                                                            "华妃娘娘又派人送了赏赐来，小主要收下吗？", "嬛儿，你在宫里过得可好？"]
