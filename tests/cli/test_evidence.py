"""The evidence sub-app through typer's CliRunner."""

from __future__ import annotations

import csv

from typer.testing import CliRunner

from tunelab.cli.evidence import app
from tunelab.eval.human import write_human_sheet

runner = CliRunner()


def test_report_command(run_dir):
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    path = result.output.strip()
    assert path == str(run_dir / "report.html")
    assert "id=\"plot-loss\"" in (run_dir / "report.html").read_text(encoding="utf-8")


def test_report_command_error(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "no such run folder" in result.output


def test_runs_command_sorts(tmp_path, make_run):
    make_run(tmp_path, "first-run", eval_loss=1.5, created="2026-11-20T10:00:00+00:00")
    make_run(tmp_path, "second-run", eval_loss=1.1, created="2026-11-21T10:00:00+00:00")
    result = runner.invoke(app, ["runs", str(tmp_path), "--sort", "eval_loss"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.index("second-run") < out.index("first-run")
    assert "tiny-llama" in out and "lora" in out and "1.1000" in out
    result = runner.invoke(app, ["runs", str(tmp_path), "--sort", "eval_loss", "--desc"])
    assert result.output.index("first-run") < result.output.index("second-run")
    bad = runner.invoke(app, ["runs", str(tmp_path), "--sort", "nope"])
    assert bad.exit_code == 1 and "cannot sort by 'nope'" in bad.output


def test_import_ratings_command(tmp_path):
    rows = [{"prompt": f"q{i}", "answer_a_source": "base", "answer_a": f"base {i}",
             "answer_b_source": "tuned", "answer_b": f"tuned {i}"} for i in range(4)]
    sheet, _ = write_human_sheet(rows, tmp_path / "sheet.csv", seed=1)
    with open(sheet, encoding="utf-8-sig", newline="") as f:
        table = list(csv.DictReader(f))
    for row in table:  # tuned wins 3, one tie
        row["better"] = "tie" if row["id"] == "4" else ("1" if row["answer_1"].startswith("tuned") else "2")
    with open(sheet, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    result = runner.invoke(app, ["import-ratings", str(sheet)])
    assert result.exit_code == 0, result.output
    tuned_line = next(line for line in result.output.splitlines() if "tuned" in line)
    assert "87.5%" in tuned_line  # (3 + 0.5) / 4
    assert "4 rated comparisons" in result.output
    table[0]["better"] = "x"
    with open(sheet, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    bad = runner.invoke(app, ["import-ratings", str(sheet)])
    assert bad.exit_code == 1 and f"{sheet}:2 (id 1): 'better' is 'x'; use 1, 2 or tie" in bad.output
