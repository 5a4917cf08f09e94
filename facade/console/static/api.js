// The one door to the API: the key (this tab's sessionStorage only, sent as Authorization: Bearer,
// never in a URL), JSON calls, and OpenAI-shaped errors turned into messages.

const KEY = "hubmesh.console.key";

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function headers(extra = {}) {
  return { Authorization: `Bearer ${key.get()}`, ...extra };
}

// The error of a failed answer: OpenAI's {"error": {"message", "code"}}, else the status line.
export async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = `${response.status}: ${body.error.message || message}`;
      code = body.error.code || null;
    }
  } catch (_) { /* not JSON: the status line says it */ }
  if (response.status === 403 && !code) code = "forbidden";
  return new ApiError(response.status, message, code);
}

// GET/POST/PATCH/DELETE a JSON API path ("/v1/..."); `query` an object of parameters (empty ones left out).
export async function api(method, path, { query, body, signal } = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const init = { method, headers: headers(), signal, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  if (!response.ok) throw await errorOf(response);
  return response.status === 204 ? null : response.json();
}

// What the pasted credential is, for the header (never the secret itself).
export function describeKey(value) {
  if (!value) return "";
  const parts = value.split(".");
  if (parts.length === 3 && value.startsWith("eyJ")) {
    try {
      const claims = JSON.parse(atob(parts[1].replace(/-/g, "+").replace(/_/g, "/")));
      return `JWT · ${claims.sub || "no subject"}${claims.scope ? ` · ${claims.scope}` : ""}`;
    } catch (_) {
      return "JWT";
    }
  }
  return value.startsWith("sk-hm-") ? "hub key" : "API key";
}
