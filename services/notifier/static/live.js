/* Shared by the live pages: the token from the URL fragment (never sent in a URL to the
   server), and a WebSocket that authenticates with its first message and reconnects. */
"use strict";

function readToken() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const fromHash = params.get("token");
  if (fromHash) {
    sessionStorage.setItem("lc.token", fromHash);
    // Keep the token out of the address bar, screenshots and shared links.
    history.replaceState(null, "", location.pathname + location.search);
  }
  return fromHash || sessionStorage.getItem("lc.token");
}

function liveSocket(path, { token, onFrame, onState, onRefused }) {
  let delay = 500;
  let stopped = false;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(scheme + "//" + location.host + path);
    let admitted = false;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "auth", token }));
      // A refused token is closed (1008) at once; a queue with nothing open sends nothing.
      setTimeout(() => admit(), 1000);
    };
    function admit() {
      if (!admitted && ws.readyState === WebSocket.OPEN) { admitted = true; delay = 500; onState(true); }
    }
    ws.onmessage = (event) => {
      admit();
      onFrame(JSON.parse(event.data));
    };
    ws.onclose = (event) => {
      onState(false);
      if (event.code === 1008) { stopped = true; onRefused(event.reason || "not allowed"); return; }
      if (!stopped) {
        setTimeout(connect, delay + Math.random() * 250);
        delay = Math.min(delay * 2, 8000);
      }
    };
  }
  connect();
}

function setConnected(element, up) {
  element.classList.toggle("up", up);
  element.textContent = up ? "live" : "reconnecting…";
}
