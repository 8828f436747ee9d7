// Generate: A1111's txt2img / img2img / inpaint on /sdapi/v1, with the results' infotext.
import { $, $$, el, clear, fileToBase64, loadImage } from "./dom.js";
import { t, onLanguage, setText } from "./i18n.js";
import { api, showError } from "./api.js";

export async function initGenerate(app) {
  const form = $("#gen-form");
  const errorBox = $("#gen-error");
  const gallery = $("#gen-gallery");
  const progressBox = $("#gen-progress");
  const preview = $("#gen-preview");
  const initCanvas = $("#init-canvas");
  const maskCanvas = $("#mask-canvas");
  let mode = "txt2img";
  let lastSeed = null;
  let nativeSizes = {};
  let initLoaded = false;
  let maskDrawn = false;

  const [samplers, schedulers, models, vaes, options, bases, latentModes, upscalers, cnModels, cnModules] =
    await Promise.all([
      api("GET", "/sdapi/v1/samplers"), api("GET", "/sdapi/v1/schedulers"), api("GET", "/sdapi/v1/sd-models"),
      api("GET", "/sdapi/v1/sd-vae"), api("GET", "/sdapi/v1/options"), api("GET", "/v1/base-models"),
      api("GET", "/sdapi/v1/latent-upscale-modes"), api("GET", "/sdapi/v1/upscalers"),
      api("GET", "/controlnet/model_list"), api("GET", "/controlnet/module_list"),
    ]);
  for (const s of samplers) form.sampler_name.append(el("option", { value: s.name, text: s.name }));
  form.sampler_name.value = samplers.some((s) => s.name === "DPM++ 2M") ? "DPM++ 2M" : samplers[0]?.name;
  for (const s of schedulers) form.scheduler.append(el("option", { value: s.label, text: s.label }));
  for (const m of models) form.sd_model_checkpoint.append(el("option", { value: m.title, text: m.title }));
  nativeSizes = Object.fromEntries(bases.map((b) => [b.title, b.native_size]));
  if (options.sd_model_checkpoint) form.sd_model_checkpoint.value = options.sd_model_checkpoint;
  const autoVae = el("option", { value: "Automatic", dataset: { i18n: "gen.vae.automatic" } });
  form.sd_vae.append(autoVae, ...vaes.map((v) => el("option", { value: v.model_name, text: v.model_name })));
  autoVae.textContent = t("gen.vae.automatic");
  onLanguage(() => (autoVae.textContent = t("gen.vae.automatic")));

  function nativeSize() {
    const size = nativeSizes[form.sd_model_checkpoint.value];
    if (size) form.width.value = form.height.value = size;
  }
  nativeSize();
  form.sd_model_checkpoint.addEventListener("change", nativeSize);

  // --- hires fix and ControlNet: A1111's lists, the extension's unit ----------------------------
  // The hires upscaler list is A1111's: the latent modes, then the upscalers (None first).
  for (const name of [...latentModes.map((m) => m.name), ...upscalers.map((u) => u.name)]) {
    form.hr_upscaler.append(el("option", { value: name, text: name }));
  }
  form.hr_upscaler.value = "Latent";
  for (const name of cnModules.module_list) form.cn_module.append(el("option", { value: name, text: name }));
  // "None" first, as in the extension: the model of the reference units, which need none.
  for (const title of ["None", ...cnModels.model_list]) form.cn_model.append(el("option", { value: title, text: title }));
  form.cn_model.value = cnModels.model_list[0] || "None";
  $("#cn-no-model").hidden = cnModels.model_list.length > 0;
  form.cn_module.addEventListener("change", () => {
    if (form.cn_module.value.startsWith("reference")) form.cn_model.value = "None";
    else if (form.cn_model.value === "None" && cnModels.model_list.length) form.cn_model.value = cnModels.model_list[0];
  });
  let cnImage = null; // base64 of the unit's own picture; null: img2img's init picture
  form.cn_file.addEventListener("change", async () => {
    const file = form.cn_file.files[0];
    cnImage = file ? await fileToBase64(file) : null;
    $("#cn-image").src = cnImage ? `data:image/png;base64,${cnImage}` : "";
    $("#cn-image").hidden = !cnImage;
    $("#cn-map").hidden = true;
  });
  $("#cn-detect").addEventListener("click", async () => {
    showError(form, errorBox, null);
    if (!cnImage) {
      errorBox.hidden = false;
      setText(errorBox, "gen.cn.need_image");
      return;
    }
    try {
      const out = await api("POST", "/controlnet/detect", {
        controlnet_module: form.cn_module.value, controlnet_input_images: [cnImage],
        controlnet_processor_res: Math.min(Number(form.width.value), Number(form.height.value)),
      });
      $("#cn-map").src = `data:image/png;base64,${out.images[0]}`;
      $("#cn-map").hidden = false;
    } catch (error) {
      showError(form, errorBox, error);
    }
  });

  function controlUnit(num) {
    return {
      enabled: true, module: form.cn_module.value, model: form.cn_model.value, image: cnImage,
      weight: num("cn_weight"), guidance_start: num("cn_guidance_start"), guidance_end: num("cn_guidance_end"),
      control_mode: form.cn_control_mode.value, resize_mode: form.cn_resize_mode.value,
      pixel_perfect: form.cn_pixel_perfect.checked,
    };
  }

  // --- modes -----------------------------------------------------------------------------------
  function setMode(next) {
    mode = next;
    for (const b of $$("[data-mode]")) b.setAttribute("aria-selected", String(b.dataset.mode === mode));
    $("#gen-init").hidden = mode === "txt2img";
    $("#gen-hires").hidden = mode !== "txt2img"; // A1111's hires fix is a txt2img option
    maskCanvas.hidden = $("#mask-tools").hidden = mode !== "inpaint";
    form.dataset.mode = mode;
  }
  for (const b of $$("[data-mode]")) b.addEventListener("click", () => setMode(b.dataset.mode));
  setMode("txt2img");

  async function setInitImage(src) {
    const img = await loadImage(src);
    for (const c of [initCanvas, maskCanvas]) {
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
    }
    initCanvas.getContext("2d").drawImage(img, 0, 0);
    maskCanvas.getContext("2d").clearRect(0, 0, maskCanvas.width, maskCanvas.height);
    maskDrawn = false;
    initLoaded = true;
    form.width.value = Math.max(8, Math.round(img.naturalWidth / 8) * 8);
    form.height.value = Math.max(8, Math.round(img.naturalHeight / 8) * 8);
  }
  form.init_file.addEventListener("change", async () => {
    const file = form.init_file.files[0];
    if (!file) return;
    const url = URL.createObjectURL(file);
    try {
      await setInitImage(url);
    } finally {
      URL.revokeObjectURL(url);
    }
  });

  // The mask brush: white strokes on a transparent canvas over the picture (shown half-opaque).
  let drawing = false;
  function brushAt(event) {
    const rect = maskCanvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * maskCanvas.width;
    const y = ((event.clientY - rect.top) / rect.height) * maskCanvas.height;
    const ctx = maskCanvas.getContext("2d");
    const radius = (Number(form.brush.value) / 2) * (maskCanvas.width / Math.max(1, rect.width));
    ctx.fillStyle = "#ffffff";
    ctx.beginPath();
    ctx.arc(x, y, Math.max(1, radius), 0, Math.PI * 2);
    ctx.fill();
    maskDrawn = true;
  }
  maskCanvas.addEventListener("pointerdown", (e) => {
    drawing = true;
    maskCanvas.setPointerCapture(e.pointerId);
    brushAt(e);
  });
  maskCanvas.addEventListener("pointermove", (e) => drawing && brushAt(e));
  maskCanvas.addEventListener("pointerup", () => (drawing = false));
  $("#mask-clear").addEventListener("click", () => {
    maskCanvas.getContext("2d").clearRect(0, 0, maskCanvas.width, maskCanvas.height);
    maskDrawn = false;
  });

  function maskBase64() {
    // A1111's mask: white = repaint, black = keep.
    const out = document.createElement("canvas");
    out.width = maskCanvas.width;
    out.height = maskCanvas.height;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#000000";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.drawImage(maskCanvas, 0, 0);
    return out.toDataURL("image/png").split(",", 2)[1];
  }

  // --- seed ------------------------------------------------------------------------------------
  $("#seed-random").addEventListener("click", () => (form.seed.value = -1));
  $("#seed-reuse").addEventListener("click", () => {
    if (lastSeed !== null) form.seed.value = lastSeed;
  });

  // --- run -------------------------------------------------------------------------------------
  function request() {
    const num = (name) => (form[name].value === "" ? undefined : Number(form[name].value));
    const body = {
      prompt: form.prompt.value, negative_prompt: form.negative_prompt.value,
      sampler_name: form.sampler_name.value, scheduler: form.scheduler.value, steps: num("steps"),
      cfg_scale: num("cfg_scale"), seed: num("seed"), width: num("width"), height: num("height"),
      n_iter: num("n_iter"), batch_size: num("batch_size"), send_images: true, save_images: true,
      override_settings: { sd_model_checkpoint: form.sd_model_checkpoint.value, sd_vae: form.sd_vae.value,
        CLIP_stop_at_last_layers: num("clip_skip") },
    };
    if (form.fast.checked) body.override_settings.lorastudio_fast = true;
    if (mode === "txt2img" && form.enable_hr.checked) {
      Object.assign(body, { enable_hr: true, hr_upscaler: form.hr_upscaler.value, hr_scale: num("hr_scale"),
        hr_second_pass_steps: num("hr_second_pass_steps"), denoising_strength: num("hr_denoising_strength") });
    }
    if (mode !== "txt2img") {
      body.init_images = [initCanvas.toDataURL("image/png").split(",", 2)[1]];
      body.denoising_strength = num("denoising_strength");
      if (mode === "inpaint") {
        body.mask = maskBase64();
        body.inpaint_full_res = form.inpaint_area.value === "masked"; // A1111's "Inpaint area"
      }
    }
    if (form.cn_enabled.checked) body.alwayson_scripts = { controlnet: { args: [controlUnit(num)] } };
    return body;
  }

  let polling = null;
  function startProgress() {
    progressBox.hidden = false;
    setBar(progressBox, 0, t("gen.starting"));
    polling = setInterval(async () => {
      try {
        const p = await api("GET", "/sdapi/v1/progress");
        const steps = p.state?.sampling_steps || 0;
        setBar(progressBox, p.progress, steps ? t("gen.step_of", { step: p.state.sampling_step, total: steps }) : "");
        if (p.current_image) {
          preview.src = `data:image/png;base64,${p.current_image}`;
          preview.hidden = false;
        }
      } catch {
        /* the next poll tries again */
      }
    }, 500);
  }
  function stopProgress() {
    clearInterval(polling);
    progressBox.hidden = true;
    preview.hidden = true;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(form, errorBox, null);
    if (mode !== "txt2img" && !initLoaded) {
      errorBox.hidden = false;
      setText(errorBox, "gen.need_init");
      return;
    }
    if (mode === "inpaint" && !maskDrawn) {
      errorBox.hidden = false;
      setText(errorBox, "gen.mask_empty");
      return;
    }
    const run = $("#gen-run");
    run.disabled = true;
    $("#gen-interrupt").disabled = false;
    startProgress();
    try {
      const path = mode === "txt2img" ? "/sdapi/v1/txt2img" : "/sdapi/v1/img2img";
      const result = await api("POST", path, request());
      showResults(result);
    } catch (error) {
      showError(form, errorBox, error);
    } finally {
      stopProgress();
      run.disabled = false;
      $("#gen-interrupt").disabled = true;
    }
  });
  $("#gen-interrupt").addEventListener("click", () => api("POST", "/sdapi/v1/interrupt").catch(() => {}));

  function showResults(result) {
    const info = JSON.parse(result.info || "{}");
    lastSeed = info.seed ?? null;
    clear(gallery);
    (result.images || []).forEach((b64, i) => {
      const src = `data:image/png;base64,${b64}`;
      const infotext = (info.infotexts || [])[i] || "";
      const seed = (info.all_seeds || [])[Math.max(0, i - (info.index_of_first_image || 0))] ?? info.seed;
      const figure = el("figure", { class: "result" },
        el("img", { src, alt: t("gen.result_alt", { n: i + 1 }) }),
        el("pre", { class: "infotext", text: infotext }),
        el("div", { class: "row" },
          el("a", { class: "button", href: src, download: `${String(seed).padStart(5, "0")}-${i}.png`,
            text: t("gen.download"), dataset: { i18n: "gen.download" } }),
          // data-i18n: a language switch renders the results' buttons again (applyTo).
          el("button", { type: "button", text: t("gen.send_img2img"), dataset: { i18n: "gen.send_img2img" },
            onclick: () => sendTo("img2img", src) }),
          el("button", { type: "button", text: t("gen.send_inpaint"), dataset: { i18n: "gen.send_inpaint" },
            onclick: () => sendTo("inpaint", src) }),
          el("button", { type: "button", text: t("gen.reuse"), dataset: { i18n: "gen.reuse" },
            onclick: () => reuse(b64) })));
      gallery.append(figure);
    });
  }

  async function sendTo(target, src) {
    setMode(target);
    await setInitImage(src);
    app.showTab("generate");
  }

  async function reuse(b64) {
    const info = await api("POST", "/sdapi/v1/png-info", { image: b64 });
    fill(info.parameters || {});
  }

  // Fill the form from A1111 infotext fields (PNG info's `parameters`).
  function fill(p) {
    const set = (name, value) => {
      if (value !== undefined && value !== null && value !== "") form[name].value = value;
    };
    set("prompt", p.Prompt ?? "");
    form.negative_prompt.value = p["Negative prompt"] ?? "";
    set("steps", p.Steps);
    if (p.Sampler && [...form.sampler_name.options].some((o) => o.value === p.Sampler)) form.sampler_name.value = p.Sampler;
    if (p["Schedule type"] && [...form.scheduler.options].some((o) => o.value === p["Schedule type"])) {
      form.scheduler.value = p["Schedule type"];
    }
    set("cfg_scale", p["CFG scale"]);
    set("seed", p.Seed);
    set("width", p["Size-1"]);
    set("height", p["Size-2"]);
    set("clip_skip", p["Clip skip"]);
    set("denoising_strength", p["Denoising strength"]);
    if (p.Model) {
      const match = [...form.sd_model_checkpoint.options].find((o) => o.value === p.Model
        || o.value.split(" [")[0].replace(/\.[^.]+$/, "") === String(p.Model).replace(/\.[^.]+$/, "")
        || (p["Model hash"] && o.value.includes(`[${p["Model hash"]}`)));
      if (match) form.sd_model_checkpoint.value = match.value;
    }
    if (p.VAE && [...form.sd_vae.options].some((o) => o.value === p.VAE)) form.sd_vae.value = p.VAE;
    setMode("txt2img");
    app.showTab("generate");
  }

  function insertPrompt(text) {
    const current = form.prompt.value.trim();
    form.prompt.value = current ? `${current}, ${text}` : text;
    setMode("txt2img");
    app.showTab("generate");
  }

  // A weight sweep of one LoRA: the same seed and settings at <lora:name:w> for each weight.
  async function sweep(name, trigger, weights = [0, 0.25, 0.5, 0.75, 1, 1.25]) {
    setMode("txt2img");
    app.showTab("generate");
    showError(form, errorBox, null);
    const seed = Number(form.seed.value) >= 0 ? Number(form.seed.value) : Math.floor(Math.random() * 2 ** 31);
    const base = form.prompt.value.replace(/,?\s*<lora:[^>]*>/g, "").trim();
    const row = el("div", { class: "sweep-row" });
    const caption = el("figcaption");
    setText(caption, "gen.sweep_title", { name, seed });
    const figure = el("figure", { class: "result sweep" }, caption, row);
    clear(gallery);
    gallery.append(figure);
    const run = $("#gen-run");
    run.disabled = true;
    try {
      for (const w of weights) {
        const body = request();
        body.prompt = [base, `<lora:${name}:${w}>`, trigger].filter(Boolean).join(", ");
        body.seed = seed;
        body.n_iter = body.batch_size = 1;
        const result = await api("POST", "/sdapi/v1/txt2img", body);
        row.append(el("figure", { class: "cell", dataset: { weight: String(w) } },
          el("img", { src: `data:image/png;base64,${result.images[0]}`, alt: `${name} ${w}` }),
          el("figcaption", { text: String(w) })));
      }
    } catch (error) {
      showError(form, errorBox, error);
    } finally {
      run.disabled = false;
    }
  }

  return { fill, insertPrompt, setMode, sendTo, sweep };
}

export function setBar(box, fraction, label) {
  box.querySelector(".bar").style.width = `${Math.round(Math.min(1, Math.max(0, fraction || 0)) * 100)}%`;
  box.querySelector(".label").textContent = label || "";
}
