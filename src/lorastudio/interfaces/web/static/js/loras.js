// LoRA browser: one card per file in models/Lora (GET /v1/loras). Metadata comes from files
// people download, so every value is inserted as text.
import { $, el, clear } from "./dom.js";
import { t, onLanguage } from "./i18n.js";
import { api } from "./api.js";

export async function initLoras(app) {
  const grid = $("#lora-grid");
  const family = $("#lora-family");
  let cards = [];

  async function refresh() {
    cards = await api("GET", "/v1/loras");
    const families = [...new Set(cards.map((c) => c.family).filter(Boolean))].sort();
    const chosen = family.value;
    while (family.options.length > 1) family.remove(1);
    for (const f of families) family.append(el("option", { value: f, text: f }));
    family.value = families.includes(chosen) ? chosen : "";
    render();
  }

  function render() {
    clear(grid);
    const shown = cards.filter((c) => !family.value || c.family === family.value);
    if (!shown.length) grid.append(el("p", { class: "muted", text: t("loras.none") }));
    for (const c of shown) grid.append(card(c));
  }

  function card(c) {
    const tag = `<lora:${c.name}:1>`;
    const insert = () => app.generate.insertPrompt(c.trigger_words.length ? `${tag}, ${c.trigger_words[0]}` : tag);
    const details = el("table", { class: "kv" });
    for (const [key, value] of Object.entries(c.training)) {
      details.append(el("tr", {}, el("th", { text: key }),
        el("td", { text: typeof value === "string" ? value : JSON.stringify(value) })));
    }
    return el("article", { class: "card", dataset: { name: c.name } },
      el("button", { type: "button", class: "thumb", title: t("loras.insert"), onclick: insert },
        c.preview_url ? el("img", { src: c.preview_url, alt: c.alias, loading: "lazy" })
          : el("span", { class: "no-thumb", text: t("loras.no_preview") })),
      el("h3", { class: "name", text: c.alias }),
      el("p", { class: "meta" },
        el("span", { text: `${t("loras.family_label")}: ${c.family ?? "?"}` }), " · ",
        el("span", { text: `${t("loras.rank")}: ${c.rank ?? "?"}` })),
      el("p", { class: "triggers" }, `${t("loras.triggers")}: `,
        ...c.trigger_words.map((w) => el("code", { class: "trigger", text: w }))),
      el("div", { class: "row" }, el("button", { type: "button", class: "primary", text: t("loras.insert"), onclick: insert })),
      el("details", {}, el("summary", { text: t("loras.details") }), details));
  }

  family.addEventListener("change", render);
  $("#lora-refresh").addEventListener("click", async () => {
    await api("POST", "/sdapi/v1/refresh-loras");
    await refresh();
  });
  onLanguage(render);
  await refresh();
  return { refresh };
}
