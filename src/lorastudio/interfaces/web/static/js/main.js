// The page: tabs, language, and the five panels wired to one another.
import { $, $$ } from "./dom.js";
import { initialLanguage, setLanguage } from "./i18n.js";
import { initGenerate } from "./generate.js";
import { initTrain } from "./train.js";
import { initLoras } from "./loras.js";
import { initPngInfo } from "./pnginfo.js";
import { initExtras } from "./extras.js";

const TAB_KEY = "lorastudio.tab";

function showTab(name) {
  for (const panel of $$(".tab-panel")) panel.hidden = panel.id !== `tab-${name}`;
  for (const button of $$("[data-tab]")) button.setAttribute("aria-selected", String(button.dataset.tab === name));
  localStorage.setItem(TAB_KEY, name);
  document.dispatchEvent(new CustomEvent("tab", { detail: name }));
}

async function main() {
  const lang = initialLanguage();
  const select = $("#lang-select");
  select.value = lang;
  await setLanguage(lang);
  select.addEventListener("change", () => setLanguage(select.value, true));
  for (const button of $$("[data-tab]")) button.addEventListener("click", () => showTab(button.dataset.tab));

  const app = { showTab };
  app.generate = await initGenerate(app);
  app.train = await initTrain(app);
  app.loras = await initLoras(app);
  app.extras = await initExtras(app);
  app.pnginfo = initPngInfo(app);
  const hashTab = location.hash.replace("#", "");
  showTab(["generate", "train", "loras", "extras", "pnginfo"].includes(hashTab) ? hashTab
    : localStorage.getItem(TAB_KEY) || "generate");
  document.body.dataset.ready = "1";
}

main().catch((error) => {
  // Shown on the page, and logged: a page that cannot start must not look merely empty.
  const banner = $("#banner");
  banner.hidden = false;
  banner.textContent = `${error.message || error}`;
  console.error(error);
});
