"""Blinded human-eval sheets: write, fill in as a rater would, import win rates."""

from __future__ import annotations

import csv
import json

import pytest

from tunelab.eval.human import (
    HumanEvalError,
    import_ratings,
    key_path,
    wilson_interval,
    write_human_sheet,
)


def _rows(n):
    return [{"prompt": f"问题 {i}\nsecond line", "answer_a_source": "base", "answer_a": f"base answer {i}",
             "answer_b_source": "tuned", "answer_b": f"tuned answer {i}"} for i in range(n)]


def _fill(sheet, verdicts):
    """Fill the 'better' column the way a rater would, choosing by which answer text is shown."""
    with open(sheet, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    for row, v in zip(rows, verdicts):
        row["better"] = v(row) if callable(v) else v
    with open(sheet, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _prefer_tuned(row):
    return "1" if row["answer_1"].startswith("tuned") else "2"


def test_sheet_is_blinded_and_key_records_order(tmp_path):
    sheet, key = write_human_sheet(_rows(20), tmp_path / "ratings.csv", seed=3)
    assert key == key_path(sheet) == tmp_path / "ratings.key.json"
    with open(sheet, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "prompt", "answer_1", "answer_2", "better", "notes"]
    assert rows[0]["prompt"] == "问题 0\nsecond line"  # multi-line cells survive
    text = sheet.read_text(encoding="utf-8-sig")
    assert "base" not in text.replace("base answer", "") and "tuned" not in text.replace("tuned answer", "")
    k = json.loads(key.read_text())["rows"]
    first_is_tuned = [row["answer_1"].startswith("tuned") for row in rows]
    assert [k[r["id"]]["answer_1"] == "tuned" for r in rows] == first_is_tuned
    assert 0 < sum(first_is_tuned) < 20  # the order really is randomized
    # same seed -> same sheet; different seed -> different order
    again, _ = write_human_sheet(_rows(20), tmp_path / "again.csv", seed=3)
    assert again.read_text(encoding="utf-8-sig") == text
    other, _ = write_human_sheet(_rows(20), tmp_path / "other.csv", seed=4)
    assert other.read_text(encoding="utf-8-sig") != text


def test_import_ratings_unblinds_and_counts_ties_half(tmp_path):
    sheet, _ = write_human_sheet(_rows(10), tmp_path / "r.csv", seed=0)
    _fill(sheet, [_prefer_tuned] * 6 + ["tie"] * 2 + [lambda r: "2" if r["answer_1"].startswith("tuned") else "1"] * 2)
    got = import_ratings(sheet)
    assert got["n"] == 10
    tuned, base = got["systems"]["tuned"], got["systems"]["base"]
    assert (tuned["wins"], tuned["ties"], tuned["losses"]) == (6, 2, 2)
    assert tuned["win_rate"] == pytest.approx(0.7) and base["win_rate"] == pytest.approx(0.3)
    lo, hi = tuned["ci95"]
    assert lo < 0.7 < hi
    assert (lo, hi) == pytest.approx(wilson_interval(7.0, 10))


def test_wilson_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    ci = stats.binomtest(8, 10).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(8, 10) == pytest.approx((ci.low, ci.high))
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == pytest.approx(1.0)


def test_errors_name_the_csv_line(tmp_path):
    sheet, _ = write_human_sheet(_rows(3), tmp_path / "r.csv", seed=0)
    _fill(sheet, ["1", "", "maybe"])
    with pytest.raises(HumanEvalError) as e:
        import_ratings(sheet)
    msg = str(e.value)
    # each record spans two lines (the prompt has a newline): header=1, id1=2-3, id2=4-5, id3=6-7
    assert "2 problem(s)" in msg
    assert f"{sheet}:4 (id 2): 'better' is empty; fill in 1, 2 or tie" in msg
    assert f"{sheet}:6 (id 3): 'better' is 'maybe'; use 1, 2 or tie" in msg


def test_unknown_and_duplicate_ids(tmp_path):
    sheet, _ = write_human_sheet(_rows(2), tmp_path / "r.csv", seed=0)
    with open(sheet, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0]["better"] = rows[1]["better"] = "tie"
    rows.append({**rows[1]})
    rows.append({**rows[1], "id": "99"})
    with open(sheet, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(HumanEvalError) as e:
        import_ratings(sheet)
    assert f"{sheet}:6: id 2 already rated at line 4; remove the duplicate row" in str(e.value)
    assert f"{sheet}:8: id '99' is not in the key file" in str(e.value)


def test_missing_key_and_bad_rows(tmp_path):
    sheet, key = write_human_sheet(_rows(1), tmp_path / "r.csv")
    key.unlink()
    with pytest.raises(HumanEvalError, match="key file .*r.key.json is missing"):
        import_ratings(sheet)
    with pytest.raises(HumanEvalError, match="row 0: missing answer_b"):
        write_human_sheet([{"prompt": "p", "answer_a_source": "x", "answer_a": "a", "answer_b_source": "y"}],
                          tmp_path / "x.csv")
    with pytest.raises(HumanEvalError, match="both 'x'"):
        write_human_sheet([{"prompt": "p", "answer_a_source": "x", "answer_a": "a", "answer_b_source": "x",
                            "answer_b": "b"}], tmp_path / "x.csv")


def test_formula_cells_are_defused(tmp_path):
    rows = [{"prompt": "=HYPERLINK(\"http://x\")", "answer_a_source": "a", "answer_a": "@SUM(1)",
             "answer_b_source": "b", "answer_b": "plain"}]
    sheet, _ = write_human_sheet(rows, tmp_path / "r.csv")
    with open(sheet, encoding="utf-8-sig", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["prompt"] == "'=HYPERLINK(\"http://x\")"
    assert "'@SUM(1)" in (row["answer_1"], row["answer_2"])
