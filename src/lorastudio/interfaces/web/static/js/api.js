// Calls to the server's public API. Same-origin fetches carry the browser's Basic auth.
import { t } from "./i18n.js";
import { $$ } from "./dom.js";

export class ApiError extends Error {
  constructor(status, body) {
    super(ApiError.text(status, body));
    this.status = status;
    this.body = body;
    this.fields = ApiError.fieldsOf(body);
  }

  static text(status, body) {
    const detail = body && body.detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("\n");
    }
    if (typeof detail === "string") return detail;
    if (body && body.message) return body.message;
    return `HTTP ${status}`;
  }

  // The field names a 422 points at: the last name-like parts of each `loc`.
  static fieldsOf(body) {
    const out = [];
    const detail = body && body.detail;
    if (!Array.isArray(detail)) return out;
    for (const d of detail) {
      const loc = (d.loc || []).filter((p) => typeof p === "string" && p !== "body" && p !== "query");
      if (loc.length) out.push(loc.join("."), loc[loc.length - 1], loc[0]);
    }
    return out;
  }
}

export async function api(method, path, body, { raw = false } = {}) {
  const init = { method, headers: {} };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (raw) return response;
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text };
    }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// Show a server error under a form and outline the fields it names.
export function showError(form, box, error) {
  for (const node of $$(".invalid", form)) node.classList.remove("invalid");
  // A server message is not a catalog text: a language switch must not replace it (see setText).
  delete box.dataset.i18n;
  delete box.dataset.i18nVars;
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.hidden = false;
  box.textContent = error instanceof ApiError ? error.message : `${t("error.network")}: ${error.message || error}`;
  const fields = error instanceof ApiError ? error.fields : [];
  let first = null;
  for (const name of fields) {
    for (const node of $$(`[name="${CSS.escape(name)}"]`, form)) {
      node.classList.add("invalid");
      node.setAttribute("aria-invalid", "true");
      first = first || node;
    }
  }
  if (first) {
    const details = first.closest("details");
    if (details) details.open = true;
    first.focus();
  }
}
