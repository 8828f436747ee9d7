// UI text from keyed catalogs (en.json, ja.json). The language is the one chosen last
// (remembered in localStorage), else the browser's first language we have, else English.
import { $$ } from "./dom.js";

export const LANGUAGES = ["en", "ja"];
const STORE_KEY = "lorastudio.lang";
const catalogs = {};
let current = "en";
const listeners = [];

export function initialLanguage() {
  const saved = localStorage.getItem(STORE_KEY);
  if (LANGUAGES.includes(saved)) return saved;
  for (const lang of navigator.languages || [navigator.language || "en"]) {
    const base = String(lang).toLowerCase().split("-")[0];
    if (LANGUAGES.includes(base)) return base;
  }
  return "en";
}

export async function setLanguage(lang, remember = false) {
  if (!catalogs[lang]) {
    const r = await fetch(`/ui/i18n/${lang}.json`);
    catalogs[lang] = await r.json();
  }
  if (!catalogs.en && lang !== "en") {
    const r = await fetch("/ui/i18n/en.json");
    catalogs.en = await r.json();
  }
  current = lang;
  if (remember) localStorage.setItem(STORE_KEY, lang);
  document.documentElement.lang = lang;
  applyTo(document);
  for (const fn of listeners) fn(lang);
}

export const language = () => current;
export const onLanguage = (fn) => listeners.push(fn);

// t("train.steps_of", {step: 3, total: 10}) -> "step 3 / 10"; a missing key shows as ⟦key⟧.
export function t(key, vars = {}) {
  const text = (catalogs[current] || {})[key] ?? (catalogs.en || {})[key];
  if (text === undefined) return `⟦${key}⟧`;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

export function has(key) {
  return key in (catalogs[current] || {}) || key in (catalogs.en || {});
}

// Text that follows the language: the key and its values stay on the node, so a language switch
// (applyTo) renders results and status lines again, not only the static labels.
export function setText(node, key, vars = {}) {
  if (!key) {
    delete node.dataset.i18n;
    delete node.dataset.i18nVars;
    node.textContent = "";
    return;
  }
  node.dataset.i18n = key;
  node.dataset.i18nVars = JSON.stringify(vars);
  node.textContent = t(key, vars);
}

export function applyTo(root) {
  for (const node of $$("[data-i18n]", root)) {
    node.textContent = t(node.dataset.i18n, node.dataset.i18nVars ? JSON.parse(node.dataset.i18nVars) : {});
  }
  for (const node of $$("[data-i18n-placeholder]", root)) node.placeholder = t(node.dataset.i18nPlaceholder);
  for (const node of $$("[data-i18n-title]", root)) node.title = t(node.dataset.i18nTitle);
}
