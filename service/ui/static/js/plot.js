// Line and scatter charts in plain SVG: axes with ticks, labelled axes with units, a legend,
// and one <circle class="point"> per data point (with a <title> giving its values).

import { h, s } from "./dom.js";

// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
export const COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"];

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const steps = [1, 2, 2.5, 5, 10].map((m) => m * power);
  return steps.find((st) => st >= raw) || steps[steps.length - 1];
}

function ticks([lo, hi], count = 5) {
  const step = niceStep(hi - lo || 1, count);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toFixed(10));
  return out;
}

function extent(values, pad = 0.05) {
  const finite = values.filter((v) => Number.isFinite(v));
  if (!finite.length) return [0, 1];
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (lo === hi) {
    lo -= Math.abs(lo) * 0.1 || 0.5;
    hi += Math.abs(hi) * 0.1 || 0.5;
  }
  const margin = (hi - lo) * pad;
  return [lo - margin, hi + margin];
}

function tickLabel(v, step) {
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return v.toFixed(Math.min(digits, 4));
}

/**
 * chart({title, xLabel, yLabel, series: [{name, points: [{x, y, tip, data, highlight, marker}], line}],
 *        xDomain, yDomain, vLines: [{x, label}], diagonal, id, description})
 * Returns a <figure> holding the SVG and a caption.
 */
export function chart(spec) {
  const width = spec.width || 640;
  const height = spec.height || 340;
  const m = { top: 28, right: 48, bottom: 52, left: 64 };
  const all = spec.series.flatMap((se) => se.points);
  const xd = spec.xDomain || extent(all.map((p) => p.x), 0.03);
  const yd = spec.yDomain || extent(all.map((p) => p.y));
  const px = (x) => m.left + ((x - xd[0]) / (xd[1] - xd[0] || 1)) * (width - m.left - m.right);
  const py = (y) => height - m.bottom - ((y - yd[0]) / (yd[1] - yd[0] || 1)) * (height - m.top - m.bottom);
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": `${spec.title}: ${spec.yLabel} against ${spec.xLabel}`,
    "data-testid": spec.id,
  });
  svg.append(s("title", {}, spec.title));
  svg.append(axes(spec, xd, yd, px, py, width, height, m));
  if (spec.diagonal) svg.append(diagonal(xd, yd, px, py));
  for (const line of spec.vLines || []) svg.append(vLine(line, yd, px, py, m.top));
  spec.series.forEach((se, i) => svg.append(seriesGroup(se, se.colour || COLOURS[i % COLOURS.length], px, py, width)));
  const legend = h(
    "ul",
    { class: "legend" },
    spec.series.map((se, i) =>
      h("li", {}, swatch(se.colour || COLOURS[i % COLOURS.length]), se.name),
    ),
    (spec.legendExtra || []).map((text) => h("li", { class: "muted" }, text)),
  );
  return h(
    "figure",
    { class: "plot", id: spec.id },
    h("figcaption", {}, h("strong", {}, spec.title), spec.description ? ` — ${spec.description}` : ""),
    svg,
    legend,
  );
}

function swatch(colour) {
  const box = h("span", { class: "swatch", "aria-hidden": "true" });
  box.style.background = colour;
  return box;
}

function axes(spec, xd, yd, px, py, width, height, m) {
  const g = s("g", { class: "axes" });
  const xt = ticks(xd, spec.xTicks || 6);
  const yt = ticks(yd, 5);
  const xStep = xt.length > 1 ? xt[1] - xt[0] : 1;
  const yStep = yt.length > 1 ? yt[1] - yt[0] : 1;
  for (const v of yt) {
    g.append(s("line", { x1: m.left, x2: width - m.right, y1: py(v), y2: py(v), class: "grid" }));
    g.append(s("text", { x: m.left - 8, y: py(v) + 4, "text-anchor": "end", class: "tick" }, tickLabel(v, yStep)));
  }
  for (const v of xt) {
    g.append(s("line", { x1: px(v), x2: px(v), y1: height - m.bottom, y2: height - m.bottom + 5, class: "axis" }));
    g.append(s("text", { x: px(v), y: height - m.bottom + 19, "text-anchor": "middle", class: "tick" }, tickLabel(v, xStep)));
  }
  g.append(s("line", { x1: m.left, x2: width - m.right, y1: height - m.bottom, y2: height - m.bottom, class: "axis" }));
  g.append(s("line", { x1: m.left, x2: m.left, y1: m.top, y2: height - m.bottom, class: "axis" }));
  g.append(
    s("text", { x: (m.left + width - m.right) / 2, y: height - 10, "text-anchor": "middle", class: "label" }, spec.xLabel),
  );
  const cy = (m.top + height - m.bottom) / 2;
  g.append(
    s("text", { x: 16, y: cy, "text-anchor": "middle", transform: `rotate(-90 16 ${cy})`, class: "label" }, spec.yLabel),
  );
  return g;
}

function diagonal(xd, yd, px, py) {
  const lo = Math.max(xd[0], yd[0]);
  const hi = Math.min(xd[1], yd[1]);
  if (hi <= lo) return s("g", {});
  return s("line", { x1: px(lo), y1: py(lo), x2: px(hi), y2: py(hi), class: "diagonal" }, s("title", {}, "y = x"));
}

function vLine(line, yd, px, py, top) {
  // The label sits in the top margin, clear of the points.
  return s(
    "g",
    { class: "vline" },
    s("line", { x1: px(line.x), x2: px(line.x), y1: py(yd[0]), y2: py(yd[1]) }),
    s("text", { x: px(line.x), y: top - 8, "text-anchor": "middle", class: "tick" }, line.label),
  );
}

// Points drawn on top of each other share one label ("α 0.5, 0.75, 1") instead of overprinting.
function mergedLabels(points, px, py) {
  const groups = [];
  for (const p of points.filter((q) => q.label)) {
    const near = groups.find((g) => Math.hypot(px(g.x) - px(p.x), py(g.y) - py(p.y)) < 9);
    if (near) near.label += `, ${p.label.replace(/^α /, "")}`;
    else groups.push({ x: p.x, y: p.y, label: p.label });
  }
  return groups;
}

function seriesGroup(se, colour, px, py, width) {
  const g = s("g", { class: "series", "data-series": se.name });
  const pts = se.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  if (se.line !== false && pts.length > 1) {
    const d = pts.map((p, i) => `${i ? "L" : "M"}${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(" ");
    g.append(s("path", { d, fill: "none", stroke: colour, "stroke-width": 2, class: se.dashed ? "dashed" : null }));
  }
  for (const p of pts) {
    const cls = ["point", p.highlight ? "highlight" : "", p.marker ? `marker-${p.marker}` : ""].join(" ").trim();
    const attrs = { cx: px(p.x), cy: py(p.y), r: p.highlight ? 6 : se.radius ?? 3.5, fill: colour, class: cls };
    for (const [k, v] of Object.entries(p.data || {})) attrs[`data-${k}`] = v;
    g.append(s("circle", attrs, s("title", {}, p.tip || `${p.x}, ${p.y}`)));
    if (p.highlight) g.append(s("circle", { cx: px(p.x), cy: py(p.y), r: 10, class: "ring", stroke: colour }));
    if (p.marker === "zeroshot") {
      g.append(s("rect", { x: px(p.x) - 6, y: py(p.y) - 6, width: 12, height: 12, class: "zs-mark", stroke: colour }));
    }
  }
  for (const l of mergedLabels(pts, px, py)) {
    // Labels near the right edge go to the left of their point, so none is cut off.
    const left = px(l.x) > width * 0.7;
    const attrs = { x: px(l.x) + (left ? -10 : 8), y: py(l.y) - 8, "text-anchor": left ? "end" : "start", class: "point-label" };
    g.append(s("text", attrs, l.label));
  }
  return g;
}
