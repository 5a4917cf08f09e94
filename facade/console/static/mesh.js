// Mesh: GET /v1/mesh, each modality service's replicas, load, routing, migrations and stalls.

import { api } from "./api.js";
import { badge, cell, row, showError, when } from "./dom.js";

const REFRESH_MS = 5000;
let timer = null;

function h(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function counts(map) {
  const entries = Object.entries(map || {});
  return entries.length ? entries.map(([k, v]) => `${k} ${v}`).join(", ") : "none";
}

function stat(name, value) {
  const box = h("div", undefined, "stat");
  box.dataset.stat = name;
  box.append(h("b", String(value)), h("span", name));
  return box;
}

function service(view) {
  const card = h("section", undefined, "card service");
  card.dataset.service = view.service;
  card.dataset.available = String(view.available);
  const title = h("h2", view.address ? `${view.service} · ${view.address}` : view.service);
  title.append(badge(view.available ? "available" : "unavailable"));
  card.append(title);
  if (!view.available) {
    card.append(h("p", `Unavailable: ${view.error}`, "error"));
    return card;
  }
  title.append(h("small", `answered by ${view.instance} · up ${Math.round(view.uptime_s)} s`));
  const replicas = view.replicas || [];
  const ready = replicas.filter((r) => r.state === "ready").length;
  const routing = view.routing || {};
  const summary = h("div", undefined, "summary");
  summary.append(
    stat("replicas ready", `${ready} / ${replicas.length}`),
    stat("in flight", view.in_flight), stat("queued", view.queued),
    stat("hit ratio", routing.hit_ratio === null || routing.hit_ratio === undefined ? "n/a"
      : `${(routing.hit_ratio * 100).toFixed(1)}%`),
    stat("migrations", counts(view.migrations)), stat("stalls", counts(view.stalls)));
  card.append(summary);
  card.append(h("p", `Models: ${(view.models || []).join(", ")} · routing decisions: ${counts(routing.decisions)}`, "hint"));
  const table = h("table", undefined, "grid");
  const head = row(["replica", "state", "ready models", "in flight", "engine running", "engine waiting", "routed",
    "ejections", "stalls", "canaries"].map((name) => h("th", name)));
  const thead = h("thead");
  thead.append(head);
  const tbody = h("tbody");
  for (const r of replicas) {
    const tr = row([cell(r.address), cell(badge(r.state)), cell(r.ready_models.join(", ")), cell(r.in_flight, "num"),
      cell(r.engine_running, "num"), cell(r.engine_waiting, "num"), cell(r.routed, "num"), cell(r.ejections, "num"),
      cell(r.stalls, "num"), cell(r.canaries, "num")]);
    tr.dataset.replica = r.address;
    tr.dataset.state = r.state;
    tbody.append(tr);
  }
  table.append(thead, tbody);
  card.append(table);
  const events = view.events || [];
  card.append(h("h3", events.length ? "Recent replica events" : "No replica events since the service started"));
  if (events.length) {
    const list = h("ul", undefined, "events");
    for (const e of events.slice(-10).reverse()) list.append(h("li", `${when(e.at)} ${e.address} ${e.event}`));
    card.append(list);
  }
  return card;
}

export async function load() {
  const error = document.getElementById("mesh-error");
  let mesh;
  try {
    mesh = await api("GET", "/v1/mesh");
  } catch (err) {
    showError(error, err.status === 403 ? `${err.message} (the mesh needs a key with the admin scope)` : err.message);
    return;
  }
  error.hidden = true;
  document.getElementById("mesh-services").replaceChildren(...mesh.services.map(service));
  document.getElementById("mesh-at").textContent = `as of ${new Date(mesh.at * 1000).toLocaleTimeString()}`;
}

// refreshed every few seconds while the page is shown
export function show(visible) {
  clearInterval(timer);
  timer = visible ? setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS) : null;
}

export function init() {
  document.getElementById("mesh-refresh").addEventListener("click", load);
}
