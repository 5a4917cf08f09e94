// A stacked bar chart drawn as inline SVG (no library): one bar per period, one colour per series.

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#2856d8", "#1f8a4c", "#d9822b", "#8e44ad", "#c53030", "#138496", "#6c757d", "#b7791f",
  "#e83e8c", "#20c997"];

export const colour = (index) => COLOURS[index % COLOURS.length];

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

export function formatNumber(value) {
  if (value >= 1e9) return `${(value / 1e9).toFixed(1)}G`;
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (value >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
  return String(Math.round(value * 100) / 100);
}

// periods: labels in order; series: names; value(period, series) -> number. Returns the chart's element.
export function stackedBars({ periods, series, value, unit }) {
  const box = document.createElement("div");
  if (!periods.length) {
    box.className = "hint";
    box.textContent = "Nothing in this range.";
    return box;
  }
  const width = 960, height = 260, left = 56, right = 10, top = 12, bottom = 46;
  const totals = periods.map((p) => series.reduce((sum, s) => sum + value(p, s), 0));
  const max = niceMax(Math.max(...totals));
  const plotW = width - left - right, plotH = height - top - bottom;
  const slot = plotW / periods.length;
  const barW = Math.max(1, Math.min(48, slot * 0.7));
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${unit} per period, stacked by series` });
  for (let i = 0; i <= 4; i++) {  // grid and y axis
    const y = top + plotH - (plotH * i) / 4;
    svg.append(el("line", { x1: left, x2: width - right, y1: y, y2: y, stroke: "#e4e7ec" }));
    svg.append(el("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, formatNumber((max * i) / 4)));
  }
  const labelEvery = Math.ceil(periods.length / 16);
  periods.forEach((period, i) => {
    const x = left + slot * i + (slot - barW) / 2;
    let y = top + plotH;
    series.forEach((name, s) => {
      const v = value(period, name);
      if (!v) return;
      const h = (plotH * v) / max;
      y -= h;
      const rect = el("rect", { x, y, width: barW, height: Math.max(h, 0.5), fill: colour(s),
        "data-period": period, "data-series": name, "data-value": v });
      rect.append(el("title", {}, `${period} · ${name}: ${v} ${unit}`));
      svg.append(rect);
    });
    if (i % labelEvery === 0) {
      svg.append(el("text", { x: x + barW / 2, y: height - bottom + 16, "text-anchor": "middle" },
        period.length > 10 ? period.slice(5, 16).replace("T", " ") : period.slice(5)));
    }
  });
  svg.append(el("text", { x: left, y: height - 6 }, `${unit} (total ${formatNumber(totals.reduce((a, b) => a + b, 0))})`));
  box.append(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  series.forEach((name, s) => {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colour(s);
    item.append(swatch, name || "(none)");
    legend.append(item);
  });
  box.append(legend);
  return box;
}
