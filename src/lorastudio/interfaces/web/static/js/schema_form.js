// The Advanced training form, built from TrainingConfig's JSON schema (GET /v1/training-config/schema).
// Only the input kind comes from the schema; the rules are checked by the server alone, whose
// 422 names the field to highlight.
import { el } from "./dom.js";
import { t, has } from "./i18n.js";

function variants(prop) {
  const list = prop.anyOf || [prop];
  return list.filter((v) => v.type !== "null");
}

export function fieldKind(prop) {
  const vs = variants(prop);
  if (vs.length === 1 && vs[0].enum) return { kind: "enum", values: vs[0].enum };
  if (vs.length === 1 && vs[0].const !== undefined) return { kind: "enum", values: [vs[0].const] };
  const types = vs.map((v) => v.type);
  if (types.length === 1 && types[0] === "boolean") return { kind: "boolean" };
  if (types.length === 1 && (types[0] === "integer" || types[0] === "number")) return { kind: types[0] };
  if (types.length === 1 && types[0] === "array") {
    return { kind: vs[0].items?.type === "string" ? "lines" : "list" };
  }
  if (types.length === 1 && types[0] === "string") return { kind: "string" };
  return { kind: "json" };
}

export function label(name, prop) {
  return has(`field.${name}`) ? t(`field.${name}`) : prop.title || name;
}

export function buildInput(name, prop) {
  const { kind, values } = fieldKind(prop);
  const nullable = (prop.anyOf || []).some((v) => v.type === "null");
  const dflt = prop.default;
  let input;
  if (kind === "enum" || kind === "boolean") {
    input = el("select", { name, dataset: { kind } });
    const choices = kind === "boolean" ? [true, false] : values;
    input.append(el("option", { value: "", text: defaultText(dflt, nullable) }));
    for (const v of choices) {
      input.append(el("option", { value: String(v), text: kind === "boolean" ? t(v ? "common.yes" : "common.no") : String(v) }));
    }
  } else if (kind === "integer" || kind === "number") {
    input = el("input", { type: "number", name, step: kind === "integer" ? "1" : "any", dataset: { kind } });
    input.placeholder = defaultText(dflt, nullable);
  } else if (kind === "lines") {
    input = el("textarea", { name, rows: "2", dataset: { kind } });
  } else {
    input = el("input", { type: "text", name, dataset: { kind } });
    input.placeholder = defaultText(dflt, nullable);
  }
  return input;
}

function defaultText(dflt, nullable) {
  if (dflt === null || dflt === undefined) return nullable ? t("train.auto") : "";
  if (typeof dflt === "boolean") return `${t("common.default")}: ${t(dflt ? "common.yes" : "common.no")}`;
  return `${t("common.default")}: ${Array.isArray(dflt) ? JSON.stringify(dflt) : dflt}`;
}

// The value to send, or undefined to leave the field to the server's default.
export function readInput(input) {
  const raw = input.value.trim();
  if (raw === "") return undefined;
  switch (input.dataset.kind) {
    case "integer":
    case "number":
      return Number(raw);
    case "boolean":
      return raw === "true";
    case "lines":
      return raw.split("\n").map((s) => s.trim()).filter(Boolean);
    case "list":
      return raw.split(/[,\s]+/).filter(Boolean).map((s) => (Number.isNaN(Number(s)) ? s : Number(s)));
    case "json":
      try {
        return JSON.parse(raw);
      } catch {
        return raw;
      }
    default:
      return raw;
  }
}

export function field(name, prop) {
  const input = buildInput(name, prop);
  return el("label", { class: "field", title: prop.description || "" }, el("span", { text: label(name, prop) }), input);
}
