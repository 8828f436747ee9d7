// Train: dataset upload with the doctor's verdict per file, captions, settings, the queue.
import { $, $$, el, clear } from "./dom.js";
import { t, onLanguage, applyTo, setText } from "./i18n.js";
import { api, showError, ApiError } from "./api.js";
import { buildInput, field, readInput, label } from "./schema_form.js";
import { setBar } from "./generate.js";

const DATASET_KEY = "lorastudio.dataset";
const RUN_KEY = "lorastudio.run";
const PRESET_FIELDS = ["steps", "rank", "lr", "resolution"];
const MAIN_FIELDS = ["trigger", "base", "steps", "epochs", "rank", "lr", "resolution", "batch_size", "optimizer",
  "sample_every", "sample_prompts"];
const UPLOAD_BATCH_BYTES = 24 * 1024 * 1024;
const UPLOAD_BATCH_FILES = 100;

export async function initTrain(app) {
  const form = $("#train-form");
  const errorBox = $("#train-error");
  const grid = $("#dataset-grid");
  let dataset = null; // the last report of GET /v1/datasets/{id}
  let schema = null;
  let watching = null; // { id, source }
  const bases = await api("GET", "/v1/base-models");
  schema = await api("GET", "/v1/training-config/schema");

  // --- settings form ----------------------------------------------------------------------------
  for (const b of bases) form.base.append(el("option", { value: b.title, text: b.title }));
  // The family's preset (from the server, which trains with the same values) is shown as each
  // empty field's placeholder and in one line under the base.
  const familyHint = () => {
    const b = bases.find((x) => x.title === form.base.value);
    const hint = $("#base-family");
    if (b && b.preset) {
      const p = b.preset;
      setText(hint, "train.preset", { family: b.family_title, size: p.resolution[0], rank: p.rank, lr: p.lr,
        steps: p.steps });
    } else if (b && b.family) setText(hint, "train.family", { family: b.family_title, size: b.native_size });
    else setText(hint, "train.family_unknown");
    for (const name of PRESET_FIELDS) {
      const value = b && b.preset ? b.preset[name] : undefined;
      form[name].placeholder = value !== undefined
        ? t("train.preset_value", { value: Array.isArray(value) ? value[0] : value }) : t("train.family_default");
      form[name].dataset.preset = value !== undefined ? String(Array.isArray(value) ? value[0] : value) : "";
    }
  };
  form.base.addEventListener("change", familyHint);
  familyHint();
  onLanguage(familyHint);
  const props = schema.properties || {};
  const optimizer = buildInput("optimizer", props.optimizer || {});
  form.optimizer.replaceWith(optimizer);
  const advanced = $("#advanced-fields");
  function buildAdvanced() {
    clear(advanced);
    for (const [name, prop] of Object.entries(props)) {
      if (!MAIN_FIELDS.includes(name)) advanced.append(field(name, prop));
    }
  }
  buildAdvanced();
  onLanguage(() => {
    // Labels and default placeholders come from the catalogs: rebuild, keeping typed values.
    const values = Object.fromEntries($$("[name]", advanced).map((n) => [n.name, n.value]));
    buildAdvanced();
    for (const n of $$("[name]", advanced)) n.value = values[n.name] ?? "";
    const opt = form.optimizer.value;
    const fresh = buildInput("optimizer", props.optimizer || {});
    form.optimizer.replaceWith(fresh);
    fresh.value = opt;
  });
  for (const name of MAIN_FIELDS) {
    const input = form[name];
    if (input && props[name]?.description) input.closest("label").title = props[name].description;
  }

  function config() {
    const out = {};
    for (const input of $$("[name]", form)) {
      if (!input.dataset.kind) input.dataset.kind = kindOfMain(input);
      const value = readInput(input);
      if (value !== undefined) out[input.name] = value;
    }
    return out;
  }
  function kindOfMain(input) {
    if (input.name === "sample_prompts") return "lines";
    if (input.name === "resolution") return "list";
    if (input.type === "number") return input.name === "lr" ? "number" : "integer";
    return "string";
  }

  // --- dataset --------------------------------------------------------------------------------------
  const query = () => {
    const res = parseInt(form.resolution.value, 10);
    const size = bases.find((x) => x.title === form.base.value)?.native_size || 512;
    return `trigger=${encodeURIComponent(form.trigger.value.trim())}&resolution=${res > 0 ? res : size}`;
  };

  async function ensureDataset() {
    if (dataset) return dataset;
    const created = await api("POST", "/v1/datasets");
    localStorage.setItem(DATASET_KEY, created.dataset_id);
    dataset = { dataset_id: created.dataset_id, images: created.images, files: [], problems: [] };
    return dataset;
  }

  async function upload(files) {
    const list = Array.from(files).filter((f) => !f.name.startsWith("."));
    if (!list.length) return;
    showError(form, errorBox, null);
    $("#dataset-summary").textContent = t("train.uploading", { n: list.length });
    try {
      await ensureDataset();
      let batch = [];
      let bytes = 0;
      const send = async () => {
        if (!batch.length) return;
        const data = new FormData();
        for (const f of batch) data.append("files", f, f.name);
        render(await api("POST", `/v1/datasets/${dataset.dataset_id}/files?${query()}`, data));
        batch = [];
        bytes = 0;
      };
      for (const file of list) {
        if (batch.length && (bytes + file.size > UPLOAD_BATCH_BYTES || batch.length >= UPLOAD_BATCH_FILES)) await send();
        batch.push(file);
        bytes += file.size;
      }
      await send();
    } catch (error) {
      showError(form, errorBox, error);
    }
  }

  async function refresh() {
    if (!dataset) return;
    try {
      render(await api("GET", `/v1/datasets/${dataset.dataset_id}?${query()}`));
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        localStorage.removeItem(DATASET_KEY);
        dataset = null;
        render(null);
      } else showError(form, errorBox, error);
    }
  }

  function render(report) {
    dataset = report;
    clear(grid);
    clear($("#dataset-general"));
    if (!report) {
      $("#dataset-summary").textContent = "";
      return;
    }
    $("#dataset-summary").textContent = t("train.dataset_summary", {
      files: report.files.length, usable: report.usable, errors: report.errors, warnings: report.warnings });
    for (const p of report.problems) {
      $("#dataset-general").append(el("li", { class: p.severity }, el("strong", { text: doctorLabel(p.code) }), " ",
        el("small", { text: p.message })));
    }
    for (const f of report.files) grid.append(card(f));
  }

  function doctorLabel(code) {
    const key = `doctor.${code}`;
    const text = t(key);
    return text.startsWith("⟦") ? code : text;
  }

  function card(f) {
    const proposed = suggested && f.name in suggested;
    const textarea = el("textarea", { class: proposed ? "caption suggested" : "caption", rows: "2",
      name: `caption:${f.name}`, placeholder: t("train.caption_none") });
    textarea.value = proposed ? suggested[f.name] : f.caption ?? "";
    // A suggested caption is kept on the page until "Save captions": edits go into the suggestion.
    textarea.addEventListener("input", () => {
      if (suggested && f.name in suggested) suggested[f.name] = textarea.value;
    });
    textarea.addEventListener("change", async () => {
      if (suggested && f.name in suggested) return;
      try {
        await api("PUT", `/v1/datasets/${dataset.dataset_id}/captions/${encodePath(f.name)}`, { caption: textarea.value });
        await refresh();
      } catch (error) {
        showError(form, errorBox, error);
      }
    });
    const problems = el("ul", { class: "problems" });
    for (const p of f.problems) {
      problems.append(el("li", { class: p.severity, dataset: { code: p.code } },
        el("strong", { text: doctorLabel(p.code) }), " ", el("small", { text: p.message })));
    }
    if (f.transparent) {
      problems.append(el("li", { class: "info", dataset: { code: "transparent" } },
        el("strong", { text: t("doctor.transparent") })));
    }
    const verdict = el("span", { class: `verdict ${f.verdict}`, text: t(`verdict.${f.verdict}`) });
    const thumb = f.url ? el("img", { src: f.url, alt: f.name, loading: "lazy" })
      : el("div", { class: "no-thumb", text: t("train.no_thumbnail") });
    const remove = el("button", { type: "button", class: "remove", title: t("train.remove"), text: "×",
      onclick: async () => {
        await api("DELETE", `/v1/datasets/${dataset.dataset_id}/files/${encodePath(f.name)}`).catch((e) => showError(form, errorBox, e));
        await refresh();
      } });
    return el("figure", { class: `file ${f.verdict}`, dataset: { name: f.name } }, remove, thumb,
      el("figcaption", {}, el("span", { class: "name", text: f.name }), verdict), problems, textarea,
      proposed ? el("p", { class: "suggested-label", text: t("train.caption.suggested") }) : null,
      trainedAs(f.trained_caption));
  }

  function trainedAs(text) {
    const line = el("p", { class: "trained-as" });
    if (!text) return line;
    line.append(el("span", { class: "muted", text: `${t("train.trained_as")} ` }));
    const trigger = form.trigger.value.trim();
    const at = trigger ? text.indexOf(trigger) : -1;
    if (at < 0) line.append(text);
    else line.append(text.slice(0, at), el("mark", { text: trigger }), text.slice(at + trigger.length));
    return line;
  }

  const drop = $("#drop-zone");
  for (const input of [$("#dataset-files"), $("#dataset-folder")]) {
    input.addEventListener("change", async () => {
      await upload(input.files);
      input.value = "";
    });
  }
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(e.dataTransfer.files);
  });
  // A new, empty dataset; the old folder stays on the server (a queued run may still use it).
  $("#dataset-new").addEventListener("click", () => {
    localStorage.removeItem(DATASET_KEY);
    suggested = null;
    $("#caption-review").hidden = true;
    render(null);
  });
  let timer = null;
  for (const name of ["trigger", "resolution", "base"]) {
    form[name].addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(refresh, 400);
    });
  }

  // --- automatic captions: a dry run on the server, reviewed and edited here, then written ---------------
  let suggested = null; // picture name -> caption proposed by "Caption all", not written yet
  const captionStatus = $("#caption-status");
  const models = await api("GET", "/v1/interrogators").catch(() => []);
  for (const m of models) {
    $(m.kind === "tagger" ? "#caption-tagger" : "#caption-captioner").append(el("option", { value: m.name, text: m.name }));
  }
  if (models.length) $(models[0].kind === "tagger" ? "#caption-tagger" : "#caption-captioner").value = models[0].name;
  else setText(captionStatus, "train.caption.no_models");

  $("#caption-all").addEventListener("click", async () => {
    showError(form, errorBox, null);
    clear($("#caption-failures"));
    if (!dataset || !dataset.files || !dataset.files.length) {
      setText(captionStatus, "train.caption.no_dataset");
      return;
    }
    const tagger = $("#caption-tagger").value || null;
    const captioner = $("#caption-captioner").value || null;
    if (!tagger && !captioner) {
      setText(captionStatus, "train.caption.no_models");
      return;
    }
    setText(captionStatus, "train.caption.running", { n: dataset.files.length });
    $("#caption-all").disabled = true;
    try {
      const result = await api("POST", "/v1/datasets/caption", { images: dataset.images, tagger, captioner,
        trigger: form.trigger.value.trim() || null, overwrite: $("#caption-overwrite").checked, dry_run: true });
      suggested = {};
      for (const e of result.entries) if (e.action !== "keep") suggested[e.image] = e.caption;
      for (const failure of result.failures) $("#caption-failures").append(el("li", { class: "error", text: failure }));
      const n = Object.keys(suggested).length;
      if (!n) suggested = null;
      setText(captionStatus, n ? "train.caption.review" : "train.caption.nothing", { n, kept: result.kept.length });
      $("#caption-review").hidden = !n;
      render(dataset);
    } catch (error) {
      setText(captionStatus, null);
      showError(form, errorBox, error);
    } finally {
      $("#caption-all").disabled = false;
    }
  });
  $("#caption-save").addEventListener("click", async () => {
    if (!suggested || !dataset) return;
    try {
      const written = await api("PUT", "/v1/datasets/captions", { images: dataset.images, captions: suggested });
      suggested = null;
      $("#caption-review").hidden = true;
      setText(captionStatus, "train.caption.saved", { n: written.written.length });
      await refresh();
    } catch (error) {
      showError(form, errorBox, error);
    }
  });
  $("#caption-discard").addEventListener("click", () => {
    suggested = null;
    $("#caption-review").hidden = true;
    setText(captionStatus, null);
    if (dataset) render(dataset);
  });

  // Bulk caption edits: each caption goes through the same PUT as a single edit.
  for (const button of $$("[data-bulk]")) {
    button.addEventListener("click", async () => {
      if (!dataset) return;
      const text = $("#bulk-text").value;
      const find = $("#bulk-find").value;
      const replace = $("#bulk-replace").value;
      const op = button.dataset.bulk;
      try {
        for (const f of dataset.files) {
          const old = f.caption ?? "";
          const next = op === "set" ? text : op === "prefix" ? `${text}${old}` : op === "suffix" ? `${old}${text}`
            : find ? old.split(find).join(replace) : old;
          if (next !== old) {
            await api("PUT", `/v1/datasets/${dataset.dataset_id}/captions/${encodePath(f.name)}`, { caption: next });
          }
        }
      } catch (error) {
        showError(form, errorBox, error);
      }
      await refresh();
    });
  }

  // --- estimate and start -----------------------------------------------------------------------------
  $("#train-estimate").addEventListener("click", estimate);
  async function estimate() {
    const c = config();
    const time = $("#estimate .time");
    const memory = $("#estimate .memory");
    showError(form, errorBox, null);
    try {
      const e = await api("POST", "/v1/training-estimate", { base: c.base, steps: c.steps, batch_size: c.batch_size || 1,
        resolution: Array.isArray(c.resolution) ? c.resolution[0] : undefined, rank: c.rank,
        optimizer: c.optimizer || undefined, gradient_checkpointing: c.gradient_checkpointing,
        mixed_precision: c.mixed_precision });
      const size = formatBytes(e.model_bytes);
      if (e.seconds != null) setText(time, "train.estimate.time", { time: formatDuration(e.seconds), size });
      else if (e.seconds_per_step != null) {
        setText(time, "train.estimate.per_step", { time: formatDuration(e.seconds_per_step), size });
      } else setText(time, "train.estimate.none", { size });
      const m = e.memory;
      if (m) {
        setText(memory, m.device === "cpu" ? "train.estimate.memory_cpu" : "train.estimate.memory_gpu", {
          total: formatBytes(m.total_bytes), weights: formatBytes(m.weights_bytes),
          states: formatBytes(m.lora_bytes + m.optimizer_bytes), activations: formatBytes(m.activations_bytes) });
      } else setText(memory, "train.estimate.memory_unknown");
    } catch (error) {
      showError(form, errorBox, error);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(form, errorBox, null);
    const body = config();
    if (dataset) body.images = dataset.images;
    try {
      const job = await api("POST", "/v1/trainings", body);
      localStorage.setItem(RUN_KEY, job.request_id);
      await refreshQueue();
      watch(job.request_id);
    } catch (error) {
      showError(form, errorBox, error);
      if (error instanceof ApiError && error.fields.includes("images")) drop.classList.add("invalid");
    }
  });

  // --- queue and the watched run -------------------------------------------------------------------------
  const queue = $("#queue");
  async function refreshQueue() {
    const jobs = (await api("GET", "/v1/trainings")).slice(-10).reverse();
    clear(queue);
    for (const j of jobs) {
      let text = t(`status.${j.status}`);
      if (j.status === "IN_QUEUE") {
        const s = await api("GET", `/v1/trainings/${j.request_id}/status`);
        text = t("train.queue_position", { n: (s.queue_position ?? 0) + 1 });
      }
      queue.append(el("li", { class: `job ${j.status}`, dataset: { id: j.request_id } },
        el("button", { type: "button", class: "link", onclick: () => watch(j.request_id) },
          el("span", { class: "when", text: new Date(j.created_at).toLocaleString() }), " ", el("span", { text }))));
    }
    return jobs;
  }

  const run = $("#run");
  const chart = $("#loss-chart");
  let lastSample = null;
  let metrics = [];

  function watch(id) {
    if (watching) watching.source.close();
    localStorage.setItem(RUN_KEY, id);
    run.hidden = false;
    clear($("#run-log"));
    clear($("#run-samples"));
    $("#run-try").hidden = true;
    $("#run-sweep").hidden = true;
    $("#run-publish").hidden = true;
    $("#run-cancel").hidden = false;
    lastSample = null;
    metrics = [];
    drawChart();
    $("#run-title").textContent = id;
    const source = new EventSource(`/v1/trainings/${id}/events`);
    watching = { id, source, status: null };
    source.addEventListener("log", (e) => {
      const line = JSON.parse(e.data);
      $("#run-log").append(`${line.message}\n`);
    });
    source.addEventListener("status", (e) => onStatus(id, JSON.parse(e.data)));
    source.addEventListener("done", async (e) => {
      source.close();
      await onStatus(id, JSON.parse(e.data));
      refreshQueue();
    });
  }

  async function onStatus(id, s) {
    if (!watching || watching.id !== id) return;
    watching.status = s;
    run.dataset.status = s.status;
    const p = s.progress || {};
    $("#run-title").textContent = p.project ? `${p.project} / ${p.version || ""}` : id;
    const step = p.step || 0;
    const total = p.total_steps || 0;
    setBar($("#run-progress"), total ? step / total : s.status === "COMPLETED" ? 1 : 0,
      total ? t("train.step_of", { step, total }) : "");
    const parts = [t(`status.${s.status}`)];
    if (s.status === "IN_QUEUE") parts.push(t("train.queue_position", { n: (s.queue_position ?? 0) + 1 }));
    if (p.eta_s != null && s.status === "IN_PROGRESS") parts.push(t("train.eta", { time: formatDuration(p.eta_s) }));
    if (p.loss != null) parts.push(t("train.loss", { loss: Number(p.loss).toFixed(4) }));
    if (s.reason) parts.push(s.reason);
    $("#run-status").textContent = parts.join(" · ");
    $("#run-cancel").hidden = ["COMPLETED", "FAILED", "CANCELLED"].includes(s.status);
    if (step) {
      metrics = await api("GET", `/v1/trainings/${id}/metrics`).catch(() => metrics);
      drawChart();
    }
    if (p.last_sample !== lastSample || s.status === "COMPLETED") {
      lastSample = p.last_sample;
      const samples = await api("GET", `/v1/trainings/${id}/samples`).catch(() => []);
      const box = $("#run-samples");
      clear(box);
      for (const sample of samples.slice(-8)) {
        box.append(el("figure", {}, el("img", { src: sample.url, alt: sample.name }),
          el("figcaption", { text: sample.step != null ? t("train.sample_step", { step: sample.step }) : sample.name })));
      }
    }
    if (s.status === "COMPLETED") await finished(id);
  }

  async function finished(id) {
    try {
      const card = await api("POST", "/v1/loras/install", { request_id: id });
      const trigger = card.trigger_words[0] || "";
      const tryButton = $("#run-try");
      tryButton.hidden = false;
      tryButton.onclick = () => app.generate.insertPrompt(`<lora:${card.name}:1>${trigger ? `, ${trigger}` : ""}`);
      const sweepButton = $("#run-sweep");
      sweepButton.hidden = false;
      sweepButton.onclick = () => app.generate.sweep(card.name, trigger);
      const publishButton = $("#run-publish");
      publishButton.hidden = !card.version_dir;
      publishButton.onclick = () => {
        app.showTab("loras");
        app.loras.openPublish(card);
      };
      await app.loras?.refresh();
    } catch (error) {
      $("#run-status").textContent += ` · ${error.message}`;
    }
  }

  $("#run-cancel").addEventListener("click", async () => {
    if (!watching) return;
    try {
      await api("PUT", `/v1/trainings/${watching.id}/cancel`);
    } catch (error) {
      $("#run-status").textContent = error.message;
    }
  });

  function drawChart() {
    const ctx = chart.getContext("2d");
    ctx.clearRect(0, 0, chart.width, chart.height);
    const points = metrics.filter((m) => m.loss != null);
    ctx.strokeStyle = "#8894a8";
    ctx.strokeRect(0.5, 0.5, chart.width - 1, chart.height - 1);
    if (points.length < 1) return;
    const maxStep = Math.max(...points.map((m) => m.step), 1);
    const losses = points.map((m) => m.loss);
    const lo = Math.min(...losses);
    const hi = Math.max(...losses);
    const y = (v) => chart.height - 8 - ((v - lo) / (hi - lo || 1)) * (chart.height - 16);
    const x = (s) => 8 + (s / maxStep) * (chart.width - 16);
    ctx.strokeStyle = "#3b6fd8";
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((m, i) => (i ? ctx.lineTo(x(m.step), y(m.loss)) : ctx.moveTo(x(m.step), y(m.loss))));
    ctx.stroke();
    for (const m of points) ctx.fillRect(x(m.step) - 2, y(m.loss) - 2, 4, 4);
    chart.dataset.points = String(points.length);
  }

  // --- after a reload: the dataset and the run come back from the server ---------------------------------
  const savedDataset = localStorage.getItem(DATASET_KEY);
  if (savedDataset) {
    dataset = { dataset_id: savedDataset };
    await refresh();
  }
  const jobs = await refreshQueue().catch(() => []);
  const savedRun = localStorage.getItem(RUN_KEY);
  const active = jobs.find((j) => j.status === "IN_PROGRESS" || j.status === "IN_QUEUE");
  if (savedRun && jobs.some((j) => j.request_id === savedRun)) watch(savedRun);
  else if (active) watch(active.request_id);
  setInterval(() => {
    if (!document.hidden && !$("#tab-train").hidden) refreshQueue().catch(() => {});
  }, 5000);
  onLanguage(() => {
    if (dataset && dataset.files) render(dataset);
    refreshQueue().catch(() => {});
    if (watching && watching.status) onStatus(watching.id, watching.status);
  });
  applyTo(form);

  return { refresh, watch };
}

function encodePath(name) {
  return name.split("/").map(encodeURIComponent).join("/");
}

export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}` : `${m}:${String(r).padStart(2, "0")}`;
}

function formatBytes(n) {
  if (n == null) return "?";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}
