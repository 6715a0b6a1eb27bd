/* Pick console: open tasks of one warehouse, grouped into waves (same SKU and lot),
   soonest expiry first. The server re-sends every open task on each (re)connect. */
"use strict";

const warehouseId = decodeURIComponent(location.pathname.split("/").pop());
const $ = (id) => document.getElementById(id);
const picks = new Map(); // pick_id -> pick frame
let renderQueued = false;

function waves() {
  const groups = new Map();
  for (const pick of picks.values()) {
    const key = pick.wave || `${pick.sku}/${pick.lot_code}`;
    if (!groups.has(key)) groups.set(key, { key, sku: pick.sku, lot: pick.lot_code, expires: pick.expires_on, picks: [] });
    groups.get(key).picks.push(pick);
  }
  return [...groups.values()].sort((a, b) =>
    (a.expires == null) - (b.expires == null) || (a.expires || "").localeCompare(b.expires || "") || a.key.localeCompare(b.key));
}

function expiryText(day) {
  if (!day) return ["no expiry", ""];
  const days = Math.round((Date.parse(day + "T00:00:00Z") - Date.now()) / 86400000);
  if (days < 0) return [`expired ${day}`, "past"];
  if (days <= 3) return [`expires ${day} · ${days}d`, "soon"];
  return [`expires ${day}`, ""];
}

function render() {
  renderQueued = false;
  const container = $("waves");
  const list = waves();
  container.replaceChildren(...list.map(renderWave));
  $("open-count").textContent = picks.size;
  $("wave-count").textContent = list.length;
  $("empty").hidden = picks.size > 0;
}

function renderWave(wave) {
  const card = $("wave-card").content.firstElementChild.cloneNode(true);
  card.dataset.wave = wave.key;
  card.querySelector(".lot").textContent = wave.lot;
  card.querySelector(".sku").textContent = wave.sku;
  const [text, level] = expiryText(wave.expires);
  const expiry = card.querySelector(".expiry");
  expiry.textContent = text;
  if (level) expiry.classList.add(level);
  card.querySelector(".wave-qty").textContent = wave.picks.reduce((n, p) => n + p.quantity, 0);
  const rows = card.querySelector(".picks");
  for (const pick of wave.picks) {
    const row = $("pick-row").content.firstElementChild.cloneNode(true);
    row.dataset.pickId = pick.pick_id;
    row.querySelector(".pick-qty").textContent = pick.quantity;
    row.querySelector(".pick-order").textContent = pick.order_id;
    // What goes on the box label: the code a buyer scans for the trace (tasks from before
    // traceability have none).
    row.dataset.traceCode = pick.trace_code || "";
    row.querySelector(".pick-label").hidden = !pick.trace_code;
    row.querySelector(".pick-trace").textContent = pick.trace_code || "";
    row.querySelector(".pick-time").textContent = new Date(pick.created_at).toLocaleTimeString();
    row.querySelector(".complete").addEventListener("click", (e) => complete(pick.pick_id, e.target));
    rows.append(row);
  }
  return card;
}

function scheduleRender() {
  if (!renderQueued) { renderQueued = true; requestAnimationFrame(render); }
}

async function complete(pickId, button) {
  button.disabled = true;
  try {
    const response = await fetch(`/v1/picks/${encodeURIComponent(pickId)}/complete`, {
      method: "POST", headers: { Authorization: `Bearer ${token}` },
    });
    if (response.ok || response.status === 404) {
      picks.delete(pickId);
      scheduleRender();
      return;
    }
    button.textContent = `Retry (${response.status})`;
  } catch {
    button.textContent = "Retry";
  }
  button.disabled = false;
}

function refuse(message) {
  $("notice").hidden = false;
  $("notice").textContent = message;
  $("empty").hidden = true;
}

const token = readToken();
$("warehouse").textContent = warehouseId;
document.title = `Picks · ${warehouseId}`;
if (!token) {
  refuse("Open this page with #token=<warehouse token> at the end of its address.");
} else {
  let fresh = false;
  liveSocket(`/v1/warehouses/${encodeURIComponent(warehouseId)}/picks/live?done=1`, {
    token,
    onFrame: (frame) => {
      if (fresh) { picks.clear(); fresh = false; } // the server re-sends every open task
      if (frame.type === "pick") picks.set(frame.pick_id, frame);
      if (frame.type === "pick_done") picks.delete(frame.pick_id);
      scheduleRender();
    },
    onState: (up) => { setConnected($("conn"), up); if (!up) fresh = true; },
    onRefused: (reason) => refuse(`This token may not see warehouse ${warehouseId} (${reason}).`),
  });
}
