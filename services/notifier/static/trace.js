/* The trace page: reads GET /v1/trace/{code} (no token: the code on the label is the key)
   and fills the bilingual fields. Nothing here knows or shows who bought the box. */
"use strict";

const code = decodeURIComponent(location.pathname.split("/").pop());
const $ = (id) => document.getElementById(id);
const UNKNOWN = "—";
const timeFormat = new Intl.DateTimeFormat("zh-CN", {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hour12: false,
});

function valueAt(trace, path) {
  return path.split(".").reduce((value, key) => (value == null ? null : value[key]), trace);
}

function show(element, value, kind) {
  const known = value != null && value !== "";
  element.classList.toggle("unknown", !known);
  if (!known) {
    element.textContent = kind === "time" ? "尚未 · not yet" : UNKNOWN;
  } else if (kind === "time") {
    element.textContent = timeFormat.format(new Date(value));
    element.title = value;
  } else {
    element.textContent = value;
  }
}

function render(trace) {
  $("sku").textContent = trace.sku;
  $("quantity").textContent = trace.quantity;
  $("code").textContent = trace.trace_code;
  $("journal").textContent = trace.journal_head || UNKNOWN;
  for (const element of document.querySelectorAll("[data-field]")) {
    show(element, valueAt(trace, element.dataset.field), element.dataset.kind);
  }
  document.title = `${trace.sku} · 产品溯源`;
}

function notice(text) {
  $("notice").hidden = false;
  $("notice").textContent = text;
}

async function load() {
  try {
    const response = await fetch(`/v1/trace/${encodeURIComponent(code)}`, { cache: "no-store" });
    if (response.status === 404) {
      notice("未找到该溯源码 · No product has this trace code.");
    } else if (!response.ok) {
      notice(`暂时无法读取 · Could not load the trace (${response.status}).`);
    } else {
      render(await response.json());
    }
  } catch {
    notice("网络错误 · Network error; pull to retry.");
  }
  $("trace").setAttribute("aria-busy", "false");
}

load();
