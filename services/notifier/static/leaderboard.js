/* Contest leaderboard: sessions by paid GMV, pushed live. */
"use strict";

const money = new Intl.NumberFormat("zh-CN", { style: "currency", currency: "CNY" });
const board = document.getElementById("board");
const token = readToken();
// `/leaderboard?pavilion=P`: the contest of one pavilion.
const pavilion = new URLSearchParams(location.search).get("pavilion");

function render(frame) {
  board.replaceChildren(...frame.sessions.map((entry) => {
    const item = document.createElement("li");
    const rank = Object.assign(document.createElement("span"), { className: "rank", textContent: entry.rank });
    const who = document.createElement("div");
    who.append(Object.assign(document.createElement("div"), { className: "title", textContent: entry.title || entry.session_id }));
    who.append(Object.assign(document.createElement("div"), { className: "muted", textContent: [entry.host_id, entry.pavilion, `${entry.paid_orders} paid orders`].filter(Boolean).join(" · ") }));
    const gmv = Object.assign(document.createElement("span"), { className: "gmv", textContent: money.format(entry.gmv_cents / 100) });
    item.append(rank, who, gmv);
    return item;
  }));
}

if (!token) {
  const notice = document.getElementById("notice");
  notice.hidden = false;
  notice.textContent = "Open this page with #token=<token> at the end of its address.";
} else {
  if (pavilion) document.querySelector("header.bar h1").textContent = `Contest · ${pavilion} · paid GMV`;
  liveSocket(pavilion ? `/v1/leaderboard/live?pavilion=${encodeURIComponent(pavilion)}` : "/v1/leaderboard/live", {
    token,
    onFrame: (frame) => frame.type === "leaderboard" && render(frame),
    onState: (up) => setConnected(document.getElementById("conn"), up),
    onRefused: () => {},
  });
}
