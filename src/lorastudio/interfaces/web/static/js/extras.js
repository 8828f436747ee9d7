// Extras: A1111's single-picture upscaling on /sdapi/v1/extra-single-image (upscaler 1, upscaler 2
// blended by its visibility, resize by a factor or to a size). A transparent picture stays transparent.
import { $, el, clear, fileToBase64 } from "./dom.js";
import { t } from "./i18n.js";
import { api, showError } from "./api.js";

export async function initExtras(app) {
  const form = $("#extras-form");
  const run = $("#extras-run");
  const box = $("#extras-error");
  const result = $("#extras-result");
  const source = $("#extras-source");
  let picture = null; // base64 of the chosen file
  let stem = "picture";

  const upscalers = await api("GET", "/sdapi/v1/upscalers");
  for (const select of [form.upscaler_1, form.upscaler_2]) {
    for (const u of upscalers) select.append(el("option", { value: u.name, text: u.name }));
  }
  // The first model file when there is one (what a user with models/ESRGAN came for), else Lanczos.
  const firstModel = upscalers.find((u) => u.model_path);
  form.upscaler_1.value = firstModel ? firstModel.name : "Lanczos";
  form.upscaler_2.value = "None";

  function showMode() {
    const toSize = form.querySelector("[name=resize_mode]:checked").value === "1";
    $("#extras-by").hidden = toSize;
    $("#extras-to").hidden = !toSize;
  }
  for (const radio of form.querySelectorAll("[name=resize_mode]")) radio.addEventListener("change", showMode);

  async function choose(file) {
    if (!file) return;
    picture = await fileToBase64(file);
    stem = file.name.replace(/\.[^.]+$/, "") || "picture";
    source.src = `data:${file.type || "image/png"};base64,${picture}`;
    source.hidden = false;
    await source.decode().catch(() => {});
    $("#extras-source-size").textContent = `${source.naturalWidth} × ${source.naturalHeight}`;
    run.disabled = false;
    showError(form, box, null);
  }
  form.extras_file.addEventListener("change", () => choose(form.extras_file.files[0]));
  const drop = $("#extras-drop");
  drop.addEventListener("dragover", (e) => e.preventDefault());
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    choose(e.dataTransfer.files[0]);
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!picture) return;
    const num = (name) => Number(form[name].value);
    const body = {
      image: picture,
      resize_mode: Number(form.querySelector("[name=resize_mode]:checked").value),
      upscaling_resize: num("upscaling_resize"),
      upscaling_resize_w: num("upscaling_resize_w"),
      upscaling_resize_h: num("upscaling_resize_h"),
      upscaling_crop: form.upscaling_crop.checked,
      upscaler_1: form.upscaler_1.value,
      upscaler_2: form.upscaler_2.value,
      extras_upscaler_2_visibility: num("extras_upscaler_2_visibility"),
    };
    run.disabled = true;
    showError(form, box, null);
    try {
      show(await api("POST", "/sdapi/v1/extra-single-image", body));
    } catch (error) {
      showError(form, box, error);
    } finally {
      run.disabled = false;
    }
  });

  function show(response) {
    clear(result);
    const src = `data:image/png;base64,${response.image}`;
    const img = el("img", { src, class: "preview checker", alt: t("extras.result_alt") });
    const size = el("p", { class: "hint" });
    img.addEventListener("load", () => { size.textContent = `${img.naturalWidth} × ${img.naturalHeight}`; });
    result.append(el("figure", { class: "result" }, img, size,
      el("pre", { class: "infotext", text: response.html_info || "" }),
      el("div", { class: "row" },
        el("a", { class: "button", href: src, download: `${stem}-upscaled.png`, text: t("gen.download"),
          dataset: { i18n: "gen.download" } }),
        el("button", { type: "button", text: t("gen.send_img2img"), dataset: { i18n: "gen.send_img2img" },
          onclick: () => app.generate.sendTo("img2img", src) }))));
  }

  return { choose };
}
