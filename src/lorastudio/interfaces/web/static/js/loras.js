// LoRA browser: one card per file in models/Lora (GET /v1/loras). Metadata comes from files
// people download, so every value is inserted as text.
import { $, el, clear } from "./dom.js";
import { t, onLanguage, setText } from "./i18n.js";
import { api, showError } from "./api.js";

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
      el("div", { class: "row" }, el("button", { type: "button", class: "primary", text: t("loras.insert"), onclick: insert }),
        c.version_dir ? el("button", { type: "button", class: "publish-open", text: t("loras.publish"),
          onclick: () => openPublish(c) }) : null),
      el("details", {}, el("summary", { text: t("loras.details") }), details));
  }

  // --- Publish: a LoRA trained on this server, to the Hugging Face Hub (POST /v1/publish) -----------------
  // The token is read from its field when the form is sent and the field is emptied right after:
  // it is never kept in a variable, localStorage or the URL.
  const pub = $("#publish-form");
  const pubError = $("#publish-error");
  let publishing = null; // the card being published
  function openPublish(c) {
    publishing = c;
    pub.hidden = false;
    setText($("#publish-lora"), "publish.lora", { name: c.name });
    setText($("#publish-status"), null);
    clear($("#publish-link"));
    showError(pub, pubError, null);
    pub.repo.focus();
  }
  $("#publish-close").addEventListener("click", () => {
    pub.hidden = true;
    pub.token.value = "";
    publishing = null;
  });
  pub.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!publishing) return;
    showError(pub, pubError, null);
    clear($("#publish-link"));
    const repo = pub.repo.value.trim();
    if (!repo.includes("/")) {
      setText($("#publish-status"), "publish.no_repo");
      pub.repo.classList.add("invalid");
      return;
    }
    const body = { version_dir: publishing.version_dir, repo, private: pub.private.checked,
      description: pub.description.value };
    if (pub.token.value) body.token = pub.token.value;
    pub.token.value = "";
    setText($("#publish-status"), "publish.running", { name: publishing.name, repo });
    $("#publish-submit").disabled = true;
    try {
      const result = await api("POST", "/v1/publish", body);
      setText($("#publish-status"), "publish.done", { n: result.files.length, repo: result.repo });
      if (/^https?:\/\//.test(result.commit_url || "")) {
        $("#publish-link").append(el("a", { href: result.commit_url, text: result.commit_url, target: "_blank",
          rel: "noopener noreferrer" }));
      }
    } catch (error) {
      setText($("#publish-status"), null);
      showError(pub, pubError, error);
    } finally {
      delete body.token;
      $("#publish-submit").disabled = false;
    }
  });

  family.addEventListener("change", render);
  $("#lora-refresh").addEventListener("click", async () => {
    await api("POST", "/sdapi/v1/refresh-loras");
    await refresh();
  });
  onLanguage(render);
  await refresh();
  return { refresh, openPublish };
}
