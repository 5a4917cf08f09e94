// The console's shell: sign-in (the key in sessionStorage only), tabs (#usage, #keys, #mesh, #playground).

import { api, describeKey, key } from "./api.js";
import * as keys from "./keys.js";
import * as mesh from "./mesh.js";
import * as playground from "./playground.js";
import * as usage from "./usage.js";

const PAGES = { usage, keys, mesh, playground };
const DEFAULT = "usage";

function signedIn(value) {
  document.getElementById("signin").hidden = Boolean(value);
  document.getElementById("tabs").hidden = !value;
  document.getElementById("who").hidden = !value;
  document.getElementById("who-text").textContent = describeKey(value);
  if (!value) for (const page of document.querySelectorAll(".page")) page.hidden = true;
}

function route() {
  if (!key.get()) return;
  const name = location.hash.slice(1) in PAGES ? location.hash.slice(1) : DEFAULT;
  for (const [page, module] of Object.entries(PAGES)) {
    document.getElementById(`page-${page}`).hidden = page !== name;
    module.show?.(page === name);
  }
  for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("active", link.dataset.tab === name);
  document.body.dataset.page = name;
  PAGES[name].load();
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("signin-key");
  const error = document.getElementById("signin-error");
  const value = input.value.trim();
  error.hidden = true;
  key.set(value);
  try {
    await api("GET", "/v1/models");  // any valid key is let in; a scope it lacks is said on the page that needs it
  } catch (err) {
    if (err.status === 401) {
      key.clear();
      error.textContent = `This key is not accepted: ${err.message}`;
      error.hidden = false;
      return;
    }
  }
  input.value = "";
  signedIn(value);
  route();
}

function signOut() {
  key.clear();
  keys.hideSecret();
  mesh.show(false);
  signedIn(null);
  history.replaceState(null, "", location.pathname);
}

for (const module of Object.values(PAGES)) module.init();
document.getElementById("signin-form").addEventListener("submit", signIn);
document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
signedIn(key.get());
route();
