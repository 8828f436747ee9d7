// PNG info: the parameters inside a PNG (ours, A1111's, Forge's), read by /sdapi/v1/png-info.
import { $, el, clear, fileToBase64 } from "./dom.js";
import { t } from "./i18n.js";
import { api } from "./api.js";

export function initPngInfo(app) {
  const input = $("#png-file");
  const drop = $("#png-drop");
  const send = $("#png-send");
  let parameters = null;

  async function read(file) {
    if (!file) return;
    const b64 = await fileToBase64(file);
    const image = $("#png-image");
    image.src = `data:image/png;base64,${b64}`;
    image.hidden = false;
    const table = $("#png-params");
    clear(table);
    try {
      const info = await api("POST", "/sdapi/v1/png-info", { image: b64 });
      $("#png-info").textContent = info.info || t("png.none");
      parameters = info.info ? info.parameters : null;
      for (const [key, value] of Object.entries(info.parameters || {})) {
        if (["Prompt", "Negative prompt"].includes(key) || value === "" || value === 0) continue;
        table.append(el("tr", {}, el("th", { text: key }), el("td", { text: String(value) })));
      }
    } catch (error) {
      $("#png-info").textContent = error.message;
      parameters = null;
    }
    send.disabled = !parameters;
  }

  input.addEventListener("change", () => read(input.files[0]));
  drop.addEventListener("dragover", (e) => e.preventDefault());
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    read(e.dataTransfer.files[0]);
  });
  send.addEventListener("click", () => parameters && app.generate.fill(parameters));
  return { read };
}
