/* Host dashboard: one session's snapshots, pushed at most every 250 ms. */
"use strict";

const sessionId = decodeURIComponent(location.pathname.split("/").pop());
const money = new Intl.NumberFormat("zh-CN", { style: "currency", currency: "CNY" });
const count = new Intl.NumberFormat("en-US");
const $ = (id) => document.getElementById(id);
const WINDOW_S = 180;
const samples = []; // [epoch seconds, attempts]
let peak = 0;

function render(snapshot) {
  const totals = snapshot.totals;
  $("gmv").textContent = money.format(totals.gmv_cents / 100);
  $("gmv-sub").textContent = `${count.format(totals.paid_orders)} paid orders · ${count.format(totals.units_sold)} units`;
  for (const el of document.querySelectorAll("[data-total]")) {
    el.textContent = count.format(totals[el.dataset.total] ?? 0);
  }
  if (snapshot.session) {
    $("title").textContent = snapshot.session.title || sessionId;
    $("status").textContent = snapshot.session.status;
    $("status").classList.toggle("live", snapshot.session.status === "live");
    document.title = `${snapshot.session.title} · live`;
  }
  renderSkus(snapshot);
  recordRate(Date.parse(snapshot.at) / 1000, totals.attempts);
}

function renderSkus(snapshot) {
  const listings = snapshot.listings || Object.keys(snapshot.skus).map((sku) => ({ sku, title: sku }));
  const container = $("skus");
  let known = 0, out = 0;
  for (const listing of listings) {
    let card = container.querySelector(`[data-sku="${CSS.escape(listing.sku)}"]`);
    if (!card) {
      card = $("sku-card").content.firstElementChild.cloneNode(true);
      card.dataset.sku = listing.sku;
      container.append(card);
    }
    const stock = snapshot.skus[listing.sku];
    card.querySelector(".sku-title").textContent = listing.title || listing.sku;
    card.querySelector(".sku-code").textContent = listing.sku;
    if (!stock) continue;
    known += 1;
    const total = stock.available + stock.reserved + stock.sold || 1;
    card.querySelector(".sku-available").textContent = count.format(stock.available);
    card.querySelector(".sku-sold").textContent = count.format(stock.sold);
    card.querySelector(".sku-reserved").textContent = count.format(stock.reserved);
    card.querySelector(".seg.sold").style.width = `${(100 * stock.sold) / total}%`;
    card.querySelector(".seg.held").style.width = `${(100 * stock.reserved) / total}%`;
    card.querySelector(".seg.avail").style.width = `${(100 * stock.available) / total}%`;
    card.querySelector(".stockbar").setAttribute("aria-label",
      `${stock.sold} sold, ${stock.reserved} held, ${stock.available} left`);
    const isOut = stock.available === 0;
    card.classList.toggle("out", isOut);
    if (isOut) out += 1;
  }
  // Everything on sale is gone: the state the host must not miss on air.
  $("soldout").hidden = !(known > 0 && out === listings.length);
}

function recordRate(at, attempts) {
  samples.push([at, attempts]);
  while (samples.length && samples[0][0] < at - WINDOW_S - 2) samples.shift();
  drawSpark();
}

function perSecond() {
  // Attempts per whole second over the window, from the counters' growth.
  if (samples.length < 2) return [];
  const end = Math.floor(samples[samples.length - 1][0]);
  const buckets = new Array(WINDOW_S).fill(0);
  for (let i = 1; i < samples.length; i++) {
    const [t, a] = samples[i];
    const delta = Math.max(0, a - samples[i - 1][1]);
    const slot = WINDOW_S - 1 - (end - Math.floor(t));
    if (slot >= 0 && slot < WINDOW_S) buckets[slot] += delta;
  }
  return buckets;
}

function drawSpark() {
  const canvas = $("spark");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  const data = perSecond();
  const now = data.length ? data[data.length - 1] + (data[data.length - 2] || 0) : 0;
  $("rate").textContent = count.format(Math.round(now / 2));
  peak = Math.max(peak, ...data, 0);
  $("rate-peak").textContent = `peak ${count.format(peak)}/s`;
  const max = Math.max(1, ...data);
  g.clearRect(0, 0, width, height);
  g.strokeStyle = "#2a3342"; g.lineWidth = 1;
  g.beginPath(); g.moveTo(0, height - 0.5); g.lineTo(width, height - 0.5); g.stroke();
  if (!data.length) return;
  const x = (i) => (i / (WINDOW_S - 1)) * width;
  const y = (v) => height - 4 - (v / max) * (height - 10);
  const fill = g.createLinearGradient(0, 0, 0, height);
  fill.addColorStop(0, "rgba(255,176,32,.45)"); fill.addColorStop(1, "rgba(255,176,32,0)");
  g.beginPath(); g.moveTo(0, height);
  data.forEach((v, i) => g.lineTo(x(i), y(v)));
  g.lineTo(width, height); g.closePath(); g.fillStyle = fill; g.fill();
  g.beginPath();
  data.forEach((v, i) => (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))));
  g.strokeStyle = "#ffb020"; g.lineWidth = 2; g.stroke();
}

function refuse(message) {
  $("notice").hidden = false;
  $("notice").textContent = message;
}

const token = readToken();
if (!token) {
  refuse("Open this page with #token=<host token> at the end of its address.");
} else {
  liveSocket(`/v1/sessions/${encodeURIComponent(sessionId)}/live`, {
    token,
    onFrame: (frame) => frame.type === "snapshot" && render(frame),
    onState: (up) => setConnected($("conn"), up),
    onRefused: (reason) => refuse(`This token may not watch session ${sessionId} (${reason}).`),
  });
  window.addEventListener("resize", drawSpark);
}
