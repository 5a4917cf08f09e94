// Playground: a model from /v1/models, a chat streamed from /v1/chat/completions (fetch + ReadableStream,
// SSE parsed here), and the same request as curl and as Python (the openai SDK).

import { api, errorOf, headers } from "./api.js";

const form = document.getElementById("play-form");
const log = document.getElementById("play-log");
const statusLine = document.getElementById("play-status");
let history = [];  // the conversation so far: {role, content}
let controller = null;

function request(message) {
  const messages = [];
  if (form.system.value.trim()) messages.push({ role: "system", content: form.system.value.trim() });
  messages.push(...history, { role: "user", content: message });
  const body = { model: form.model.value, messages, stream: true, stream_options: { include_usage: true } };
  if (form.temperature.value !== "") body.temperature = Number(form.temperature.value);
  if (form.max_tokens.value !== "") body.max_tokens = Number(form.max_tokens.value);
  return body;
}

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

function pyLiteral(value) {
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) return `[${value.map(pyLiteral).join(", ")}]`;
  if (typeof value === "object") {
    return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pyLiteral(v)}`).join(", ")}}`;
  }
  return JSON.stringify(value);
}

// the request being written, as curl and as Python; the key only as $HUBMESH_KEY
function showCode() {
  const body = request(form.message.value || "Hello!");
  const base = `${location.origin}/v1`;
  document.getElementById("play-curl").textContent = [
    `curl -N ${base}/chat/completions \\`,
    `  -H "Authorization: Bearer $HUBMESH_KEY" -H "Content-Type: application/json" \\`,
    `  -d ${shellQuote(JSON.stringify(body, null, 2))}`].join("\n");
  const args = Object.entries(body).filter(([k]) => k !== "model" && k !== "messages")
    .map(([k, v]) => `    ${k}=${pyLiteral(v)},`);
  document.getElementById("play-python").textContent = [
    "import os",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${JSON.stringify(base)}, api_key=os.environ["HUBMESH_KEY"])`,
    "stream = client.chat.completions.create(",
    `    model=${JSON.stringify(body.model)},`,
    `    messages=${pyLiteral(body.messages)},`,
    ...args,
    ")",
    "for chunk in stream:",
    "    if chunk.choices:",
    "        print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)",
    "print()"].join("\n");
}

function bubble(role, text = "") {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const who = document.createElement("b");
  who.textContent = role;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text;
  div.append(who, content);
  log.append(div);
  log.scrollTop = log.scrollHeight;
  return content;
}

// Server-sent events from a fetch body: yields each event's data (the lines after "data:").
async function* events(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const data = block.split(/\r?\n/).filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (data) yield data;
      }
    }
  } finally {
    if (signal.aborted) reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

async function send(event) {
  event.preventDefault();
  const message = form.message.value.trim();
  if (!message || controller) return;
  const body = request(message);
  bubble("user", message);
  const output = bubble("assistant");
  output.parentElement.dataset.state = "streaming";
  form.message.value = "";
  controller = new AbortController();
  document.getElementById("play-send").disabled = true;
  document.getElementById("play-stop").disabled = false;
  statusLine.textContent = "streaming…";
  let text = "", usage = null, finish = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body), signal: controller.signal, cache: "no-store" });
    if (!response.ok) throw await errorOf(response);
    for await (const data of events(response.body, controller.signal)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || "the stream failed");
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) {
          text += choice.delta.content;
          output.textContent = text;
          log.scrollTop = log.scrollHeight;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    history.push({ role: "user", content: message }, { role: "assistant", content: text });
    statusLine.textContent = `finish: ${finish || "?"}` + (usage
      ? ` · ${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens` : "");
    output.parentElement.dataset.state = "done";
  } catch (err) {
    const stopped = err.name === "AbortError";
    statusLine.textContent = stopped ? "stopped" : err.message;
    output.parentElement.dataset.state = stopped ? "stopped" : "failed";
    if (!stopped) output.textContent = text || `(${err.message})`;
  } finally {
    controller = null;
    document.getElementById("play-send").disabled = false;
    document.getElementById("play-stop").disabled = true;
    showCode();
  }
}

export async function load() {
  const select = document.getElementById("play-model");
  if (select.options.length) return;
  try {
    const models = await api("GET", "/v1/models");
    for (const m of models.data) {  // every model the key may use (a chat with an embeddings model gets its 4xx)
      const option = document.createElement("option");
      option.value = option.textContent = m.id;
      select.append(option);
    }
  } catch (err) {
    statusLine.textContent = err.message;
  }
  showCode();
}

export function init() {
  form.addEventListener("submit", send);
  form.addEventListener("input", showCode);
  form.addEventListener("change", showCode);
  form.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
  document.getElementById("play-stop").addEventListener("click", () => controller?.abort());
  document.getElementById("play-clear").addEventListener("click", () => {
    history = [];
    log.replaceChildren();
    statusLine.textContent = "";
    showCode();
  });
}
