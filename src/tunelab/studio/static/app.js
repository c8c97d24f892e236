// tunelab studio page: plain JS over the JSON API (see /docs). User text is only ever set via textContent.
"use strict";

const $ = sel => document.querySelector(sel);
const state = {fields: [], datasets: [], models: [], jobId: null, jobTimer: null, dataset: null};

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (tag === "pre") el.tabIndex = 0;  // a scrollable block must be reachable from the keyboard
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

async function api(path, opts) {
  const res = await fetch(path, opts);
  const body = (res.headers.get("content-type") || "").includes("json") ? await res.json() : await res.text();
  if (!res.ok) { const e = new Error(body.error || res.statusText); e.body = body; e.status = res.status; throw e; }
  return body;
}
const post = (path, body) => api(path, {method: "POST", headers: {"content-type": "application/json"},
                                        body: JSON.stringify(body || {})});
const fmt = v => v === null || v === undefined ? "" : typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(4)) : v;
function setMsg(el, text, ok) { el.textContent = text; el.className = "msg " + (ok ? "ok" : "err"); }

// ---------------------------------------------------------------- tabs
function showTab(name) {
  document.querySelectorAll(".tab").forEach(t => t.classList.toggle("active", t.id === "tab-" + name));
  document.querySelectorAll("nav a").forEach(a => {
    a.classList.toggle("active", a.dataset.tab === name);
    if (a.dataset.tab === name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  ({datasets: loadDatasets, jobs: loadJobs, runs: loadRuns, playground: loadRunsForChat, new: refreshFormLists})[name]?.();
}
window.addEventListener("hashchange", () => showTab(location.hash.slice(1) || "datasets"));

// ---------------------------------------------------------------- datasets
async function loadDatasets() {
  state.datasets = await api("/api/datasets");
  const body = $("#dataset-table tbody");
  body.replaceChildren(...state.datasets.map(d => h("tr", {class: d.name === state.dataset ? "sel" : "",
      "data-name": d.name, onclick: () => inspectDataset(d.name)},
    h("td", {}, h("button", {type: "button", class: "link", onclick: e => { e.stopPropagation(); inspectDataset(d.name); }}, d.name)),
    h("td", {}, (d.bytes / 1024).toFixed(1) + " KB"),
    h("td", {}, h("button", {class: "secondary", "aria-label": `train on ${d.name}`, onclick: e => { e.stopPropagation(); useDataset(d.path); }}, "train on")))));
}

$("#upload-form").addEventListener("submit", async e => {
  e.preventDefault();
  const file = $("#upload-file").files[0];
  if (!file) return setMsg($("#upload-msg"), "choose a file first");
  const fd = new FormData();
  fd.append("file", file);
  try {
    const r = await api("/api/datasets", {method: "POST", body: fd});
    setMsg($("#upload-msg"), `uploaded as ${r.name}`, true);
    await loadDatasets();
    inspectDataset(r.name);
  } catch (err) { setMsg($("#upload-msg"), err.message); }
});

// columns: undefined = the mapping saved with the file, {} = none, else {standard: column}
async function inspectDataset(name, columns) {
  state.dataset = name;
  loadDatasets();
  const box = $("#dataset-detail");
  box.replaceChildren(h("h2", {}, name), h("p", {class: "hint"}, "inspecting..."));
  let r;
  const q = columns === undefined ? "" : "&columns=" + encodeURIComponent(JSON.stringify(columns));
  try { r = await api(`/api/datasets/${encodeURIComponent(name)}/inspect?model=tiny-llama${q}`); }
  catch (err) {
    box.append(h("div", {class: "msg err", id: "ds-error"}, err.message));
    if (columns !== undefined) box.append(h("button", {class: "secondary", onclick: () => inspectDataset(name)}, "back to the saved mapping"));
    return;
  }
  const hist = h("div", {id: "hist"});
  const ex = h("div", {class: "example", id: "example"},
               r.example.map(p => p.trained ? h("span", {class: "trained"}, p.text) : p.text));
  const prepMsg = h("div", {class: "msg"});
  const prep = op => async () => {
    const options = op === "split" ? {val: 0.2} : {};
    try {
      const res = await post(`/api/datasets/${encodeURIComponent(name)}/prepare`, {op, options});
      setMsg(prepMsg, `${op}: wrote ${res.outputs.join(", ")} (${JSON.stringify(res.counts)})`, true);
      loadDatasets();
    } catch (err) { setMsg(prepMsg, err.message); }
  };
  box.replaceChildren(...[
    h("h2", {}, name),
    h("div", {class: "kv", id: "dataset-stats"},
      h("b", {}, "format"), h("span", {id: "ds-format"}, r.format),
      h("b", {}, "records"), h("span", {id: "ds-records"}, `${r.records} (${r.n_invalid} invalid)`),
      h("b", {}, "turns"), h("span", {}, Object.entries(r.roles).map(([k, v]) => `${k} ${v}`).join(", ")),
      h("b", {}, "exact duplicates"), h("span", {}, r.duplicates),
      r.tokens ? [h("b", {}, "tokens/sample"), h("span", {}, `min ${r.tokens.min}, median ${r.tokens.median}, max ${r.tokens.max}`),
                  h("b", {}, "trained tokens"), h("span", {}, `${r.tokens.trained} of ${r.tokens.total}`),
                  h("b", {}, `over ${r.max_length} tokens`), h("span", {}, r.truncated)] : []),
    r.invalid.length ? h("pre", {class: "code errors"}, r.invalid.map(i => `${i.where || ""}: ${i.error}`).join("\n")) : null,
    columnMapper(name, r),
    h("h3", {}, "Token lengths (tiny-llama tokenizer)"), hist,
    h("h3", {}, "Example (trained tokens highlighted)"), ex,
    h("h3", {}, "Prepare"),
    h("button", {class: "secondary", onclick: prep("clean")}, "clean"), " ",
    h("button", {class: "secondary", onclick: prep("dedup")}, "dedup"), " ",
    h("button", {class: "secondary", onclick: prep("split")}, "split 80/20"), " ",
    h("button", {class: "secondary", onclick: async () => {
      if (!confirm(`delete ${name}?`)) return;
      await api(`/api/datasets/${encodeURIComponent(name)}`, {method: "DELETE"});
      box.replaceChildren(); loadDatasets(); }}, "delete"),
    prepMsg].filter(x => x !== null));
  barChart(hist, r.histogram, {title: "samples per token length", xlabel: "tokens"});
}

// One row per column of the file: which standard field it is (data.columns maps standard name -> column).
function columnMapper(name, r) {
  const byColumn = Object.fromEntries(Object.entries(r.mapping).map(([std, col]) => [col, std]));
  const rows = r.columns.map((col, i) => h("tr", {},
    h("td", {}, h("code", {}, col)), h("td", {}, "→"),
    h("td", {}, h("select", {class: "map-field", id: "map-" + i, "data-column": col},
      h("option", {value: ""}, "(keep as is)"),
      r.standard_fields.map(f => h("option", {value: f, selected: byColumn[col] === f}, f))))));
  const msg = h("div", {class: "msg", id: "map-msg"});
  const mapping = () => {
    const out = {};
    document.querySelectorAll("select.map-field").forEach(s => { if (s.value) out[s.value] = s.dataset.column; });
    return out;
  };
  const saved = r.saved_columns ? JSON.stringify(r.saved_columns) : "none";
  return h("details", {class: "section", id: "column-map", open: r.format === "unrecognized" || Object.keys(r.mapping).length > 0},
    h("summary", {}, "Columns → standard fields (data.columns)"),
    h("p", {class: "hint"}, `Name the field each column holds, then re-inspect; saved mapping: ${saved}. `
      + "A saved mapping fills data.columns when a job trains on this file."),
    h("table", {class: "list mapper"}, h("tbody", {}, rows)),
    h("button", {class: "secondary", id: "map-apply", type: "button", onclick: () => inspectDataset(name, mapping())}, "re-inspect with this mapping"), " ",
    h("button", {id: "map-save", type: "button", onclick: async () => {
      try {
        const res = await api(`/api/datasets/${encodeURIComponent(name)}/columns`, {method: "PUT",
          headers: {"content-type": "application/json"}, body: JSON.stringify({columns: mapping()})});
        await inspectDataset(name);
        setMsg($("#map-msg"), Object.keys(res.columns).length ? `saved: ${JSON.stringify(res.columns)}` : "mapping removed", true);
      } catch (err) { setMsg(msg, err.message); }
    }}, "save mapping"),
    msg);
}

function columnsOf(path) {
  const d = state.datasets.find(x => x.path === path);
  return d && d.columns ? JSON.stringify(d.columns) : "";
}

function useDataset(path) {
  location.hash = "#new";
  const input = document.getElementById("f-data.train");
  if (input) {
    input.value = path;
    document.getElementById("f-data.columns").value = columnsOf(path);
    syncGuided();
    scheduleValidate();
  }
}

// ---------------------------------------------------------------- new job form (generated from the schema)
const MAIN = ["model", "data", "method", "stage", "train"];

function fieldId(f) { return "f-" + f.key + (f.method ? "@" + f.method : ""); }

function fieldInput(f) {
  const id = fieldId(f);
  if (f.kind === "bool") return h("input", {type: "checkbox", id, "data-key": f.key, checked: f.default});
  if (f.kind === "choice")
    return h("select", {id, "data-key": f.key}, f.choices.map(c => h("option", {value: c, selected: c === f.default}, c)));
  const input = h("input", {id, "data-key": f.key, value: f.default, placeholder: f.default === "" ? "null" : "",
                            list: {"model.name": "models-list", "data.train": "datasets-list", "data.eval": "datasets-list"}[f.key] || null});
  return input;
}

async function buildForm() {
  const schema = await api("/api/schema");
  state.fields = schema.fields.filter(f => f.key !== "output_dir");
  const sections = {};
  for (const f of state.fields) (sections[f.section] = sections[f.section] || []).push(f);
  const root = $("#form-fields");
  root.replaceChildren(h("datalist", {id: "models-list"}), h("datalist", {id: "datasets-list"}));
  for (const [name, fields] of Object.entries(sections)) {
    const det = h("details", {class: "section", id: "sec-" + name}, h("summary", {}, name));
    for (const f of fields) {
      det.append(h("label", {class: "field", id: "row-" + fieldId(f), "data-method": f.method || "",
                             "data-search": `${f.key} ${f.help}`.toLowerCase()},
        h("span", {class: "key", title: f.type}, f.key + (f.required ? " *" : "")), fieldInput(f),
        h("span", {class: "help"}, `${f.help} (${f.type}${f.default !== "" ? ", default " + f.default : ""})`),
        h("span", {class: "ferr"})));
    }
    root.append(det);
  }
  document.getElementById("f-method.name").addEventListener("change", showMethodFields);
  document.getElementById("f-data.train").addEventListener("change", e => {
    const cols = columnsOf(e.target.value);
    if (cols) document.getElementById("f-data.columns").value = cols;
  });
  root.addEventListener("input", () => { syncGuided(); scheduleValidate(); });
  root.addEventListener("change", () => { syncGuided(); scheduleValidate(); });
  $("#job-name").addEventListener("input", scheduleValidate);
  showMethodFields();
}

function showMethodFields() {
  const m = document.getElementById("f-method.name").value;
  document.querySelectorAll("label.field[data-method]").forEach(el => {
    el.style.display = !el.dataset.method || el.dataset.method === m ? "" : "none";
  });
}

async function refreshFormLists() {
  if (!state.fields.length) await buildForm();
  const [models, datasets] = await Promise.all([api("/api/models?facts=false"), api("/api/datasets")]);
  $("#models-list").replaceChildren(...models.map(m => h("option", {value: m.name}, m.kind)));
  state.datasets = datasets;
  $("#datasets-list").replaceChildren(...datasets.map(d => h("option", {value: d.path})));
  fillGuidedLists(models, datasets);
  scheduleValidate();
  api("/api/models").then(withFacts => fillGuidedLists(withFacts, state.datasets));  // sizes, params, context
}

function formValues() {
  const method = document.getElementById("f-method.name").value;
  const values = {};
  for (const f of state.fields) {
    if (f.method && f.method !== method) continue;
    const el = document.getElementById(fieldId(f));
    const v = f.kind === "bool" ? el.checked : el.value;
    if (f.key === "method.name" || v !== f.default) values[f.key] = v;
  }
  return values;
}

function setFormFromConfig(config, name) {
  const flat = {};
  const walk = (obj, prefix) => {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v) && !["data.columns"].includes(key) &&
          !(key === "data.train")) walk(v, key);
      else flat[key] = v;
    }
  };
  walk(config, "");
  const method = (config.method && config.method.name) || "lora";
  for (const f of state.fields) {
    if (f.method && f.method !== method) continue;
    const el = document.getElementById(fieldId(f));
    const v = flat[f.key];
    if (f.kind === "bool") el.checked = v === undefined ? f.default : !!v;
    else if (v === undefined || v === null) el.value = f.kind === "choice" ? f.default : (v === null ? "null" : f.default);
    else el.value = typeof v === "object" ? JSON.stringify(v) : String(v);
  }
  $("#job-name").value = name;
  showMethodFields();
  syncGuided();
  scheduleValidate();
}

let validateTimer = null;
function scheduleValidate() { clearTimeout(validateTimer); validateTimer = setTimeout(validateForm, 250); }

function showProblems(err) {
  document.querySelectorAll("label.field").forEach(l => { l.classList.remove("bad"); const e = l.querySelector(".ferr"); if (e) e.textContent = ""; });
  document.querySelectorAll("[aria-invalid]").forEach(el => el.removeAttribute("aria-invalid"));
  $("#form-problems").textContent = "";
  if (!err) return;
  const fields = (err.body && err.body.fields) || {"": [err.message]};
  const method = document.getElementById("f-method.name").value;
  for (const [key, lines] of Object.entries(fields)) {
    const f = state.fields.find(x => x.key === key && (!x.method || x.method === method));
    const row = f && document.getElementById("row-" + fieldId(f));
    const shown = markGuided(key, lines);  // the guided control of that key, when the flow shows one
    if (row) {
      row.classList.add("bad"); row.querySelector(".ferr").textContent = lines.join("\n");
      row.querySelector("input, select")?.setAttribute("aria-invalid", "true");
      if (!shown) { row.closest("details").open = true; $("#advanced").open = true; }
    }
    if (!row && !shown) $("#form-problems").textContent += lines.join("\n") + "\n";
  }
}

let validateSeq = 0, estimateSeq = 0;  // under load answers can arrive out of order: only the newest is shown
async function validateForm() {
  const seq = ++validateSeq;
  try {
    const r = await post("/api/config/validate", {name: $("#job-name").value, values: formValues()});
    if (seq !== validateSeq) return true;
    showProblems(null);
    $("#yaml-preview").textContent = r.yaml;
    $("#cli-preview").textContent = `# save the YAML above as ${$("#job-name").value}.yaml in the data dir, then:\n${r.cli}`;
    setMsg($("#form-status"), "configuration is valid", true);
    showEstimate();
    return true;
  } catch (err) {
    if (seq !== validateSeq) return false;
    showProblems(err);
    setMsg($("#form-status"), "fix the marked fields first");
    $("#yaml-preview").textContent = "(fix the problems first)";
    $("#cli-preview").textContent = (err.body && err.body.error) || err.message;
    $("#estimate-preview").textContent = "";
    return false;
  }
}

async function showEstimate() {
  $("#estimate-preview").textContent = "estimating...";
  const seq = ++estimateSeq;
  try {
    const mem = $("#estimate-memory").value;
    const r = await post("/api/estimate", {name: $("#job-name").value, values: formValues(),
                                           device: $("#estimate-device").value, memory_gib: mem ? +mem : null});
    if (seq !== estimateSeq) return;
    $("#estimate-preview").textContent = r.text;
    showFit(r.fit);
  } catch (err) {
    if (seq !== estimateSeq) return;
    $("#estimate-preview").textContent = (err.body && err.body.error) || err.message;
    $("#estimate-fit").replaceChildren();
  }
}
$("#estimate-device").addEventListener("change", showEstimate);
$("#estimate-memory").addEventListener("change", showEstimate);

$("#validate-btn").addEventListener("click", validateForm);
$("#job-form").addEventListener("submit", async e => {
  e.preventDefault();
  setMsg($("#form-status"), "queueing...", true);
  try {
    const job = await post("/api/jobs", {name: $("#job-name").value, values: formValues()});
    state.jobId = job.id;
    setMsg($("#form-status"), `queued as job #${job.id}`, true);
    location.hash = "#jobs";
  } catch (err) { showProblems(err); setMsg($("#form-status"), err.message); }
});

// ---------------------------------------------------------------- jobs
async function loadJobs() {
  const jobs = await api("/api/jobs");
  $("#job-table tbody").replaceChildren(...jobs.map(j => h("tr", {class: j.id === state.jobId ? "sel" : "",
      "data-id": j.id, onclick: () => { state.jobId = j.id; loadJobs(); }},
    h("td", {}, j.id), h("td", {}, h("button", {type: "button", class: "link",
      onclick: e => { e.stopPropagation(); state.jobId = j.id; loadJobs(); }}, j.name)), h("td", {}, j.kind),
    h("td", {}, h("span", {class: "status " + j.status}, j.status)))));
  if (state.jobId === null && jobs.length) state.jobId = jobs[0].id;
  if (state.jobId !== null) showJob(state.jobId);
}

function seriesOf(rows, key, evalOnly) {
  return rows.filter(r => key in r && (evalOnly || !("eval_loss" in r))).map(r => [r.step, r[key]]);
}

async function showJob(id) {
  clearTimeout(state.jobTimer);
  const j = await api(`/api/jobs/${id}`);
  const box = $("#job-detail");
  const actions = [];
  if (["queued", "running"].includes(j.status))
    actions.push(h("button", {id: "cancel-btn", onclick: async () => { await post(`/api/jobs/${id}/cancel`); loadJobs(); }}, "Cancel (save checkpoint)"));
  if (["cancelled", "interrupted", "failed"].includes(j.status))
    actions.push(h("button", {id: "resume-btn", onclick: async () => { await post(`/api/jobs/${id}/resume`); loadJobs(); }}, "Resume"));
  if (j.kind === "train") actions.push(h("button", {class: "secondary", onclick: () => { location.hash = "#new";
    setTimeout(() => setFormFromConfig(j.config, j.name + "-copy"), 50); }}, "Clone and edit"));
  else actions.push(h("button", {class: "secondary", onclick: () => { state.run = j.run; location.hash = "#runs"; }}, "Open the run"));
  if (j.status === "completed" && j.kind === "train")
    actions.push(h("button", {class: "secondary", onclick: () => { state.chatRun = j.run; location.hash = "#playground"; }}, "Chat"));
  const charts = j.kind === "eval" ? (j.eval ? evalTable([j.eval], "job-eval-table") : h("div", {}))
    : h("div", {class: "charts"}, h("div", {id: "chart-loss"}), h("div", {id: "chart-lr"}), h("div", {id: "chart-tps"}),
        h("div", {id: "chart-mem"}));
  box.replaceChildren(
    h("h2", {}, `#${j.id} ${j.name} `, h("span", {class: "status " + j.status, id: "job-status"}, j.status)),
    h("div", {class: "kv"}, h("b", {}, "run folder"), h("span", {}, j.run_dir),
      h("b", {}, "message"), h("span", {id: "job-message"}, j.message || ""),
      h("b", {}, "checkpoint"), h("span", {}, j.checkpoint || "none"),
      h("b", {}, "CLI"), h("code", {}, j.cli)),
    j.overfitting ? h("div", {class: "banner warn", role: "alert", id: "overfit-banner"},
      h("b", {}, `Possible overfitting at step ${j.overfitting.step}: `), j.overfitting.reason,
      " Consider the best checkpoint, fewer epochs or more data.") : "",
    progressView(j) || "",
    h("p", {}, actions), charts,
    h("h3", {}, "Log"), h("pre", {class: "log", id: "job-log"}, j.log || "(no output yet)"),
    h("details", {}, h("summary", {}, j.kind === "eval" ? "eval job" : "config.yaml"), h("pre", {class: "code"}, j.yaml)));
  const m = j.metrics;
  if (j.kind === "eval") {
    if (["queued", "running", "cancelling"].includes(j.status) && location.hash === "#jobs")
      state.jobTimer = setTimeout(loadJobs, 1500);
    return;
  }
  lineChart($("#chart-loss"), [{name: "train", points: seriesOf(m, "loss")}, {name: "eval", points: seriesOf(m, "eval_loss", true)}], {title: "loss"});
  lineChart($("#chart-lr"), [{name: "lr", points: seriesOf(m, "lr")}], {title: "learning rate"});
  lineChart($("#chart-tps"), [{name: "tokens/s", points: seriesOf(m, "tokens_per_s")}], {title: "throughput (tokens/s)"});
  lineChart($("#chart-mem"), [{name: "GPU GiB", points: seriesOf(m, "mem_gib")}], {title: "GPU memory (peak GiB; CPU runs show RSS above)"});
  const log = $("#job-log"); log.scrollTop = log.scrollHeight;
  if (["queued", "running", "cancelling"].includes(j.status) && location.hash === "#jobs")
    state.jobTimer = setTimeout(loadJobs, 1500);
}

// ---------------------------------------------------------------- runs, eval against base, compare, export
async function loadRuns() {
  const rows = await api("/api/runs");
  $("#run-table tbody").replaceChildren(...rows.map(r => h("tr", {"data-name": r.name, class: r.name === state.run ? "sel" : "",
      onclick: e => { if (!e.target.closest("input, a, button")) showRun(r.name); }},
    h("td", {}, h("input", {type: "checkbox", class: "cmp", value: r.name, "aria-label": `compare ${r.name}`})),
    h("td", {}, h("button", {type: "button", class: "link", onclick: e => { e.stopPropagation(); showRun(r.name); }}, r.name)),
    h("td", {}, r.base_model), h("td", {}, r.method), h("td", {}, fmt(r.steps)), h("td", {}, fmt(r.train_loss)),
    h("td", {}, fmt(r.eval_loss)), h("td", {}, (r.created || "").replace("T", " ").slice(0, 19)),
    h("td", {}, h("a", {href: `/api/runs/${encodeURIComponent(r.name)}/report`, target: "_blank", rel: "noopener",
      "aria-label": `report of ${r.name}`}, "report")))));
  $("#export-run").replaceChildren(...rows.filter(r => r.has_weights).map(r => h("option", {}, r.name)));
  state.runRows = rows;
  if (state.run && rows.some(r => r.name === state.run)) showRun(state.run);
}

const signed = v => v === null || v === undefined ? "" : (v > 0 ? "+" : "") + fmt(v);

// One row per metric of every eval result: this run, the base model and the delta when compared; under the
// table, the caveats the results carry (e.g. short references make loss/perplexity a measure of wording).
function evalTable(evals, id) {
  if (!evals.length) return h("p", {class: "hint", id}, "No evaluations yet.");
  const body = [];
  for (const e of evals) {
    if (e.error) { body.push(h("tr", {}, h("td", {colspan: 6, class: "errors"}, e.error))); continue; }
    e.rows.forEach((r, i) => body.push(h("tr", {"data-dataset": e.dataset, "data-metric": r.metric, title: e.file},
      h("td", {}, i ? "" : e.dataset), h("td", {}, i ? "" : fmt(e.n)), h("td", {}, r.metric),
      h("td", {class: "num"}, fmt(r.run)), h("td", {class: "num"}, fmt(r.other)),
      h("td", {class: "num delta"}, signed(r.delta)))));
  }
  const other = evals.find(e => e.compare)?.compare || "base";
  const seen = new Set(), notes = [];
  for (const e of evals) for (const n of e.notes || []) {
    if (seen.has(e.dataset + "\n" + n)) continue;  // the same caveat on several results of one dataset: once
    seen.add(e.dataset + "\n" + n);
    notes.push(h("p", {class: "hint note", "data-dataset": e.dataset}, h("b", {}, `${e.dataset}: `), "note: ", n));
  }
  return h("div", {id},
    h("table", {class: "list evals"},
      h("thead", {}, h("tr", {}, ["dataset", "n", "metric", "this run", other, "delta"].map(t => h("th", {}, t)))),
      h("tbody", {}, body)),
    notes);
}

async function showRun(name) {
  state.run = name;
  document.querySelectorAll("#run-table tbody tr").forEach(tr => tr.classList.toggle("sel", tr.dataset.name === name));
  const q = encodeURIComponent(name);
  const [evals, datasets, ev, met] = await Promise.all([api(`/api/runs/${q}/evals`), api("/api/datasets"),
    api(`/api/runs/${q}/evidence`), api(`/api/runs/${q}/metrics`)]);
  const row = (state.runRows || []).find(r => r.name === name) || {};
  const box = $("#run-detail");
  const status = h("div", {id: "eval-status"});
  box.replaceChildren(
    h("h2", {}, name),
    h("div", {class: "kv"}, h("b", {}, "base model"), h("span", {}, row.base_model || ""),
      h("b", {}, "method"), h("span", {}, row.method || ""), h("b", {}, "steps"), h("span", {}, fmt(row.steps)),
      h("b", {}, "train / eval loss"), h("span", {}, `${fmt(row.train_loss)} / ${fmt(row.eval_loss)}`)),
    evidenceView(ev),
    h("h3", {}, "Training curves"),
    h("div", {class: "charts"}, h("div", {id: "run-chart-loss"}), h("div", {id: "run-chart-tps"})),
    h("h3", {}, "Use it"),
    h("p", {}, h("button", {type: "button", class: "secondary", id: "run-export-btn", disabled: !row.has_weights,
        onclick: () => { $("#export-run").value = name; $("#export-format").focus(); $("#export-card").scrollIntoView(); }}, "Export..."), " ",
      h("button", {type: "button", class: "secondary", id: "run-chat-btn", disabled: !row.has_weights,
        onclick: () => { state.chatRun = name; location.hash = "#playground"; }}, "Chat with it")),
    h("h3", {}, "Evaluate against the base model"),
    h("p", {class: "hint"}, "Runs tunelab eval RUN --data FILE --compare base as a job: the run and its base model "
      + "(with the run's chat template) answer the same prompts."),
    h("div", {class: "evalform"},
      h("label", {}, "data ", h("select", {id: "eval-data"}, h("option", {value: ""}, "validation data of this run"),
        datasets.map(d => h("option", {value: d.name}, d.name)))),
      h("label", {}, "first N records ", h("input", {id: "eval-limit", type: "number", min: 1, value: 20, size: 5})),
      h("label", {}, "max new tokens ", h("input", {id: "eval-max", type: "number", min: 1, max: 1024, value: 32, size: 5})),
      h("button", {id: "eval-btn", disabled: !row.has_weights, onclick: () => startEval(name)}, "Evaluate against base")),
    status,
    h("h3", {}, "All evaluation results"), evalTable(evals, "eval-table"));
  const m = met.metrics;
  lineChart($("#run-chart-loss"), [{name: "train", points: seriesOf(m, "loss")}, {name: "eval", points: seriesOf(m, "eval_loss", true)}], {title: "loss"});
  lineChart($("#run-chart-tps"), [{name: "tokens/s", points: seriesOf(m, "tokens_per_s")}], {title: "throughput (tokens/s)"});
  if (state.evalJob && state.evalJob.run === name) watchEval(state.evalJob.id, name);
}

async function startEval(name) {
  const limit = $("#eval-limit").value;
  try {
    const job = await post(`/api/runs/${encodeURIComponent(name)}/eval`, {dataset: $("#eval-data").value || null,
      limit: limit ? +limit : null, max_new_tokens: +$("#eval-max").value});
    state.evalJob = {id: job.id, run: name};
    watchEval(job.id, name);
  } catch (err) { setMsg($("#eval-status"), err.message); }
}

async function watchEval(id, name) {
  clearTimeout(state.evalTimer);
  const j = await api(`/api/jobs/${id}`);
  const box = $("#eval-status");
  if (!box || state.run !== name) return;
  const last = (j.log || "").trim().split("\n").filter(l => l.trim()).slice(-1)[0] || "";
  box.className = "";
  const p = j.progress || {};
  box.replaceChildren(h("p", {}, `job #${j.id} `, h("span", {class: "status " + j.status, id: "eval-job-status"}, j.status),
    " ", j.message || ""),
    p.total && j.status !== "completed" ? h("p", {}, h("label", {}, `scoring pass ${Math.min(p.done + 1, p.total)} of ${p.total}: ${p.phase} `,
      h("progress", {max: p.total, value: p.done, id: "eval-progress"}))) : null,
    h("pre", {class: "code"}, j.cli), last && j.status !== "completed" ? h("pre", {class: "log"}, last) : "");
  if (["queued", "running", "cancelling"].includes(j.status) && location.hash === "#runs")
    state.evalTimer = setTimeout(() => watchEval(id, name), 1500);
  else if (j.status === "completed") {
    state.evalJob = null;
    await showRun(name);  // the new result joins the evidence; the finished job stays named above it
    const done = $("#eval-status");
    if (done && state.run === name)
      done.replaceChildren(h("p", {}, `job #${j.id} `, h("span", {class: "status completed", id: "eval-job-status"},
        "completed"), " ", j.message || ""));
  }
}

$("#compare-btn").addEventListener("click", async () => {
  const names = [...document.querySelectorAll("input.cmp:checked")].map(c => c.value).slice(0, 2);
  const box = $("#compare-charts");
  $("#compare-diff").replaceChildren();
  if (!names.length) { box.textContent = "tick one or two runs"; return; }
  const all = await Promise.all(names.map(n => api(`/api/runs/${encodeURIComponent(n)}/metrics`)));
  box.replaceChildren(h("div", {id: "cmp-loss"}), h("div", {id: "cmp-eval"}));
  lineChart($("#cmp-loss"), all.map(r => ({name: r.name, points: seriesOf(r.metrics, "loss")})), {title: "train loss"});
  lineChart($("#cmp-eval"), all.map(r => ({name: r.name, points: seriesOf(r.metrics, "eval_loss", true)})), {title: "eval loss"});
  const tables = $("#compare-evals");
  tables.replaceChildren();
  if (names.length < 2) return;
  const c = await api(`/api/runs/compare?a=${encodeURIComponent(names[0])}&b=${encodeURIComponent(names[1])}`);
  tables.append(h("h3", {}, "Evaluation results side by side"));
  if (!c.datasets.length) tables.append(h("p", {class: "hint"}, "No dataset was evaluated for both runs."));
  const body = c.datasets.flatMap(d => d.rows.map((r, i) => h("tr", {"data-dataset": d.dataset, "data-metric": r.metric},
    h("td", {}, i ? "" : d.dataset), h("td", {}, i ? "" : `${fmt(d.a_n)} / ${fmt(d.b_n)}`), h("td", {}, r.metric),
    h("td", {class: "num"}, fmt(r.a)), h("td", {class: "num"}, fmt(r.b)), h("td", {class: "num delta"}, signed(r.diff)))));
  if (body.length) tables.append(h("table", {class: "list evals", id: "cmp-eval-table"},
    h("thead", {}, h("tr", {}, ["dataset", "n", "metric", c.a, c.b, `${c.b} − ${c.a}`].map(t => h("th", {}, t)))),
    h("tbody", {}, body)));
  const only = [[c.a, c.only_a], [c.b, c.only_b]].filter(([, ds]) => ds.length).map(([n, ds]) => `only ${n}: ${ds.join(", ")}`);
  if (only.length) tables.append(h("p", {class: "hint"}, only.join("; ")));
  const d = await api(`/api/runs/diff?a=${encodeURIComponent(names[0])}&b=${encodeURIComponent(names[1])}`);
  $("#compare-diff").replaceChildren(h("h3", {}, `Config differences (${d.rows.length})`),
    d.rows.length ? h("table", {class: "list evals", id: "cmp-diff-table"},
      h("thead", {}, h("tr", {}, ["key", d.a, d.b].map(t => h("th", {}, t)))),
      h("tbody", {}, d.rows.map(r => h("tr", {"data-key": r.key}, h("td", {}, h("code", {}, r.key)),
        h("td", {class: "del"}, JSON.stringify(r.a)), h("td", {class: "ins"}, JSON.stringify(r.b))))))
    : h("p", {class: "hint"}, "The two configs are the same."),
    h("details", {}, h("summary", {}, "unified diff of the resolved configs"), h("pre", {class: "code", id: "cmp-diff-text"}, d.unified)));
});

$("#export-btn").addEventListener("click", async () => {
  const msg = $("#export-msg");
  setMsg(msg, "exporting...", true);
  try {
    const r = await post(`/api/runs/${encodeURIComponent($("#export-run").value)}/export`,
                         {format: $("#export-format").value, quant: $("#export-quant").value || null});
    setMsg(msg, `${r.label}: written to ${r.path} (in the data dir)`, true);
  } catch (err) { setMsg(msg, err.message); }
});

// ---------------------------------------------------------------- playground
const chat = {history: []};
async function loadRunsForChat() {
  const rows = (await api("/api/runs")).filter(r => r.has_weights);
  $("#chat-run").replaceChildren(...rows.map(r => h("option", {selected: r.name === state.chatRun}, r.name)));
}
$("#chat-base").addEventListener("change", () => { $("#chat-base-box").style.display = $("#chat-base").checked ? "" : "none"; });
$("#chat-reset").addEventListener("click", () => { chat.history = []; $("#chat-run-log").replaceChildren(); $("#chat-base-log").replaceChildren(); });

async function streamInto(target, messages, out) {
  const res = await fetch("/api/chat", {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({run: $("#chat-run").value, target, messages, max_new_tokens: +$("#chat-max").value})});
  if (!res.ok) { out.textContent = (await res.json()).error; return ""; }
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "", text = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += dec.decode(value, {stream: true});
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const line = buf.slice(0, i); buf = buf.slice(i + 2);
      if (!line.startsWith("data: ")) continue;
      const ev = JSON.parse(line.slice(6));
      if (ev.text) { text += ev.text; out.textContent = text.trim() ? text : JSON.stringify(text) + " (only whitespace so far)"; }
      if (ev.error) out.textContent = text + "\n[error] " + ev.error;
      if (ev.done) out.dataset.done = "1";
    }
  }
  return text;
}

$("#chat-form").addEventListener("submit", async e => {
  e.preventDefault();
  const text = $("#chat-input").value.trim();
  if (!text) return;
  $("#chat-input").value = "";
  // a vision run reads an image sent as an OpenAI image_url part (a data URL; the server never fetches URLs)
  const file = $("#chat-image").files[0];
  $("#chat-image").value = "";
  const url = file ? await new Promise((ok, fail) => {
    const r = new FileReader(); r.onload = () => ok(r.result); r.onerror = fail; r.readAsDataURL(file); }) : null;
  const content = url ? [{type: "image_url", image_url: {url}}, {type: "text", text}] : text;
  const messages = [...chat.history, {role: "user", content}];
  const logs = [["run", $("#chat-run-log")]];
  if ($("#chat-base").checked) logs.push(["base", $("#chat-base-log")]);
  const outs = logs.map(([t, log]) => {
    log.append(h("div", {class: "user"}, "you: " + (file ? `[image ${file.name}] ` : "") + text));
    const out = h("div", {class: "assistant"}); log.append(out); return [t, out];
  });
  $("#chat-send").disabled = true;
  try {
    // one after the other: both share the CPU; the tuned answer keeps the history
    const answers = [];
    for (const [t, out] of outs) answers.push(await streamInto(t, messages, out));
    chat.history = [...messages, {role: "assistant", content: answers[0]}];
  } finally { $("#chat-send").disabled = false; }
});

// ---------------------------------------------------------------- start
buildForm().then(() => initGuide()).then(() => showTab(location.hash.slice(1) || "datasets"));
