// Small DOM helpers: text only (textContent), never HTML from data.

export function cell(value, className) {
  const td = document.createElement("td");
  if (value instanceof Node) td.append(value);
  else td.textContent = value === null || value === undefined ? "" : String(value);
  if (className) td.className = className;
  return td;
}

export function row(cells) {
  const tr = document.createElement("tr");
  tr.append(...cells);
  return tr;
}

export function badge(text, kind = text) {
  const span = document.createElement("span");
  span.className = `badge ${kind}`;
  span.textContent = text;
  return span;
}

export function button(text, onClick, className = "secondary small") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

export function showError(element, message) {
  element.textContent = message;
  element.hidden = false;
}

export function when(unixSeconds) {
  if (!unixSeconds) return "";
  return new Date(unixSeconds * 1000).toISOString().replace("T", " ").slice(0, 16) + "Z";
}
