"""The HTML run report: parse it, check its content is escaped, render it in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tunelab.eval.report import ReportError, list_runs, summarize_run, write_report

pytest.importorskip("matplotlib")


class _Collect(HTMLParser):
    """Tags and ids of a page, its visible text, and the ids that hold an <svg>."""

    def __init__(self):
        super().__init__()
        self.ids, self.tags, self.text, self.stack, self.svg_in = set(), [], [], [], set()
        self.external = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")) and tag != "svg":
                self.external.append(attrs[key])
        if tag == "svg":
            self.svg_in.update(i for i in self.stack if i)
        if tag in ("div", "table", "ul", "tr", "td", "pre", "h3", "p", "li", "svg"):
            self.stack.append(attrs.get("id"))

    def handle_endtag(self, tag):
        if tag in ("div", "table", "ul", "tr", "td", "pre", "h3", "p", "li", "svg") and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_full_report(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    html = path.read_text(encoding="utf-8")
    page = _parse(path)
    assert {"plot-loss", "plot-lr", "plot-tokens_per_s"} <= page.svg_in  # three inline plots
    assert page.tags.count("svg") == 3 and page.external == []
    assert "<img" not in html and "<script" not in html  # nothing to fetch, nothing to run
    text = "".join(page.text)
    # overfitting from overfit.py, with the step it set in
    assert "overfitting" in page.ids and "step 60: eval_loss rose 2 evaluations in a row" in text
    # eval table and the first 5 of 8 predictions, escaped
    assert "rougeL" in text and "33.25" in text and "First 5 rows of alpaca_zh-20261120-101500.predictions.jsonl" in text
    assert "prediction 4 \"quoted\"" in text and "prediction 5" not in text
    assert "答案 <script>alert(1)</script>" in text  # shown as text ...
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<b>bold</b>" not in html  # ... because escaped
    # config and summary
    assert "train.scheduler" in text and "cosine" in text and "early_stopping" not in text
    assert "missing" not in page.ids  # everything is there


def test_minimal_run_says_what_is_missing(tmp_path, make_run):
    run = make_run(tmp_path, "bare", minimal=True)
    page = _parse(write_report(run))
    text = "".join(page.text)
    assert "plot-loss" in page.svg_in and "plot-lr" in page.svg_in
    assert "missing" in page.ids
    for item in ("run.json:", "summary.json:",
                 "eval/: no evaluation results; run `tunelab eval RUN_DIR --data FILE [--compare base]`"):
        assert item in text
    assert "config.yaml:" not in text and "metrics.jsonl:" not in text


def test_report_errors(tmp_path, make_run):
    with pytest.raises(ReportError, match="no such run folder"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="not a run folder"):
        write_report(tmp_path / "empty")
    run = make_run(tmp_path, "broken", minimal=True)
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:89: not valid JSON"):
        write_report(run)


def test_list_runs_sorting(tmp_path, make_run):
    make_run(tmp_path, "a", created="2026-11-20T10:00:00+00:00", eval_loss=1.5, steps=40)
    make_run(tmp_path, "b", created="2026-11-22T10:00:00+00:00", eval_loss=1.1, steps=80)
    make_run(tmp_path, "c", minimal=True, steps=60)  # no summary/run.json: falls back to metrics + config
    (tmp_path / "not-a-run").mkdir()
    runs = list_runs(tmp_path, sort="eval_loss")
    assert [r["name"] for r in runs] == ["b", "c", "a"]  # c: last eval row of a 60-step curve, 1.35
    c = summarize_run(tmp_path / "c")
    assert (c["base_model"], c["method"], c["steps"], c["eval_loss"]) == ("tiny-llama", "lora", 60, 1.35)
    assert c["train_loss"] == pytest.approx(0.5)
    assert [r["name"] for r in list_runs(tmp_path, sort="steps", desc=True)] == ["b", "c", "a"]
    assert [r["name"] for r in list_runs(tmp_path, sort="name", desc=True)] == ["c", "b", "a"]
    assert [r["name"] for r in list_runs(tmp_path)] == ["a", "b", "c"]  # by created; c has its folder mtime
    with pytest.raises(ReportError, match="cannot sort by 'loss'; choose from name, base_model"):
        list_runs(tmp_path, sort="loss")


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    np = pytest.importorskip("numpy")
    Image = pytest.importorskip("PIL.Image")
    path = write_report(run_dir)
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1100,1400", f"--screenshot={shot}", path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = np.unique(pixels, axis=0)
    assert len(colours) > 50  # text, plot lines and shading, not a blank page
    # the plots' colours are on screen: train-loss blue and validation red
    assert (np.abs(pixels.astype(int) - [0x1f, 0x77, 0xb4]).sum(axis=1) < 30).sum() > 100
    assert (np.abs(pixels.astype(int) - [0xd6, 0x27, 0x28]).sum(axis=1) < 30).sum() > 50


def test_comparison_shows_deltas_and_before_after_samples(run_dir):
    import json

    stem = run_dir / "eval" / "news-vs-base_tiny-llama-20261121-090000"
    stem.with_suffix(".json").write_text(json.dumps({
        "data": "news.jsonl", "n": 2, "settings": {}, "metrics": {"loss": 1.5, "accuracy": 0.75},
        "compare": {"name": "base:tiny-llama", "spec": "base", "metrics": {"loss": 2.0, "accuracy": 0.25},
                    "deltas": {"loss": -0.5, "accuracy": 0.5}}}), encoding="utf-8")
    rows = [{"prompt": "p1", "reference": "r1", "prediction": "tuned answer", "compare_prediction": "<i>base</i> says"}]
    stem.with_suffix(".predictions.jsonl").write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    html = write_report(run_dir).read_text(encoding="utf-8")
    table = html[html.index('<table class="comparison">'):]
    table = table[:table.index("</table>")]
    assert "<td>loss</td><td class=\"num\">1.5</td><td class=\"num\">2</td><td class=\"num\">-0.5</td>" in table
    assert "<td>accuracy</td><td class=\"num\">0.75</td><td class=\"num\">0.25</td><td class=\"num\">+0.5</td>" in table
    samples = html[html.index('class="samples before-after"'):]
    assert samples.index("&lt;i&gt;base&lt;/i&gt; says") < samples.index("tuned answer")  # before, then after
    assert "<i>base</i>" not in html
