"""End to end in a real headless Chromium: upload, map columns, inspect, configure, train, watch, evaluate
against base, compare, chat.

Screenshots go to test-artifacts/studio/ (git-ignored); docs/images/studio/ holds copies of them.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)

from tests.studio.live_server import live_studio
from tunelab.studio.paths import Settings

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "studio"


@pytest.fixture()
def server(tmp_path):
    """A real studio (job watcher on) on a free loopback port."""
    settings = Settings(data_dir=tmp_path / "studio", poll_s=0.5)
    with live_studio(settings) as url:
        yield url, settings


@pytest.fixture()
def page():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        pg = browser.new_page(viewport={"width": 1360, "height": 900})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        yield pg
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


def _open_advanced(page) -> None:
    """Unfold the New-job form's Advanced section and all its groups (folded by default)."""
    page.evaluate("document.querySelectorAll('#advanced, #form-fields details').forEach(d => d.open = true)")


def _shot(page, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


@pytest.mark.slow
def test_upload_train_watch_chat_in_the_browser(server, page, shared_data, tmp_path):
    url, settings = server
    identity = shared_data / "llamafactory_demo" / "identity.json"
    n_records = len(json.loads(identity.read_text(encoding="utf-8")))
    page.goto(url + "/#datasets")

    # Datasets: upload a real alpaca file; the inspection shows format, counts and the marked example
    page.set_input_files("#upload-file", str(identity))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#ds-format", timeout=60000)
    assert page.text_content("#ds-format") == "alpaca"
    assert page.text_content("#ds-records").startswith(f"{n_records} ")
    assert page.locator("#example .trained").count() >= 1
    assert page.locator("#hist svg rect.bar").count() == 12
    assert (settings.datasets / "identity.json").read_bytes() == identity.read_bytes()
    _shot(page, "datasets")

    # Column mapping: a CSV with odd column names is not recognized until its columns are mapped
    odd = tmp_path / "odd columns.csv"
    with odd.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Question Text", "reply", "notes"])
        for r in json.loads(identity.read_text(encoding="utf-8"))[:20]:
            w.writerow([r["instruction"], r["output"], "x"])
    page.set_input_files("#upload-file", str(odd))
    page.click("#upload-form button[type=submit]")
    page.wait_for_function("document.querySelector('#ds-format')?.textContent === 'unrecognized'", timeout=60000)
    assert page.locator("#column-map[open]").count() == 1
    page.select_option("select.map-field[data-column='Question Text']", "instruction")
    page.select_option("select.map-field[data-column='reply']", "output")
    page.click("#map-apply")
    page.wait_for_function("document.querySelector('#ds-format')?.textContent === 'alpaca'", timeout=60000)
    assert page.text_content("#ds-records").startswith("20 ")
    assert page.locator("#example .trained").count() >= 1
    page.click("#map-save")
    page.wait_for_function("document.querySelector('#map-msg')?.textContent.startsWith('saved')", timeout=60000)
    mapping = {"instruction": "Question Text", "output": "reply"}
    assert json.loads((settings.datasets / ".columns" / "odd_columns.csv.json").read_text()) == mapping
    page.locator("#column-map").scroll_into_view_if_needed()
    _shot(page, "datasets-columns")
    # train on it: the New-job form gets the saved mapping as data.columns
    page.click("#dataset-table tbody tr[data-name='odd_columns.csv'] button.secondary")
    page.wait_for_function("document.getElementById('f-data.train')?.value === 'datasets/odd_columns.csv'")
    assert json.loads(page.input_value("#f-data\\.columns")) == mapping
    page.wait_for_function("document.querySelector('#yaml-preview').textContent.includes('Question Text')")
    page.goto(url + "/#datasets")
    page.wait_for_selector("#dataset-table tbody tr[data-name='identity.json']")

    # New job: the form is generated from the schema; a bad value shows the CLI's error next to the field
    page.click("#dataset-table tbody tr[data-name='identity.json'] button.secondary")
    page.wait_for_selector("#f-data\\.train", state="attached")
    _open_advanced(page)
    assert page.input_value("#f-data\\.train") == "datasets/identity.json"
    page.fill("#job-name", "browser-run")
    page.fill("#f-model\\.name", "tiny-llama")
    page.fill("#f-method\\.r\\@lora", "0")
    page.wait_for_selector("#row-f-method\\.r\\@lora.bad", timeout=10000)
    assert "method.r: input should be greater than 0 (got 0)" in page.text_content("#row-f-method\\.r\\@lora .ferr")
    page.locator("#row-f-method\\.r\\@lora").scroll_into_view_if_needed()
    _shot(page, "new-job-error-advanced", full_page=False)
    page.fill("#f-method\\.r\\@lora", "8")
    page.fill("#f-train\\.max_steps", "3")
    page.fill("#f-train\\.batch_size", "2")
    page.fill("#f-data\\.max_length", "128")
    page.wait_for_function("document.querySelector('#yaml-preview').textContent.includes('max_steps: 3')")
    assert page.locator("label.field.bad").count() == 0
    assert "tunelab train browser-run.yaml" in page.text_content("#cli-preview")
    _shot(page, "new-job-schema-form", full_page=False)

    # Jobs: start it and watch it finish with live charts and log
    page.click("#start-btn")
    page.wait_for_selector("#job-status", timeout=10000)
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'completed'", timeout=240000)
    page.wait_for_selector("#chart-loss svg path.series")
    assert "done: 3 steps" in page.text_content("#job-log")
    summary = json.loads((settings.runs / "browser-run" / "summary.json").read_text())
    assert summary["steps"] == 3
    _shot(page, "jobs-schema-run")

    # Clone and edit: the form comes back filled with the job's config under a new name
    page.click("text=Clone and edit")
    page.wait_for_function("document.querySelector('#job-name').value === 'browser-run-copy'")
    _open_advanced(page)
    assert page.input_value("#f-train\\.max_steps") == "3"
    assert page.input_value("#f-method\\.r\\@lora") == "8"
    page.wait_for_function("document.querySelector('#yaml-preview').textContent.includes('runs/browser-run-copy')")
    assert page.input_value("#f-data\\.columns") == ""
    page.fill("#f-train\\.lr", "0.01")  # a second run that differs, to compare with
    page.wait_for_function("document.querySelector('#yaml-preview').textContent.includes('lr: 0.01')")
    page.click("#start-btn")
    page.wait_for_function("document.querySelector('#job-detail h2')?.textContent.includes('browser-run-copy')")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'completed'", timeout=240000)

    # Runs: the list shows the run's own summary numbers; each run evaluates against its base model as a job
    page.goto(url + "/#runs")
    row = page.locator("#run-table tbody tr[data-name='browser-run']")
    row.wait_for()
    assert f"{summary['train_loss']:.4f}" in row.text_content()
    for run in ("browser-run-copy", "browser-run"):
        page.click(f"#run-table tbody tr[data-name='{run}'] td:nth-child(2)")
        page.wait_for_function(f"document.querySelector('#run-detail h2')?.textContent === '{run}'")
        page.select_option("#eval-data", "identity.json")
        page.fill("#eval-limit", "4")
        page.fill("#eval-max", "4")
        page.click("#eval-btn")
        page.wait_for_selector("#eval-job-status", timeout=10000)
        page.wait_for_function("document.querySelector('#eval-job-status')?.textContent === 'completed'",
                               timeout=240000)
        page.wait_for_selector("#eval-table tr[data-dataset='identity'][data-metric='loss']")
    saved = sorted((settings.runs / "browser-run" / "eval").glob("identity-vs-base_tiny-llama-*.json"))
    result = json.loads(saved[-1].read_text())
    loss_row = page.locator("#eval-table tr[data-metric='loss']")
    assert f"{result['metrics']['loss']:.4f}" in loss_row.text_content()
    assert f"{result['compare']['metrics']['loss']:.4f}" in loss_row.text_content()
    assert page.locator("#eval-table thead").text_content().count("base:tiny-llama") == 1
    page.locator("#run-detail").scroll_into_view_if_needed()
    _shot(page, "runs-eval")

    # compare: both curves and the side-by-side table of the dataset both were evaluated on
    page.locator("#run-table tbody tr[data-name='browser-run'] input.cmp").check()
    page.locator("#run-table tbody tr[data-name='browser-run-copy'] input.cmp").check()
    page.click("#compare-btn")
    page.wait_for_selector("#cmp-loss svg path.series")
    page.wait_for_selector("#cmp-eval-table tr[data-dataset='identity'][data-metric='loss']")
    assert page.locator("#cmp-loss svg path.series").count() == 2
    _shot(page, "runs")

    # Playground: chat with the run next to its base model (streamed)
    page.goto(url + "/#playground")
    page.wait_for_selector("#chat-run option", state="attached")
    page.select_option("#chat-run", "browser-run")
    page.fill("#chat-max", "8")
    page.fill("#chat-input", "Who are you?")
    page.click("#chat-send")
    page.wait_for_selector("#chat-run-log .assistant[data-done='1']", timeout=120000)
    page.wait_for_selector("#chat-base-log .assistant[data-done='1']", timeout=120000)
    assert page.text_content("#chat-run-log .user") == "you: Who are you?"
    answers = page.text_content("#chat-run-log .assistant") + page.text_content("#chat-base-log .assistant")
    assert "[error]" not in answers and answers.strip()
    _shot(page, "playground")

    # API reference: rendered offline from /openapi.json
    page.goto(url + "/docs")
    page.wait_for_selector("#api h3")
    assert page.locator("#api h3", has_text="POST /api/jobs").count() >= 1
    _shot(page, "api", full_page=False)
