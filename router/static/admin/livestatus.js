// The live connection's status, in words, for pages fed by subscriptions:
//   "● Live" · "● Connecting…" · "● Reconnecting…" (the first seconds after a drop) ·
//   "● Disconnected since 14:02:31 · retrying in 8 s" (longer) · "● Disconnected: <why>" (refused).
// `data-state` says the same for tests and styles: live | connecting | reconnecting | disconnected | failed | offline.

import { subscriptions } from "./graphql.js";
import { h } from "./ui.js";

export const RECONNECTING_FOR_MS = 10000;

function hhmmss(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** A status element that follows the shared WebSocket; call `.stop()` when the page goes away. */
export function connectionStatus(id = "connection") {
  const el = h(`span.conn#${id}`, { role: "status", "aria-live": "polite" });
  let state = "idle";
  let info = {};
  let timer = null;

  function render() {
    let shown;
    let text;
    let title = info.reason || "";
    const retryIn = info.retryAt ? Math.max(1, Math.round((info.retryAt - Date.now()) / 1000)) : null;
    if (state === "connected") {
      shown = "live";
      text = "● Live";
      title = "Receiving live updates";
    } else if (state === "failed") {
      shown = "failed";
      text = `● Disconnected${info.downSince ? ` since ${hhmmss(info.downSince)}` : ""}: ${info.reason || "refused"}`;
    } else if (state === "idle") {
      shown = "offline";
      text = "● Offline";
    } else if (!info.downSince) {
      shown = "connecting";
      text = "● Connecting…";
    } else if (Date.now() - info.downSince < RECONNECTING_FOR_MS) {
      shown = "reconnecting";
      text = "● Reconnecting…";
    } else {
      shown = "disconnected";
      text = `● Disconnected since ${hhmmss(info.downSince)}${state === "waiting" && retryIn ? ` · retrying in ${retryIn} s` : " · retrying…"}`;
    }
    el.className = `conn ${shown}`;
    el.dataset.state = shown;
    if (info.downSince) el.dataset.downSince = String(info.downSince);
    else delete el.dataset.downSince;
    if (el.textContent !== text) el.textContent = text;
    el.title = title;
  }

  const unlisten = subscriptions.onStatus((s, i) => {
    state = s;
    info = i;
    render();
    clearInterval(timer);
    timer = s === "connected" || s === "idle" ? null : setInterval(render, 1000); // countdown, reconnecting → disconnected
  });
  el.stop = () => {
    clearInterval(timer);
    unlisten();
  };
  return el;
}
