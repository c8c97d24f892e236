"""The selftrain stage end to end, in both modes.

pseudo_label: train on a few labels, pseudo-label an unlabelled pool, retrain from the base model, round after round.
rejection: sample, judge with a reward file, keep the best, SFT on the kept answers.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

import tunelab
from tunelab.data.formats import Conversation
from tunelab.data.io import DataError
from tunelab.data.pipeline import collate
from tunelab.data.stage_formats import ClassExample
from tunelab.data.templates import resolve_template, tokenize_conversation
from tunelab.models import load_model, load_tokenizer
from tunelab.training.classes import collate_classes, head_input
from tunelab.training.heads import ScoreModel, load_scorer
from tunelab.stages.selftrain.pseudo_label import (
    answer_pattern,
    load_unlabelled,
    selection,
    with_label,
)
from tunelab.stages.selftrain.rejection import select

# --- pseudo_label: selection --------------------------------------------------------------------------------


def test_selection_keeps_rows_whose_top_probability_reaches_the_threshold() -> None:
    probs = torch.tensor([[0.95, 0.05], [0.60, 0.40], [0.10, 0.90], [0.20, 0.80], [0.91, 0.09]])
    assert selection(probs, 0.9, balance=False) == [0, 2, 4]  # 0.90 is kept: the threshold is inclusive
    assert selection(probs, 0.5, balance=False) == [0, 1, 2, 3, 4]
    assert selection(probs, 0.99, balance=False) == []


def test_balance_keeps_as_many_per_class_as_the_rarest_class_has_the_most_confident_first() -> None:
    # confident class-0 rows: 0 (0.97), 1 (0.99), 3 (0.95), 5 (0.99); class 1: 2 (0.96), 6 (0.98); class 2: 4 (0.92)
    # -> the rarest class (2) has 1, so each class keeps its single most confident row: 1 (before 5 on the tie), 6, 4
    probs = torch.tensor([[0.97, 0.02, 0.01], [0.99, 0.005, 0.005], [0.02, 0.96, 0.02], [0.95, 0.03, 0.02],
                          [0.04, 0.04, 0.92], [0.99, 0.005, 0.005], [0.01, 0.98, 0.01]])
    assert selection(probs, 0.9, balance=False) == [0, 1, 2, 3, 4, 5, 6]
    assert selection(probs, 0.9, balance=True) == [1, 4, 6]
    assert selection(probs, 0.5, balance=True) == [1, 4, 6]
    # without row 4, class 2 has no confident prediction: balance keeps nothing rather than skewing the classes
    assert selection(probs[[0, 1, 2, 3, 5, 6]], 0.9, balance=True) == []
    assert selection(probs[[0, 1, 2, 3, 5, 6]], 0.9, balance=False) == [0, 1, 2, 3, 4, 5]
    tied = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.05, 0.95], [0.02, 0.98]])
    assert selection(tied, 0.9, balance=True) == [0, 1, 2, 3]
    assert selection(tied[[0, 1, 2]], 0.9, balance=True) == [0, 2]  # ties: the earlier row wins


def test_pool_examples_take_the_labelled_answer_pattern_and_never_their_own_answer(tmp_path: Path) -> None:
    labelled = [ClassExample("体育", prompt=[{"role": "user", "content": "新闻一"}], answer="\\boxed{体育}")]
    pattern = answer_pattern(labelled)
    pool_file = tmp_path / "pool.jsonl"
    rec = {"messages": [{"role": "user", "content": "新闻二"}, {"role": "assistant", "content": "\\boxed{财经}"}],
           "label": "财经"}
    pool_file.write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    (item,) = load_unlabelled(pool_file)
    assert item.gold == "财经" and item.example.answer is None  # the gold answer turn is not kept
    assert item.example.prompt == [{"role": "user", "content": "新闻二"}]
    ex = with_label(item.example, "政治", pattern)
    assert (ex.label, ex.answer) == ("政治", "\\boxed{政治}")
    assert answer_pattern([ClassExample("pos", text="good")]) is None
    assert with_label(ClassExample("?", text="fine"), "pos", None).answer is None


# --- pseudo_label: end to end ----------------------------------------------------------------------------------

WORDS = {"pos": ["sunny happy day", "warm kind smile", "bright joyful song", "sweet gentle breeze"],
         "neg": ["sad cold rain", "grey bitter storm", "dark angry shout", "sour broken glass"]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def pseudo_data(tmp_path: Path) -> dict[str, Path]:
    labelled = [{"text": WORDS[y][i], "label": y} for i in range(2) for y in WORDS]  # 4 labels
    pool = [{"text": f"{WORDS[y][i]} again", "label": y} for i in range(4) for y in WORDS]  # 8, gold kept
    val = [{"text": f"a {WORDS[y][i]}", "label": y} for i in range(2, 4) for y in WORDS]  # 4
    return {"train": write_jsonl(tmp_path / "labelled.jsonl", labelled),
            "pool": write_jsonl(tmp_path / "pool.jsonl", pool), "eval": write_jsonl(tmp_path / "val.jsonl", val)}


def pseudo_cfg(data: dict[str, Path], out: Path, **selftrain) -> dict:
    return {"model": {"name": "tiny-llama"}, "stage": "selftrain", "output_dir": str(out),
            "data": {"train": str(data["train"]), "eval": str(data["eval"]), "max_length": 32},
            "method": {"name": "lora", "r": 4, "alpha": 8}, "classify": {"mode": "head"},
            "selftrain": {"unlabelled": str(data["pool"]), "threshold": 0.0, "rounds": 2, **selftrain},
            "train": {"max_steps": 2, "batch_size": 16, "lr": 5e-2, "warmup_ratio": 0.0, "report": False}}


def fresh_loss(texts: list[str], targets: list[int]) -> float:
    """Cross-entropy of the untrained classifier (LoRA B = 0, head seeded as the stage seeds it) on all texts."""
    tok = load_tokenizer("tiny-llama")
    model = ScoreModel(load_model("tiny-llama"), 2, ["neg", "pos"], seed=42)  # train.seed's default
    batch = collate_classes([_sample(tok, t, y) for t, y in zip(texts, targets)], tok.pad_token_id)
    with torch.no_grad():
        return float(F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["targets"]))


def _sample(tok, text: str, target: int):
    from tunelab.training.classes import ClassSample

    return ClassSample([head_input(ClassExample("?", text=text), tok, "", 32)], target)


def test_two_rounds_of_pseudo_labels_train_and_reload(pseudo_data: dict[str, Path], tmp_path: Path) -> None:
    run = tunelab.train(pseudo_cfg(pseudo_data, tmp_path / "pl"), progress=False)
    rounds = [json.loads(line) for line in (run.path / "selftrain_rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2] and run.summary["selftrain"]["stopped"] == "completed"
    assert run.summary["selftrain"]["rounds"] == rounds
    assert [r["train_examples"] for r in rounds] == [4, 12, 12]  # threshold 0 keeps the whole pool of 8
    assert rounds[0]["kept"] == 0 and rounds[0]["pseudo_accuracy"] is None

    # metrics.jsonl: every round's lines on one step axis, tagged with the round
    lines = [m for m in run.metrics() if "loss" in m]
    assert [(m["step"], m["round"]) for m in lines] == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 2)]
    assert run.summary["steps"] == 6

    # every round starts from the base model: its first loss is the untrained classifier's on its training data
    labelled = [json.loads(x) for x in pseudo_data["train"].read_text().splitlines()]
    index = {"neg": 0, "pos": 1}
    assert lines[0]["loss"] == pytest.approx(fresh_loss([r["text"] for r in labelled],
                                                        [index[r["label"]] for r in labelled]), rel=1e-4)
    pseudo = [json.loads(x) for x in (run.path / "pseudo_labels.jsonl").read_text().splitlines()]  # round 2's
    assert len(pseudo) == 8 and all(p["kept"] for p in pseudo)
    texts = [r["text"] for r in labelled] + [p["input"] for p in pseudo]
    targets = [index[r["label"]] for r in labelled] + [index[p["prediction"]] for p in pseudo]
    assert lines[4]["loss"] == pytest.approx(fresh_loss(texts, targets), rel=1e-4)
    assert rounds[2]["pseudo_accuracy"] == pytest.approx(sum(p["prediction"] == p["gold"] for p in pseudo) / 8)
    assert rounds[2]["kept_per_class"] == dict(sorted(Counter(p["prediction"] for p in pseudo).items()))

    # the saved model is the last round's: reloaded, it reproduces the validation predictions and metrics
    (report,) = sorted((run.path / "eval").glob("validation-*.predictions.jsonl"))
    preds = [json.loads(x) for x in report.read_text().splitlines()]
    scorer = load_scorer(run)
    tok = run.load_tokenizer()
    val = [json.loads(x) for x in pseudo_data["eval"].read_text().splitlines()]
    batch = collate_classes([_sample(tok, r["text"], index[r["label"]]) for r in val], tok.pad_token_id)
    with torch.no_grad():
        probs = scorer(batch["input_ids"], batch["attention_mask"]).softmax(-1)
    assert probs[:, 1].tolist() == pytest.approx([p["probs"]["pos"] for p in preds], abs=1e-5)
    truth, guess = [r["label"] for r in val], [p["prediction"] for p in preds]
    assert rounds[-1]["accuracy"] == pytest.approx(accuracy_score(truth, guess))
    assert run.summary["f1_macro"] == pytest.approx(f1_score(truth, guess, average="macro"))
    assert run.summary["selftrain"]["baseline_accuracy"] == rounds[0]["accuracy"]
    assert run.info["stage"] == "selftrain" and (run.path / "adapter" / "head.safetensors").is_file()


def test_nothing_confident_stops_after_the_labelled_round(pseudo_data: dict[str, Path], tmp_path: Path) -> None:
    run = tunelab.train(pseudo_cfg(pseudo_data, tmp_path / "none", threshold=1.0), progress=False)
    assert run.summary["selftrain"]["stopped"] == "converged" and run.summary["selftrain"]["final_round"] == 0
    pseudo = [json.loads(x) for x in (run.path / "pseudo_labels.jsonl").read_text().splitlines()]
    assert len(pseudo) == 8 and not any(p["kept"] for p in pseudo)
    assert [m["round"] for m in run.metrics() if "loss" in m] == [0, 0]


# --- pseudo_label: bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    ('{"text": "fine"}\n{"text": "oops"\n', r"pool\.jsonl:2: not valid JSON"),
    ('{"text": "fine"}\n{"sentence": "no text key"}\n',
     r"pool\.jsonl:2: an unlabelled record needs a 'text' or a 'messages' field, got keys \['sentence'\]"),
    ('{"text": ""}\n', r"pool\.jsonl:1: field 'text' must be a non-empty string"),
    ('{"text": "fine", "label": true}\n', r"pool\.jsonl:1: field 'label' must be a string or an integer"),
    ('\n', r"pool\.jsonl: no records \(the file is empty\)"),
])
def test_malformed_unlabelled_file_names_file_and_line(pseudo_data: dict[str, Path], tmp_path: Path, content: str,
                                                       message: str) -> None:
    pseudo_data["pool"].write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        tunelab.train(pseudo_cfg(pseudo_data, tmp_path / "bad"), progress=False)
    assert not (tmp_path / "bad").exists()  # checked before anything is written


def test_missing_unlabelled_file_says_what_is_expected(pseudo_data: dict[str, Path], tmp_path: Path) -> None:
    pseudo_data["pool"] = tmp_path / "nowhere.jsonl"
    with pytest.raises(DataError, match=r"selftrain.unlabelled: .*nowhere.jsonl: no such file; expected .*\"text\""):
        tunelab.train(pseudo_cfg(pseudo_data, tmp_path / "missing"), progress=False)
    cfg = pseudo_cfg(pseudo_data, tmp_path / "unset")
    del cfg["selftrain"]["unlabelled"]
    with pytest.raises(DataError, match=r"selftrain.unlabelled is not set.*or set selftrain.mode: rejection"):
        tunelab.train(cfg, progress=False)


# --- the measured task (scripts/stage_evidence.py selftrain) and the example's bundled copy --------------------

REPO = Path(__file__).resolve().parents[2]


def _evidence_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("stage_evidence", REPO / "scripts" / "stage_evidence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_topic_task_labels_only_the_first_word_of_each_topic_and_keeps_validation_unseen() -> None:
    ev = _evidence_script()
    task = ev.selftrain_task(0)
    assert [len(task[k]) for k in ("labelled", "unlabelled", "validation")] == [8, 300, 100]
    topic_of = {w: t for t, words in ev.SELFTRAIN_TOPICS.items() for w in words}
    for split in task:  # every sentence ends on a word of its own topic; labelled ones on the topic's first word
        for row in task[split]:
            last = row["text"].split()[-1]
            assert topic_of[last] == row["label"]
            assert split != "labelled" or last == ev.SELFTRAIN_TOPICS[row["label"]][0]
    assert Counter(r["label"] for r in task["labelled"]) == {t: 2 for t in ev.SELFTRAIN_TOPICS}
    assert len({r["text"] for r in task["validation"]}) == 100
    texts = {r["text"] for r in task["labelled"] + task["unlabelled"]}
    assert not texts & {r["text"] for r in task["validation"]}
    for split in ("labelled", "unlabelled", "validation"):  # the example's files are this task, as written
        rows = [json.loads(x) for x in (REPO / "examples" / "data" / f"selftrain_{split}.jsonl").read_text(
            encoding="utf-8").splitlines()]
        assert rows == task[split]


# --- rejection ----------------------------------------------------------------------------------------------

REWARD_FILE = Path(__file__).parent / "fixtures" / "vowel_rewards.py"


def cfg(data: Path, out: Path, min_reward: float) -> dict:
    return {"model": {"name": "tiny-llama"}, "stage": "selftrain", "output_dir": str(out),
            "data": {"train": str(data), "max_length": 64, "val_size": 0.0},
            "method": {"name": "lora", "r": 4, "alpha": 8},
            "selftrain": {"mode": "rejection", "samples_per_prompt": 3, "max_new_tokens": 8,
                          "rewards": ["my_rewards.py:vowels"], "min_reward": min_reward},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "report": False}}


@pytest.fixture()
def prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    rows = [{"instruction": f"Describe thing {i}.", "output": f"Thing {i} is fine."} for i in range(4)]
    path = tmp_path / "q.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_keeps_the_best_sample_per_prompt_and_trains_on_it(prompts: Path, tmp_path: Path) -> None:
    run = tunelab.train(cfg(prompts, tmp_path / "st", min_reward=0.0), progress=False)
    rows = [json.loads(line) for line in (run.path / "selftrain_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for p in range(4):  # the kept one of each prompt's 3 samples has the highest reward
        group = rows[3 * p:3 * p + 3]
        kept = [r for r in group if r["kept"]]
        assert len(kept) == 1 and kept[0]["reward"] == max(r["reward"] for r in group)
    data = [json.loads(line) for line in (run.path / "selftrain_data.jsonl").read_text().splitlines()]
    assert [d["messages"][-1]["content"] for d in data] == [r["completion"] for r in rows if r["kept"]]
    # step 1 (LoRA B = 0) is the base model's SFT loss on exactly the kept conversations
    tok = load_tokenizer("tiny-llama")
    tpl = resolve_template(tok, None)
    batch = collate([tokenize_conversation(tok, tpl, Conversation(d["messages"]), 64) for d in data], tok.pad_token_id)
    with torch.no_grad():
        expected = load_model("tiny-llama")(**batch).loss
    first = run.metrics()[0]
    assert first["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert run.summary["data"]["train_samples"] == 4 and run.info["stage"] == "selftrain"


def test_nothing_kept_is_a_clear_error(prompts: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"none of 12 samples reached selftrain.min_reward=2.0"):
        tunelab.train(cfg(prompts, tmp_path / "none", min_reward=2.0), progress=False)


def test_select() -> None:
    assert select([0.1, 0.5, 0.5, 0.9, 0.2, 0.0], 3, 0.3, "best") == [False, True, False, True, False, False]
    assert select([0.1, 0.5, 0.5, 0.9, 0.2, 0.0], 3, 0.3, "all") == [False, True, True, True, False, False]
    assert select([0.1, 0.2], 2, 0.5, "best") == [False, False]
