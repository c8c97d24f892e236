"""The Runs screen's eval table (static/app.js evalTable) rendered in Node with a minimal DOM: one row per
metric, and each result's notes once under the table. The browser test covers the page as a whole."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

APP_JS = Path(__file__).resolve().parents[2] / "src" / "tunelab" / "studio" / "static" / "app.js"
NODE = shutil.which("node")

DOM = """
class FakeNode {
  constructor(tag) { this.tag = tag; this.attrs = {}; this.children = []; this.className = ""; }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  addEventListener() {}
  append(c) { this.children.push(c); }
  toJSON() { return {tag: this.tag, class: this.className, attrs: this.attrs, children: this.children}; }
}
globalThis.Node = FakeNode;
globalThis.document = {createElement: tag => new FakeNode(tag)};
"""


def _piece(source: str, start: str) -> str:
    """The top-level declaration of app.js that begins with `start` (a function up to its closing brace)."""
    i = source.index(start)
    end = source.index("\n}\n", i) + 3 if start.startswith("function") else source.index("\n", i) + 1
    return source[i:end]


def _render(evals: list[dict]) -> dict:
    src = APP_JS.read_text(encoding="utf-8")
    code = DOM + "".join(_piece(src, s) for s in ("function h(", "const fmt =", "const signed =",
                                                  "function evalTable(")) \
        + f"console.log(JSON.stringify(evalTable({json.dumps(evals)}, 'eval-table')));\n"
    out = subprocess.run([NODE, "-e", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _text(node) -> str:
    return node if isinstance(node, str) else "".join(_text(c) for c in node["children"])


def _find(node, pred) -> list[dict]:
    if isinstance(node, str):
        return []
    return ([node] if pred(node) else []) + [m for c in node["children"] for m in _find(c, pred)]


@pytest.mark.skipif(NODE is None, reason="needs node")
def test_notes_show_once_under_the_table():
    note = "references are short (median 2 tokens); loss/perplexity reflect the reference wording, not task success"
    result = {"file": "labels-1.json", "dataset": "labels", "n": 5, "compare": "base:tiny-llama", "notes": [note],
              "rows": [{"metric": "contains", "run": 0.8, "other": 0.1, "delta": 0.7},
                       {"metric": "loss", "run": 2.5, "other": 3.0, "delta": -0.5}]}
    again = {**result, "file": "labels-2.json"}
    plain = {"file": "plain-1.json", "dataset": "plain", "n": 3, "compare": None, "notes": [],
             "rows": [{"metric": "loss", "run": 1.0, "other": None, "delta": None}]}
    box = _render([result, again, plain])
    assert box["tag"] == "div" and box["attrs"]["id"] == "eval-table"
    table, *notes = box["children"]
    assert table["tag"] == "table" and table["class"] == "list evals"
    rows = _find(table, lambda n: n["tag"] == "tr" and "data-metric" in n["attrs"])
    assert [(r["attrs"]["data-dataset"], r["attrs"]["data-metric"]) for r in rows] == [
        ("labels", "contains"), ("labels", "loss"), ("labels", "contains"), ("labels", "loss"), ("plain", "loss")]
    assert "base:tiny-llama" in _text(_find(table, lambda n: n["tag"] == "thead")[0])
    assert len(notes) == 1  # the same caveat on two results of one dataset is said once
    assert notes[0]["tag"] == "p" and "note" in notes[0]["class"].split()
    assert notes[0]["attrs"]["data-dataset"] == "labels" and _text(notes[0]) == f"labels: note: {note}"


@pytest.mark.skipif(NODE is None, reason="needs node")
def test_no_results_and_no_notes_render_as_before():
    empty = _render([])
    assert empty["tag"] == "p" and empty["attrs"]["id"] == "eval-table" and _text(empty) == "No evaluations yet."
    box = _render([{"file": "x.json", "error": "eval/x.json: unreadable"}])
    (table,) = box["children"]
    assert "unreadable" in _text(table)
