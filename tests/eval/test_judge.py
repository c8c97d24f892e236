"""LLM-judge scoring and reference-LM fluency (`tunelab eval --judge / --human-ratings / --fluency-lm`)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

import tunelab
from tunelab.data.templates import prompt_ids
from tunelab.eval.human import write_human_sheet
from tunelab.eval.judge import (
    PAIRWISE_OPTIONS,
    EndpointJudge,
    JudgeError,
    LocalJudge,
    cohen_kappa,
    fluency_perplexity,
    human_agreement,
    pairwise,
    parse_choice,
    rubric,
)
from tunelab.models import load_model
from tunelab.models.tiny import tiny_tokenizer


class FirstJudge:
    """A judge with pure position bias: always answers '1'."""

    name = "first"

    def choose(self, prompts, options):
        return ["1" if "1" in options else options[0] for _ in prompts]


class LongerJudge:
    """Prefers the longer answer whatever its position (ties on equal length); grades by length."""

    name = "longer"

    def choose(self, prompts, options):
        out = []
        for p in prompts:
            text = p[-1]["content"]
            if "[Answer 1]" in text:
                first = text.split("[Answer 1]\n", 1)[1].split("\n\n[Answer 2]", 1)[0]
                second = text.split("[Answer 2]\n", 1)[1].split("\n\nReply with", 1)[0]
                out.append("1" if len(first) > len(second) else "2" if len(second) > len(first) else "0")
            else:
                answer = text.split("[Answer]\n", 1)[1].split("\n\nReply with", 1)[0]
                out.append(str(min(5, max(1, len(answer) // 4))))
        return out


def test_position_swap_turns_pure_position_bias_into_ties():
    res = pairwise(FirstJudge(), ["q1", "q2", "q3"], ["long answer", "a", "b"], ["x", "yy", "zzz"])
    # asked once, this judge would make A win every question; swapped, each question splits -> tie
    assert (res.wins, res.losses, res.ties) == (0, 0, 3)
    s = res.summary()
    assert s["judge_win_rate"] == 0.5 and s["judge_consistency"] == 0.0 and s["judge_first_position_rate"] == 1.0


def test_pairwise_counts_consistent_wins_for_the_better_side():
    res = pairwise(LongerJudge(), ["q1", "q2", "q3", "q4"], ["long answer", "a", "same", "longer one"],
                   ["x", "yyyy", "SAME", "y"])
    assert res.verdicts == ["a", "b", "tie", "a"]
    s = res.summary()
    assert s["judge_win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert s["judge_consistency"] == 1.0 and s["judge_first_position_rate"] == pytest.approx(0.5)


def test_rubric_grades_each_answer():
    assert rubric(LongerJudge(), ["q", "q"], ["abcdefgh", "a" * 40], ["ref", ""]) == [2, 5]


def test_parse_choice_reads_a_word_not_a_part_of_one():
    assert parse_choice("Answer 2 is better.", PAIRWISE_OPTIONS) == "2"
    assert parse_choice("I'd say 0", PAIRWISE_OPTIONS) == "0"
    assert parse_choice("12 reasons", PAIRWISE_OPTIONS) is None
    assert parse_choice("score: 4/5", ("1", "2", "3", "4", "5")) == "4"
    assert parse_choice("no verdict", PAIRWISE_OPTIONS) is None


def test_cohen_kappa_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    a = ["1", "2", "tie", "1", "1", "2", "2", "tie", "1", "2"]
    b = ["1", "2", "1", "1", "2", "2", "tie", "tie", "1", "1"]
    assert cohen_kappa(a, b) == pytest.approx(sklearn_metrics.cohen_kappa_score(a, b))
    assert cohen_kappa(a, a) == 1.0


def _rated_sheet(tmp_path: Path, rows: list[tuple[str, str, str]], better: list[str]) -> Path:
    """A sheet of (prompt, tuned, base) rows; better[i] names the system the rater preferred ('tuned'/'base'/'tie')."""
    sheet, key = write_human_sheet([{"prompt": p, "answer_a_source": "tuned", "answer_a": a,
                                     "answer_b_source": "base", "answer_b": b} for p, a, b in rows],
                                   tmp_path / "ab.csv", seed=3)
    order = json.loads(key.read_text(encoding="utf-8"))["rows"]
    table = list(csv.reader(io.StringIO(sheet.read_text(encoding="utf-8-sig"))))
    for i, row in enumerate(table[1:]):
        want = better[i]
        row[4] = "tie" if want == "tie" else "1" if order[row[0]]["answer_1"] == want else "2"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(table)
    sheet.write_text(buf.getvalue(), encoding="utf-8")
    return sheet


def test_human_agreement_against_a_rated_sheet(tmp_path):
    rows = [("q1", "a long tuned answer", "short"), ("q2", "tiny", "a long base answer"),
            ("q3", "=1+1 is two, said at length", "2"), ("q4", "same", "SAME")]
    # raters: tuned, tuned, tuned, base; the length judge says tuned, base, tuned, tie -> agrees on 2 of 4
    sheet = _rated_sheet(tmp_path, rows, ["tuned", "tuned", "tuned", "base"])
    res = human_agreement(LongerJudge(), sheet)
    assert res["n"] == 4 and res["agreement"] == pytest.approx(0.5)
    human = [r["human"] for r in res["per_row"]]
    judged = [r["judge"] for r in res["per_row"]]
    assert res["kappa"] == pytest.approx(cohen_kappa(human, judged))
    # the formula-defused cell comes back as the answer itself, so the judge compared the real text
    assert any(r["judge"] != "tie" for r in res["per_row"])


def test_human_agreement_names_unrated_rows(tmp_path):
    sheet, _ = write_human_sheet([{"prompt": "q", "answer_a_source": "a", "answer_a": "x",
                                   "answer_b_source": "b", "answer_b": "y"}], tmp_path / "s.csv")
    with pytest.raises(ValueError, match=r"s\.csv:2 \(id 1\): 'better' is empty"):
        human_agreement(LongerJudge(), sheet)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    return load_model("tiny-llama").eval(), tok, tok.chat_template


@torch.no_grad()
def _loglik(model, tok, template, messages, text):
    p = prompt_ids(tok, template, messages)
    c = tok(text, add_special_tokens=False)["input_ids"]
    logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)
    return sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(c))


def test_local_judge_picks_the_likeliest_verdict(tiny):
    model, tok, template = tiny
    judge = LocalJudge(model, tok, template, name="tiny-llama")
    prompts = [[{"role": "user", "content": f"question {i}: which is better?"}] for i in range(3)]
    got = judge.choose(prompts, ("1", "2", "3", "4", "5"))
    for p, g in zip(prompts, got):
        scores = {o: _loglik(model, tok, template, p, o) for o in ("1", "2", "3", "4", "5")}
        assert g == max(scores, key=scores.get)


@torch.no_grad()
def test_fluency_perplexity_matches_the_model_loss(tiny):
    model, tok, _ = tiny
    texts = ["the sea is calm today", "一个 中文 句子", "x", ""]
    corpus, per = fluency_perplexity(model, tok, texts)
    assert math.isnan(per[3])  # nothing to score
    total, count = 0.0, 0
    for text, p in zip(texts[:3], per):
        ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
        loss = float(model(input_ids=ids, labels=ids).loss)  # HF's own shifted mean NLL
        assert p == pytest.approx(math.exp(loss), rel=1e-4)
        total, count = total + loss * (ids.shape[1] - 1), count + ids.shape[1] - 1
    assert corpus == pytest.approx(math.exp(total / count), rel=1e-4)


def _fake_openai(reply: str, seen: list):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers.get("authorization") != "Bearer k":
            return httpx.Response(401, json={"error": {"message": "bad key"}})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "judge-m"}]})
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": reply}}]})
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_endpoint_judge_asks_the_first_served_model_and_parses_replies():
    seen: list[httpx.Request] = []
    judge = EndpointJudge("http://judge.local", api_key="k", client=_fake_openai("Answer 2.", seen))
    assert judge.model == "judge-m"
    res = pairwise(judge, ["q"], ["a"], ["b"])
    assert res.verdicts == ["tie"]  # "2" in both orders: B, then A -> a split, so a tie
    body = json.loads(seen[-1].content)
    assert body["model"] == "judge-m" and body["temperature"] == 0.0
    assert "[Answer 1]\nb" in body["messages"][0]["content"]  # the second request shows B first
    assert rubric(EndpointJudge("http://judge.local", api_key="k", client=_fake_openai("hmm", [])),
                  ["q"], ["a"]) == [None]


def test_endpoint_judge_errors_name_the_fix():
    with pytest.raises(JudgeError, match="HTTP 401.*--judge-api-key"):
        EndpointJudge("http://judge.local", api_key="wrong", client=_fake_openai("1", []))
    with pytest.raises(JudgeError, match="unreachable.*tunelab serve"):
        EndpointJudge("http://127.0.0.1:9", timeout_s=2)


def test_endpoint_judge_on_tunelab_serve(tiny):
    from fastapi.testclient import TestClient

    from tunelab.infer.model_pool import ModelSpec
    from tunelab.infer.server import create_app

    _, _, template = tiny
    app = create_app([ModelSpec("judge", "tiny-llama", None, template)], api_key="k")
    with TestClient(app) as client:
        judge = EndpointJudge("http://testserver", api_key="k", client=client, max_tokens=4)
        assert judge.model == "judge"
        res = pairwise(judge, ["q1", "q2"], ["a", "b"], ["c", "d"])
        # a random tiny model rarely says a digit: every unparsed reply is counted, never guessed
        assert res.n == 2 and res.invalid + res.decisive <= 4
        assert res.summary()["judge_invalid"] == res.invalid
        with pytest.raises(JudgeError, match="HTTP 401"):
            EndpointJudge("http://testserver", client=client)


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    """A full fine-tune of tiny-llama that has memorised one answer (its base answers with nothing)."""
    root = tmp_path_factory.mktemp("judge")
    data = root / "greet.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Greet person {i}.", "input": "",
                                        "output": "hello there my good friend"}) + "\n" for i in range(8)),
                    encoding="utf-8")
    cfg = {"model": {"name": "tiny-llama"}, "data": {"train": str(data), "max_length": 64, "val_size": 0.0},
           "method": {"name": "full"},
           "train": {"max_steps": 12, "batch_size": 8, "lr": 3e-3, "seed": 0, "report": False},
           "output_dir": str(root / "run")}
    run = tunelab.train(cfg, progress=False)
    val = root / "val.jsonl"
    val.write_text("\n".join(data.read_text(encoding="utf-8").splitlines()[:3]) + "\n", encoding="utf-8")
    return run, val


def test_eval_with_judge_and_fluency_through_the_cli(tuned_run, tmp_path):
    from tunelab.cli import app
    from tunelab.eval.report import write_report

    run, data = tuned_run
    sheet = tmp_path / "ab.csv"
    res = CliRunner().invoke(app, ["eval", str(run.path), "--data", str(data), "--compare", "base",
                                   "--max-new-tokens", "4", "--human-sheet", str(sheet), "--speed-samples", "0",
                                   "--judge", "tiny-llama", "--fluency-lm", "tiny-llama"])
    assert res.exit_code == 0, res.output
    saved = sorted((run.path / "eval").glob("*-vs-*.json"))[-1]
    record = json.loads(saved.read_text(encoding="utf-8"))
    metrics, other = record["metrics"], record["compare"]["metrics"]
    keys = list(metrics)
    assert keys.index("judge_rubric") < keys.index("loss") and keys.index("fluency_ppl") < keys.index("loss")
    assert 1 <= metrics["judge_rubric"] <= 5 and 0 <= metrics["judge_win_rate"] <= 1
    assert metrics["judge_wins"] + metrics["judge_losses"] + metrics["judge_ties"] == 3
    assert record["judge"]["judge"] == "tiny-llama"
    rows = [json.loads(line) for line in Path(str(saved)[:-5] + ".predictions.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert all(r["prediction"].startswith("hello there") and r["compare_prediction"] == "" for r in rows)
    # fluency: the tuned answers' perplexity under the reference LM; the base's empty answers have none
    ref_ppl, _ = fluency_perplexity(load_model("tiny-llama").eval(), tiny_tokenizer(), [r["prediction"] for r in rows])
    assert metrics["fluency_ppl"] == pytest.approx(ref_ppl, rel=1e-4) and math.isnan(other["fluency_ppl"])
    assert "fluency_ppl" not in record["compare"]["deltas"]
    assert record["compare"]["deltas"]["judge_rubric"] == pytest.approx(metrics["judge_rubric"] - other["judge_rubric"])
    assert all(r["judge_pairwise"] in ("win", "loss", "tie") and "compare_judge_rubric" in r for r in rows)
    # the same verdicts from the Python API on the saved answers (a local judge is deterministic)
    judge = LocalJudge(load_model("tiny-llama").eval(), tiny_tokenizer(), tiny_tokenizer().chat_template, "t")
    again = pairwise(judge, [r["prompt"] for r in rows], [r["prediction"] for r in rows],
                     [r["compare_prediction"] for r in rows])
    assert [{"a": "win", "b": "loss", "tie": "tie"}[v] for v in again.verdicts] == [r["judge_pairwise"] for r in rows]
    html = write_report(run.path).read_text(encoding="utf-8")
    assert "judge_win_rate" in html and "fluency_ppl" in html

    # rate the sheet (tuned always better) and measure the judge against it
    table = list(csv.reader(io.StringIO(sheet.read_text(encoding="utf-8-sig"))))
    key = json.loads(sheet.with_name("ab.key.json").read_text(encoding="utf-8"))["rows"]
    for row in table[1:]:
        row[4] = "1" if key[row[0]]["answer_1"] == run.path.resolve().name else "2"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(table)
    sheet.write_text(buf.getvalue(), encoding="utf-8")
    res = CliRunner().invoke(app, ["eval", str(run.path), "--data", str(data), "--max-new-tokens", "4",
                                   "--judge", "tiny-llama", "--human-ratings", str(sheet)])
    assert res.exit_code == 0, res.output
    assert "agrees with the raters" in res.output
    record = json.loads(sorted((run.path / "eval").glob("val-2*.json"))[-1].read_text(encoding="utf-8"))
    agreement = human_agreement(judge, sheet)
    assert record["metrics"]["judge_human_agreement"] == pytest.approx(agreement["agreement"])
    assert record["judge"]["human_agreement"]["n"] == 3


def test_eval_judge_bad_input_is_named(tuned_run):
    from tunelab.cli import app

    run, data = tuned_run
    res = CliRunner().invoke(app, ["eval", str(run.path), "--data", str(data), "--human-ratings", "x.csv"])
    assert res.exit_code != 0 and "also pass --judge" in res.output
    res = CliRunner().invoke(app, ["eval", str(run.path), "--data", str(data), "--judge", "no-such-model-dir",
                                   "--max-new-tokens", "2"])
    assert res.exit_code != 0 and "no-such-model-dir" in res.output
