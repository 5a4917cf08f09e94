// Usage: GET /v1/usage grouped by period (day or hour) and model or subject, as a chart, a table and a CSV.

import { api } from "./api.js";
import { formatNumber, stackedBars } from "./chart.js";
import { cell, row, showError } from "./dom.js";

const form = document.getElementById("usage-form");
const COLUMNS = ["requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors"];
const MAX_FILLED = 400;  // periods drawn even when empty, up to this many
let last = null;  // the latest answer and the filters it was for: what the CSV holds
let asked = 0;  // the latest load's number: an answer to an earlier one is dropped

const isoDay = (date) => date.toISOString().slice(0, 10);

function defaults() {
  if (form.start.value) return;
  const today = new Date();
  form.end.value = isoDay(today);
  form.start.value = isoDay(new Date(today.getTime() - 6 * 86400e3));
}

// [start, end) in unix seconds: the end date's whole day is included
function window_() {
  const start = Date.parse(`${form.start.value}T00:00:00Z`) / 1000;
  const end = Date.parse(`${form.end.value}T00:00:00Z`) / 1000 + 86400;
  return { start, end };
}

function periodsBetween(period, start, end, present) {
  const step = period === "hour" ? 3600 : 86400;
  if ((end - start) / step > MAX_FILLED) return [...present].sort();
  const all = [];
  for (let t = start; t < end; t += step) {
    const iso = new Date(t * 1000).toISOString();
    all.push(period === "hour" ? `${iso.slice(0, 13)}:00Z` : iso.slice(0, 10));
  }
  return all;
}

export async function load() {
  defaults();
  const period = form.period.value, split = form.split.value, metric = form.metric.value;
  const { start, end } = window_();
  const error = document.getElementById("usage-error");
  error.hidden = true;
  if (!(start < end)) {
    showError(error, "'From' must not be after 'To'.");
    return;
  }
  const mine = ++asked;
  let answer;
  try {
    answer = await api("GET", "/v1/usage", { query: {
      group_by: `${period},${split}`, start, end, model: form.model.value.trim(),
      subject: form.subject.value.trim(), limit: 10000 } });
  } catch (err) {
    if (mine === asked) showError(error, err.status === 403 ? `${err.message} (another subject's usage needs a key with the admin scope)` : err.message);
    return;
  }
  if (mine !== asked) return;
  last = { answer, period, split };
  render(answer, period, split, metric, start, end);
}

function render(answer, period, split, metric, start, end) {
  const rows = answer.data;
  const series = [...new Set(rows.map((r) => r[split]))].sort();
  const byKey = new Map(rows.map((r) => [`${r[period]}\u0000${r[split]}`, r]));
  const periods = periodsBetween(period, start, end, new Set(rows.map((r) => r[period])));
  const label = document.getElementById("usage-form").metric.selectedOptions[0].textContent;
  const chart = document.getElementById("usage-chart");
  chart.replaceChildren(stackedBars({
    periods, series, unit: label, value: (p, s) => (byKey.get(`${p}\u0000${s}`) || {})[metric] || 0 }));
  chart.dataset.rows = String(rows.length);

  const totals = Object.fromEntries(COLUMNS.map((c) => [c, rows.reduce((sum, r) => sum + (r[c] || 0), 0)]));
  document.getElementById("usage-summary").replaceChildren(...[
    ["requests", totals.requests], ["tokens", totals.total_tokens], ["errors", totals.errors],
    [split === "model" ? "models" : "subjects", series.length]].map(([name, value]) => {
    const stat = document.createElement("div");
    stat.className = "stat";
    stat.dataset.stat = name;
    const b = document.createElement("b");
    b.textContent = formatNumber(value);
    const span = document.createElement("span");
    span.textContent = name;
    stat.append(b, span);
    return stat;
  }));

  document.getElementById("usage-split-head").textContent = split;
  const body = document.querySelector("#usage-table tbody");
  body.replaceChildren(...rows.map((r) => {
    const tr = row([cell(r[period]), cell(r[split] || "(none)"), ...COLUMNS.map((c) => cell(r[c], "num"))]);
    tr.dataset.period = r[period];
    tr.dataset.series = r[split];
    return tr;
  }));
  const table = document.getElementById("usage-table");
  table.querySelector("tfoot")?.remove();
  const foot = document.createElement("tfoot");
  foot.append(row([cell("total"), cell(`${series.length} ${split === "model" ? "models" : "subjects"}`),
    ...COLUMNS.map((c) => cell(totals[c], "num"))]));
  table.append(foot);
  if (answer.has_more) showError(document.getElementById("usage-error"), "More groups than shown: narrow the filters.");
}

function csvField(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

// The rows of the latest answer as CSV, made in the browser from the same JSON.
export function csv() {
  if (!last) return "";
  const names = [last.period, last.split, ...COLUMNS, "cached_tokens", "images"];
  const lines = [names.join(",")];
  for (const r of last.answer.data) lines.push(names.map((n) => csvField(r[n])).join(","));
  return `${lines.join("\r\n")}\r\n`;
}

function download() {
  if (!last) return;
  const blob = new Blob([csv()], { type: "text/csv" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `hubmesh-usage-${form.start.value}-${form.end.value}-${last.period}-${last.split}.csv`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

export function init() {
  form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
  for (const name of ["period", "split", "metric"]) form[name].addEventListener("change", () => load());
  document.getElementById("usage-csv").addEventListener("click", download);
}
