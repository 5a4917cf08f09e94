// Keys: the keys API (/v1/keys): create (the secret shown once), list, block/unblock, regenerate, delete.

import { api } from "./api.js";
import { badge, button, cell, row, showError, when } from "./dom.js";

const SCOPES = ["models", "chat", "completions", "embeddings", "images", "responses", "keys", "admin"];
const form = document.getElementById("key-form");
const error = document.getElementById("keys-error");

function fail(err) {
  showError(error, err.status === 403 ? `${err.message} (managing keys needs the keys or admin scope)` : err.message);
}

function showSecret(record, what) {
  document.getElementById("key-secret-for").textContent = `${what} “${record.name}” (${record.id}).`;
  document.getElementById("key-secret-value").textContent = record.key;
  document.getElementById("key-secret").hidden = false;
}

function hideSecret() {
  document.getElementById("key-secret-value").textContent = "";
  document.getElementById("key-secret").hidden = true;
}

function status(record) {
  if (record.blocked) return "blocked";
  if (record.expires_at && record.expires_at * 1000 < Date.now()) return "expired";
  return "active";
}

function limits(record) {
  return Object.entries(record.limits || {}).map(([name, value]) => `${name} ${value}`).join(", ") || "deployment's";
}

async function act(work) {
  error.hidden = true;
  try {
    await work();
  } catch (err) {
    fail(err);
  }
  await load();
}

function actions(record) {
  const id = encodeURIComponent(record.id);
  const blocked = record.blocked;
  const cellButtons = document.createElement("span");
  cellButtons.className = "actions";
  cellButtons.append(
    button(blocked ? "Unblock" : "Block", () => act(() => api("POST", `/v1/keys/${id}/${blocked ? "unblock" : "block"}`))),
    " ",
    button("Regenerate", () => act(async () => {
      if (!confirm(`A new secret for “${record.name}”: the old one stops working now. Go on?`)) return;
      showSecret(await api("POST", `/v1/keys/${id}/regenerate`, { body: {} }), "New secret of");
    })),
    " ",
    button("Delete", () => act(async () => {
      if (!confirm(`Delete the key “${record.name}”? Calls with it get 401 from now on.`)) return;
      await api("DELETE", `/v1/keys/${id}`);
    }), "danger small"),
  );
  for (const b of cellButtons.querySelectorAll("button")) b.dataset.action = b.textContent.toLowerCase();
  return cellButtons;
}

export async function load() {
  let listing;
  try {
    listing = await api("GET", "/v1/keys");
  } catch (err) {
    fail(err);
    return;
  }
  const body = document.querySelector("#keys-table tbody");
  body.replaceChildren(...listing.data.map((record) => {
    const tr = row([cell(record.name), cell(record.id), cell(record.subject), cell((record.scopes || []).join(" ")),
      cell(limits(record)), cell(when(record.created_at)), cell(record.expires_at ? when(record.expires_at) : "never"),
      cell(badge(status(record))), cell(actions(record))]);
    tr.dataset.keyId = record.id;
    tr.dataset.keyName = record.name;
    tr.dataset.status = status(record);
    return tr;
  }));
  if (!listing.data.length) body.append(row([cell("No keys yet.")]));
}

async function create(event) {
  event.preventDefault();
  error.hidden = true;
  const number = (name) => (form[name].value === "" ? undefined : Number(form[name].value));
  const scopes = [...form.querySelectorAll("input[name=scope]:checked")].map((box) => box.value);
  const body = { name: form.name.value.trim() };
  if (scopes.length) body.scopes = scopes;
  if (number("rpm") !== undefined) body.rpm = number("rpm");
  if (number("tokens_per_day") !== undefined) body.tokens_per_day = number("tokens_per_day");
  if (number("ttl_days") !== undefined) body.ttl_s = Math.round(number("ttl_days") * 86400);
  try {
    showSecret(await api("POST", "/v1/keys", { body }), "The key");
    form.reset();
  } catch (err) {
    fail(err);
  }
  await load();
}

export function init() {
  const fieldset = form.querySelector(".scopes");
  for (const scope of SCOPES) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.name = "scope";
    box.value = scope;
    label.append(box, scope);
    fieldset.append(label);
  }
  form.addEventListener("submit", create);
  document.getElementById("key-secret-done").addEventListener("click", hideSecret);
  document.getElementById("key-secret-copy").addEventListener("click", () =>
    navigator.clipboard?.writeText(document.getElementById("key-secret-value").textContent));
}

export { hideSecret };
