"""The guided New-job flow in a real headless Chromium: every preset on a tiny model, the Advanced section,
the estimate's fit warning and its one-click fix, a job's live view, a run's evidence page and the config
diff of two runs; axe-core (bundled offline by axe-playwright-python) finds no serious or critical
violation on any screen; no console errors; the layout holds in a narrow window.

Screenshots go to test-artifacts/studio/ (git-ignored); docs/images/studio/ holds copies of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

playwright = pytest.importorskip("playwright.sync_api")
axe_sync = pytest.importorskip("axe_playwright_python.sync_playwright")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)

from tests.studio.live_server import live_studio
from tunelab.studio.paths import Settings

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "studio"
# preset -> (library file it trains on here, text its YAML must hold)
PRESETS = {"quick-lora-cpu": ("identity.json", "max_steps: 60"), "qlora-24gb": ("identity.json", "name: qlora"),
           "full-small": ("identity.json", "name: full"), "dpo-pairs": ("pairs.json", "stage: dpo"),
           "classifier-head": ("news.jsonl", "stage: classify")}
SERIOUS = ("serious", "critical")


@pytest.fixture()
def server(tmp_path, shared_data):
    """A real studio (job watcher on) with three library files: alpaca, preference pairs, news classes."""
    settings = Settings(data_dir=tmp_path / "studio", poll_s=0.5)
    demo = shared_data / "llamafactory_demo"
    shutil.copy(demo / "identity.json", settings.datasets / "identity.json")
    pairs = json.loads((demo / "dpo_en_demo.json").read_text(encoding="utf-8"))[:16]
    (settings.datasets / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    news = (shared_data / "fudan_news_train.jsonl").read_text(encoding="utf-8").splitlines()[:24]
    (settings.datasets / "news.jsonl").write_text("\n".join(news) + "\n", encoding="utf-8")
    with live_studio(settings) as url:
        yield url, settings


@pytest.fixture()
def page():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        pg.set_default_timeout(90000)  # a loaded 2-core CI machine: the first model skeletons take a while
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        # A 422 is the validation answer the page shows at the field (a bad value typed on purpose below);
        # Chromium logs every 4xx fetch as a console error, so those are the one kind let through.
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 422" not in m.text
              else None)
        yield pg
        browser.close()
        assert not errors, f"errors in the browser console: {errors}"


def _shot(page, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def _axe(page, screen: str) -> None:
    """axe-core on the whole page: no violation of serious or critical impact."""
    results = axe_sync.Axe().run(page)
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in results.response["violations"]
           if v["impact"] in SERIOUS]
    assert not bad, f"{screen}: accessibility violations {bad}"


def _valid(page) -> None:
    page.wait_for_function("document.querySelector('#form-status').textContent === 'configuration is valid'",
                           timeout=90000)


def _until_yaml(page, text: str) -> None:
    page.wait_for_function(f"document.querySelector('#yaml-preview').textContent.includes({json.dumps(text)})",
                           timeout=90000)


@pytest.mark.slow
def test_guided_flow_presets_estimate_progress_and_evidence(server, page):
    url, settings = server
    page.goto(url + "/#new")
    page.wait_for_selector("#preset-buttons button.preset")
    assert [b.text_content() for b in page.locator("#preset-buttons button.preset").all()] == [
        "Quick LoRA on CPU", "QLoRA for a 24 GB GPU", "Full fine-tune small model", "DPO on preference pairs",
        "Classifier head"]

    # Each preset on a tiny model and a library file: the YAML holds the preset, validation passes, the estimate shows
    for preset, (data, marker) in PRESETS.items():
        page.click(f"button[data-preset='{preset}']")
        page.select_option("#g-model", "tiny-llama")
        page.select_option("#g-data", f"datasets/{data}")
        page.wait_for_selector(f"#data-summary[data-name='{data}'] #g-format")
        _until_yaml(page, "name: tiny-llama")
        _until_yaml(page, marker)
        _until_yaml(page, f"train: datasets/{data}")
        _valid(page)
        page.wait_for_selector("#fit-ok, #fit-warning")
        assert page.locator("label.field.bad").count() == 0
        assert f"tunelab train {preset}.yaml" in page.text_content("#cli-preview")
        shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "presets" /
                                  f"{preset}.yaml").read_text(encoding="utf-8"))
        shown = yaml.safe_load(page.text_content("#yaml-preview"))
        assert shown["method"]["name"] == shipped["method"]["name"]
        assert shown.get("stage", "sft") == shipped.get("stage", "sft")
        if preset == "dpo-pairs":
            _shot(page, "new-job-dpo", full_page=False)
    # the DPO preset's data inspection read the pairs; the classifier's its messages
    assert page.text_content("#g-format") == "messages"

    # Quick LoRA: the recommended values for tiny-llama on CPU fill the keys the preset leaves open
    page.click("button[data-preset='quick-lora-cpu']")
    page.select_option("#g-data", "datasets/identity.json")
    page.wait_for_selector("#g-example mark.trained")
    page.select_option("#g-model", "tiny-llama")
    page.wait_for_function("document.querySelector('#rec-method\\\\.r').textContent.includes('Recommended: 8')")
    page.wait_for_function("document.querySelector('#model-facts').textContent.startsWith('3.2M parameters')")
    assert page.text_content("#model-facts").startswith("3.2M parameters · context 2,048 tokens")
    _valid(page)
    _shot(page, "new-job")
    _axe(page, "New job")

    # A bad value is shown at the guided field with the CLI's message
    page.fill("#k-method\\.r", "0")
    page.wait_for_selector("#row-k-method\\.r.bad")
    assert "method.r: input should be greater than 0 (got 0)" in page.text_content("#row-k-method\\.r .ferr")
    assert page.get_attribute("#k-method\\.r", "aria-invalid") == "true"
    page.fill("#k-method\\.r", "8")
    page.wait_for_selector("#row-k-method\\.r.bad", state="detached")

    # Advanced: folded, searchable, every other key with the schema's help
    assert page.locator("#advanced[open]").count() == 0
    page.click("#advanced summary")
    page.fill("#adv-search", "warmup")
    page.wait_for_function("document.querySelector('#adv-count').textContent.includes('match')")
    visible = [el.get_attribute("data-search") for el in page.locator("#form-fields label.field:visible").all()]
    assert visible and all("warmup" in text for text in visible)
    assert "Fraction of steps spent warming up" in page.text_content("#row-f-train\\.warmup_ratio")
    page.fill("#adv-search", "eval_every")
    page.fill("#f-train\\.eval_every", "2")
    page.fill("#k-train\\.max_steps", "4")
    _until_yaml(page, "eval_every: 2")
    _until_yaml(page, "max_steps: 4")
    page.evaluate("document.querySelector('#advanced').scrollIntoView()")
    _shot(page, "new-job-advanced", full_page=False)

    # The estimate warns when it will not fit, and a fix applies with one click
    page.fill("#estimate-memory", "0.3")
    page.dispatch_event("#estimate-memory", "change")
    page.wait_for_selector("#fit-warning")
    warning = page.text_content("#fit-warning")
    assert "Will not fit" in warning and "0.3 GiB available" in warning
    assert "gradient checkpointing" in warning
    page.locator("#fit-warning").scroll_into_view_if_needed()
    _shot(page, "new-job-estimate-warning", full_page=False)
    _axe(page, "New job with the fit warning")
    page.fill("#estimate-memory", "")
    page.dispatch_event("#estimate-memory", "change")
    page.wait_for_selector("#fit-ok")

    # Narrow window: one column, nothing wider than the window
    page.set_viewport_size({"width": 600, "height": 900})
    assert page.evaluate("document.documentElement.scrollWidth") <= 600
    _shot(page, "new-job-narrow", full_page=False)
    page.set_viewport_size({"width": 1280, "height": 800})

    # Start it: the job page shows progress, throughput, memory and the fast paths, then the finished run
    page.fill("#job-name", "guided")
    _until_yaml(page, "output_dir: runs/guided")
    page.click("#start-btn")
    page.wait_for_selector("#job-progress", timeout=90000)
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'completed'", timeout=240000)
    page.wait_for_selector("#chart-loss svg path.series")
    log = (settings.jobs / "1" / "train.log").read_text(encoding="utf-8")
    speed = next(line for line in log.splitlines() if line.startswith("speed: "))
    on = speed.removeprefix("speed: ").split("; off: ")[0]
    assert page.text_content("#job-speed").startswith(on)
    assert page.get_attribute("#job-progressbar", "value") == "100"
    assert "step 4 of 4" in page.text_content("#job-progress")
    assert "GiB (CPU RSS)" in page.text_content("#job-mem")
    assert page.text_content("#job-tps") != "?"
    _shot(page, "jobs")
    _axe(page, "Jobs")

    # The run page: evaluate against the base, then the evidence leads (metrics with deltas, answers side by side)
    page.goto(url + "/#runs")
    page.click("#run-table tbody tr[data-name='guided'] button.link")
    page.wait_for_function("document.querySelector('#run-detail h2')?.textContent === 'guided'")
    assert "Not evaluated yet" in page.text_content("#evidence")
    page.select_option("#eval-data", "identity.json")
    page.fill("#eval-limit", "3")
    page.fill("#eval-max", "4")
    page.click("#eval-btn")
    page.wait_for_selector("#eval-job-status", timeout=10000)
    page.wait_for_selector("#evidence-table tr[data-metric='loss']", timeout=240000)
    result = json.loads(next((settings.runs / "guided" / "eval").glob("identity-vs-base*.json")).read_text())
    loss_row = page.text_content("#evidence-table tr[data-metric='loss']")
    assert f"{result['metrics']['loss']:.4f}" in loss_row
    assert f"{result['compare']['deltas']['loss']:.4f}".lstrip("-") in loss_row
    assert page.locator("#answers-table tbody tr").count() == 3
    first = json.loads((settings.runs / "guided" / "eval").glob("identity-vs-base*.predictions.jsonl")
                       .__next__().read_text().splitlines()[0])
    pred = first["prediction"]
    shown = pred if pred.strip() else f"(empty: {json.dumps(pred, ensure_ascii=False)})"
    assert page.text_content("#answers-table tbody tr:first-child td.tuned") == shown
    order = page.evaluate("[...document.querySelectorAll('#run-detail h3')].map(h => h.textContent)")
    assert order[0].startswith("Base vs tuned") and order[2] == "Training curves"
    page.locator("#run-detail").scroll_into_view_if_needed()
    _shot(page, "runs-evidence")
    _axe(page, "Runs")

    # Config diff between two runs (a copy of the run with another learning rate)
    other = settings.runs / "guided-lr"
    shutil.copytree(settings.runs / "guided", other)
    cfg = yaml.safe_load((other / "config.yaml").read_text(encoding="utf-8"))
    cfg["train"]["lr"] = 0.01
    (other / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    page.reload()  # a fresh page: the run table is drawn once, with both runs, before anything is ticked
    page.wait_for_selector("#run-table tbody tr[data-name='guided-lr']")
    page.locator("#run-table tbody tr[data-name='guided'] input.cmp").check()
    page.locator("#run-table tbody tr[data-name='guided-lr'] input.cmp").check()
    page.click("#compare-btn")
    page.wait_for_selector("#cmp-diff-table tr[data-key='train.lr']")
    assert page.locator("#cmp-diff-table tbody tr").count() == 1
    assert page.text_content("#cmp-diff-table tr[data-key='train.lr']").endswith("0.01")
    page.locator("#compare-diff").scroll_into_view_if_needed()
    _shot(page, "runs-compare", full_page=False)

    # Keyboard: the screens are links in tab order; Enter opens one
    page.goto(url + "/#runs")
    page.wait_for_selector("#run-table tbody tr")
    page.focus("nav a[data-tab='datasets']")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.tab") == "new"
    page.keyboard.press("Enter")
    page.wait_for_function("location.hash === '#new'")

    # The other screens pass axe too
    page.goto(url + "/#datasets")
    page.click("#dataset-table button.link >> text=identity.json")
    page.wait_for_selector("#ds-format")
    _axe(page, "Datasets")
    page.goto(url + "/#playground")
    page.wait_for_selector("#chat-run option", state="attached")
    _axe(page, "Playground")
    page.goto(url + "/docs")
    page.wait_for_selector("#api h3")
    _axe(page, "API reference")

    # The overfitting banner: the finished run's metrics gain evaluations whose loss rises while training
    # loss falls (written here, after every screenshot); the job page shows tunelab.tracking.overfit's mark
    rows = [{"step": s, "loss": 10.0 - 0.2 * (s - 4)} for s in range(5, 11)]
    rows += [{"step": 6, "eval_loss": 10.9}, {"step": 8, "eval_loss": 11.0}, {"step": 10, "eval_loss": 11.1}]
    with (settings.runs / "guided" / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["step"]))
    page.goto(url + "/#jobs")
    page.click("#job-table button.link >> text='guided'")
    page.wait_for_selector("#overfit-banner")
    assert page.text_content("#overfit-banner").startswith("Possible overfitting at step 8")
    assert page.get_attribute("#overfit-banner", "role") == "alert"
