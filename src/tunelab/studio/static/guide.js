// The guided New-job flow over the schema form (app.js): every guided control reads and writes one schema field
// (#f-<key>), so the Advanced form, the YAML, validation and the job all see the same values.
// Also the job progress view, the fit warning and a run's evidence. User text is only ever set via textContent.
"use strict";

const guide = {tasks: [], methods: {}, keys: [], presets: [], models: [], touched: new Set(), rec: {}};
const KEY_TITLES = {"train.lr": "learning rate", "train.epochs": "epochs", "train.max_steps": "max steps (overrides epochs)",
                    "method.r": "LoRA rank", "data.max_length": "max length (tokens)", "train.batch_size": "batch size"};

function fieldFor(key) {
  const method = document.getElementById("f-method.name").value;
  return state.fields.find(f => f.key === key && (!f.method || f.method === method));
}
function advEl(key) { const f = fieldFor(key); return f ? document.getElementById(fieldId(f)) : null; }
function getAdv(key) { const el = advEl(key); return el ? (el.type === "checkbox" ? el.checked : el.value) : undefined; }
function setAdv(key, value) {
  const el = advEl(key);
  if (!el) return;
  if (el.type === "checkbox") el.checked = !!value;
  else el.value = value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
  if (key === "method.name") showMethodFields();
}
const humanCount = n => n === null || n === undefined ? "?" : n >= 1e9 ? (n / 1e9).toFixed(1) + "B"
  : n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n >= 1e3 ? (n / 1e3).toFixed(0) + "K" : String(n);
const humanBytes = b => b === null || b === undefined ? "" : b >= 2 ** 30 ? (b / 2 ** 30).toFixed(1) + " GiB" : (b / 2 ** 20).toFixed(0) + " MiB";

async function initGuide() {
  const [g, presets] = await Promise.all([api("/api/guide"), api("/api/presets")]);
  Object.assign(guide, {tasks: g.tasks, methods: g.methods, keys: g.key_settings, presets});
  $("#preset-buttons").replaceChildren(...presets.map(p => h("button", {type: "button", class: "secondary preset",
    "data-preset": p.id, title: p.file, onclick: () => applyPreset(p)}, p.title)));
  $("#task-choices").replaceChildren(...g.tasks.map(t => h("label", {class: "choice", title: t.help},
    h("input", {type: "radio", name: "g-task", value: t.id, onchange: () => chooseTask(t.id)}),
    h("span", {}, h("b", {}, t.title), h("small", {}, t.help)))));
  $("#method-choices").replaceChildren(...Object.entries(g.methods).map(([name, m]) => h("label", {class: "choice"},
    h("input", {type: "radio", name: "g-method", value: name, onchange: () => guidedSet("method.name", name)}),
    h("span", {}, h("b", {}, name), h("small", {}, `memory ${m.memory} · speed ${m.speed} · quality ${m.quality}`),
      h("small", {}, m.line)))));
  $("#key-settings").replaceChildren(...g.key_settings.map(key => {
    const f = fieldFor(key) || state.fields.find(x => x.key === key);
    const id = "k-" + key;
    return h("label", {class: "field", id: "row-" + id, "data-key": key},
      h("span", {class: "key"}, KEY_TITLES[key] || key),
      h("input", {id, "data-key": key, oninput: e => { guide.touched.add(key); guidedSet(key, e.target.value); }}),
      h("span", {class: "help"}, h("code", {}, key), " ", f ? f.help : "", h("span", {class: "rec", id: "rec-" + key})),
      h("span", {class: "ferr"}));
  }));
  $("#g-model").addEventListener("change", e => { guidedSet("model.name", e.target.value); recommend(true); inspectChosen(); });
  $("#g-stage").addEventListener("change", e => { guidedSet("stage", e.target.value); recommend(true); });
  $("#g-data").addEventListener("change", e => chooseDataset(e.target.value));
  $("#recommend-btn").addEventListener("click", () => recommend(true, true));
  $("#adv-search").addEventListener("input", filterAdvanced);
  syncGuided();
}

function guidedSet(key, value) {
  setAdv(key, value);
  syncGuided();
  if (key === "method.name") recommend(true);
  scheduleValidate();
}

function chooseTask(id) {
  const t = guide.tasks.find(x => x.id === id);
  if (t && !t.stages.includes(getAdv("stage"))) guidedSet("stage", t.stages[0]);
  syncGuided();
  recommend(true);
}

function fillGuidedLists(models, datasets) {
  guide.models = models;
  const cur = getAdv("model.name");
  const opts = models.map(m => h("option", {value: m.name}, "params" in m
    ? `${m.name} (${humanCount(m.params)} params${m.tiny ? ", test model" : ""})` : `${m.name} (${m.kind})`));
  if (cur && !models.some(m => m.name === cur)) opts.push(h("option", {value: cur}, cur));
  $("#g-model").replaceChildren(...opts);
  const dcur = getAdv("data.train");
  const dopts = [h("option", {value: ""}, datasets.length ? "(choose a dataset)" : "(the library is empty: upload one first)"),
    ...datasets.map(d => h("option", {value: d.path}, `${d.name}${d.columns ? " (mapped columns)" : ""}`))];
  if (dcur && !datasets.some(d => d.path === dcur)) dopts.push(h("option", {value: dcur}, dcur));
  $("#g-data").replaceChildren(...dopts);
  syncGuided();
  recommend(!guide.started);  // the first time: fill the key settings with values for this model and device
  guide.started = true;
}

// Guided controls show what the schema form holds (after a preset, a clone, or an edit under Advanced).
function syncGuided() {
  if (!guide.tasks.length) return;
  const model = getAdv("model.name");
  if (model && $("#g-model").value !== model) {
    if (![...$("#g-model").options].some(o => o.value === model)) $("#g-model").append(h("option", {value: model}, model));
    $("#g-model").value = model;
  }
  const m = guide.models.find(x => x.name === model);
  $("#model-facts").textContent = m && !("params" in m) ? "reading the model's config..." : m ? [`${humanCount(m.params)} parameters`, m.context ? `context ${m.context.toLocaleString()} tokens` : "",
    m.layers ? `${m.layers} layers` : "", m.disk_bytes ? `${humanBytes(m.disk_bytes)} on disk` : "", m.kind].filter(Boolean).join(" · ")
    : "a model under a model root or a run folder";
  const stage = getAdv("stage");
  const task = guide.tasks.find(t => t.stages.includes(stage)) || guide.tasks[0];
  document.querySelectorAll("input[name=g-task]").forEach(r => { r.checked = r.value === task.id; });
  $("#g-stage").replaceChildren(...task.stages.map(s => h("option", {value: s, selected: s === stage}, s)));
  $("#stage-help").textContent = task.help;
  const method = getAdv("method.name");
  document.querySelectorAll("input[name=g-method]").forEach(r => { r.checked = r.value === method; });
  const data = getAdv("data.train") || "";
  if ([...$("#g-data").options].some(o => o.value === data)) $("#g-data").value = data;
  for (const key of guide.keys) {
    const row = document.getElementById("row-k-" + key);
    const has = !!fieldFor(key);
    row.hidden = !has;
    if (has && document.activeElement?.id !== "k-" + key) document.getElementById("k-" + key).value = getAdv(key);
  }
}

function markGuided(key, lines) {
  const id = {"model.name": "g-model", "stage": "g-stage", "data.train": "g-data"}[key] || (guide.keys.includes(key) ? "k-" + key : null);
  const row = id && document.getElementById("row-" + id);
  if (!row || row.hidden) return false;
  row.classList.add("bad");
  row.querySelector(".ferr").textContent = lines.join("\n");
  row.querySelector("input, select")?.setAttribute("aria-invalid", "true");
  return true;
}

function applyPreset(p) {
  // keep the chosen dataset (presets name the repository's example data); everything else from the preset
  const data = getAdv("data.train"), columns = getAdv("data.columns");
  setFormFromConfig(p.config, $("#job-name").value === "my-run" || guide.presets.some(x => x.id === $("#job-name").value)
    ? p.id : $("#job-name").value);
  if (data) { setAdv("data.train", data); setAdv("data.columns", columns); }
  guide.touched = new Set(Object.entries(p.config).flatMap(([s, v]) => v && typeof v === "object" ? Object.keys(v).map(k => `${s}.${k}`) : [s]));
  document.querySelectorAll("button.preset").forEach(b => b.setAttribute("aria-pressed", String(b.dataset.preset === p.id)));
  $("#preset-about").textContent = `${p.about} (CLI: ${p.file})`;
  syncGuided();
  recommend(false);
  inspectChosen();
  scheduleValidate();
}

// Recommended values for the model, method, stage and device: shown next to each key setting; `apply` writes
// them into every key the user has not typed into (or into all of them when `force`).
async function recommend(apply, force) {
  if (!guide.tasks.length) return;
  const params = new URLSearchParams({model: getAdv("model.name") || "", method: getAdv("method.name") || "lora",
    stage: getAdv("stage") || "sft", device: getAdv("train.device") || "auto"});
  if (guide.p95) params.set("p95_tokens", guide.p95);
  const seq = guide.recSeq = (guide.recSeq || 0) + 1;  // a slower, older answer must not overwrite a newer one
  let r;
  try { r = await api("/api/recommend?" + params); }
  catch (err) { if (seq === guide.recSeq) $("#recommend-msg").textContent = err.message; return; }
  if (seq !== guide.recSeq) return;
  guide.rec = r.values;
  for (const key of guide.keys) {
    const rec = r.values[key], span = document.getElementById("rec-" + key);
    span.textContent = rec ? ` Recommended: ${rec.value} (${rec.why}).` : "";
    if (rec && (force || (apply && !guide.touched.has(key)))) setAdv(key, rec.value);
  }
  $("#recommend-msg").textContent = force ? `applied the values recommended for ${r.model.name} on ${r.device}` :
    `recommendations for ${r.model.name} on ${r.device} (${r.memory_gib} GiB)`;
  if (apply || force) { syncGuided(); scheduleValidate(); }
}

async function chooseDataset(path) {
  setAdv("data.train", path);
  setAdv("data.columns", columnsOf(path));
  syncGuided();
  scheduleValidate();
  await inspectChosen();
  recommend(true);
}

// The chosen dataset as the model's tokenizer sees it: format, counts, token lengths, and which spans train.
async function inspectChosen() {
  const path = getAdv("data.train");
  const box = $("#data-summary");
  const d = (state.datasets || []).find(x => x.path === path);
  if (!d) { guide.inspectSeq = (guide.inspectSeq || 0) + 1; box.replaceChildren(h("p", {class: "hint"}, path ? `${path} is not a library file` : "No dataset chosen yet.")); guide.p95 = null; return; }
  box.replaceChildren(h("p", {class: "hint"}, `inspecting ${d.name}...`));
  const model = getAdv("model.name") || "tiny-llama";
  const seq = guide.inspectSeq = (guide.inspectSeq || 0) + 1;  // only the newest request may draw
  let r;
  try { r = await api(`/api/datasets/${encodeURIComponent(d.name)}/inspect?model=${encodeURIComponent(model)}&max_length=${encodeURIComponent(getAdv("data.max_length") || 1024)}`); }
  catch (err) { if (seq === guide.inspectSeq) box.replaceChildren(h("div", {class: "msg err"}, err.message)); return; }
  if (seq !== guide.inspectSeq) return;
  guide.p95 = r.tokens ? r.tokens.p95 : null;
  box.dataset.name = d.name;
  const hist = h("div", {id: "g-hist"});
  box.replaceChildren(
    h("div", {class: "kv", id: "g-data-stats"},
      h("b", {}, "format"), h("span", {id: "g-format"}, r.format),
      h("b", {}, "records"), h("span", {id: "g-records"}, `${r.records} (${r.n_invalid} invalid, ${r.duplicates} exact duplicates)`),
      r.tokens ? [h("b", {}, "tokens/sample"), h("span", {}, `min ${r.tokens.min}, median ${r.tokens.median}, 95% ${r.tokens.p95}, max ${r.tokens.max}`),
                  h("b", {}, "trained tokens"), h("span", {}, `${r.tokens.trained} of ${r.tokens.total}`),
                  h("b", {}, `over ${r.max_length} tokens`), h("span", {}, r.truncated)] : []),
    hist,
    h("details", {open: true}, h("summary", {}, "Example as it trains (highlighted spans are the targets)"),
      h("div", {class: "example", id: "g-example"}, r.example.map(p => p.trained ? h("mark", {class: "trained"}, p.text) : p.text))));
  barChart(hist, r.histogram, {title: `samples per token length (${model} tokenizer)`, xlabel: "tokens"});
}

function filterAdvanced() {
  const q = $("#adv-search").value.trim().toLowerCase();
  let n = 0;
  document.querySelectorAll("#form-fields details.section").forEach(det => {
    let any = false;
    det.querySelectorAll("label.field").forEach(l => {
      const hit = !q || l.dataset.search.includes(q);
      l.classList.toggle("filtered", !hit);
      if (hit && l.style.display !== "none") { any = true; n++; }
    });
    det.hidden = !!q && !any;
    det.open = !!q && any;
  });
  $("#adv-count").textContent = q ? `${n} keys match "${q}"` : "";
}

// ---------------------------------------------------------------- estimate: fits or not, with fixes
function showFit(fit) {
  const box = $("#estimate-fit");
  if (!fit) { box.replaceChildren(); return; }
  if (fit.fits) {
    box.replaceChildren(h("p", {class: "banner ok", id: "fit-ok"}, `Fits: needs ~${fit.need_gib.toFixed(2)} GiB of ${fit.budget_gib} GiB.`));
    return;
  }
  box.replaceChildren(h("div", {class: "banner warn", role: "alert", id: "fit-warning"},
    h("b", {}, `Will not fit: needs ~${fit.need_gib.toFixed(2)} GiB, ${fit.budget_gib} GiB available.`),
    h("ul", {}, fit.fixes.map((f, i) => h("li", {}, f.text, " ",
      Object.keys(f.values).length ? h("button", {type: "button", class: "secondary fix", id: "fix-" + i,
        onclick: () => { for (const [k, v] of Object.entries(f.values)) { setAdv(k, v); guide.touched.add(k); }
                         syncGuided(); scheduleValidate(); }}, "apply") : null)))));
}

// ---------------------------------------------------------------- while running
function duration(s) {
  if (s === null || s === undefined) return "?";
  return s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
}

function progressView(j) {
  const p = j.progress;
  if (!p) return null;
  if (j.kind === "eval") {
    return h("div", {id: "job-progress"}, p.total ? h("label", {}, `scoring pass ${Math.min(p.done + 1, p.total)} of ${p.total}: ${p.phase} `,
      h("progress", {max: p.total, value: p.done})) : h("p", {}, p.phase));
  }
  const pct = p.percent === null ? 0 : p.percent;
  return h("div", {id: "job-progress"},
    h("label", {class: "progress"}, h("span", {}, p.step === null ? p.phase : `${p.phase}: step ${p.step} of ${p.total} (${pct}%)`),
      h("progress", {max: 100, value: j.status === "completed" ? 100 : pct, id: "job-progressbar"})),
    h("div", {class: "kv", id: "job-live"},
      h("b", {}, "ETA"), h("span", {id: "job-eta"}, ["running"].includes(j.status) ? duration(p.eta_s) : "-"),
      h("b", {}, "tokens/s"), h("span", {id: "job-tps"}, p.tokens_per_s === null ? "?" : Math.round(p.tokens_per_s).toLocaleString()),
      h("b", {}, "memory"), h("span", {id: "job-mem"}, p.memory_gib === null ? "?" : `${p.memory_gib} GiB (${p.memory_kind})`),
      h("b", {}, "fast paths"), h("span", {id: "job-speed"}, p.speed_on.length ? p.speed_on.join(", ") : "none",
        Object.keys(p.speed_off).length ? h("small", {class: "hint"}, ` — off: ${Object.entries(p.speed_off).map(([k, v]) => `${k} (${v})`).join("; ")}`) : "")));
}

// ---------------------------------------------------------------- a run's evidence
// An empty or whitespace-only answer is shown quoted, so "said nothing" is visible rather than a blank cell.
const shownAnswer = t => t.trim() ? t : `(empty: ${JSON.stringify(t)})`;

function evidenceView(ev) {
  if (!ev.eval) return h("div", {id: "evidence"}, h("h3", {}, "Base vs tuned"),
    h("p", {class: "hint"}, "Not evaluated yet: use Evaluate against the base model below; the result leads this page."));
  return h("div", {id: "evidence"},
    h("h3", {}, `Base vs tuned on ${ev.eval.dataset} (${ev.eval.n} records)`),
    evalTable([ev.eval], "evidence-table"),
    ev.answers.length ? [h("h3", {}, "Answers side by side"),
      h("table", {class: "list answers", id: "answers-table"},
        h("thead", {}, h("tr", {}, ["prompt", "reference", "tuned", ev.eval.compare || "base"].map(t => h("th", {}, t)))),
        h("tbody", {}, ev.answers.map(a => h("tr", {}, h("td", {}, a.prompt), h("td", {}, a.reference),
          h("td", {class: "tuned"}, shownAnswer(a.tuned)), h("td", {}, shownAnswer(a.other))))))] : null);
}
