// Building the page from data without ever parsing data as HTML: every text goes in as a text
// node, attributes are set one by one, and handlers are functions, never strings.

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key.startsWith("on")) {
      throw new Error(`handler ${key} must be a function`);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (key === "text") {
      node.textContent = String(value);
    } else if (key === "href" && !String(value).startsWith("#") && !String(value).startsWith("/")) {
      // Only in-page routes and same-origin paths: a javascript: URL from data never lands here.
      throw new Error(`refusing link target ${value}`);
    } else if (key === "value" && "value" in node) {
      node.value = String(value);
    } else if (key === "checked" || key === "selected" || key === "disabled" || key === "required" || key === "multiple") {
      node[key] = Boolean(value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: h("td", {class: "num"}, "0.93"). */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  apply(node, attrs);
  append(node, children);
  return node;
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  apply(node, attrs);
  append(node, children);
  return node;
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

export function replace(node, ...children) {
  clear(node);
  append(node, children);
  return node;
}

export function fmtTime(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return new Date(seconds * 1000).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function fmtNum(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toFixed(digits);
}

export function pct(value, digits = 1) {
  if (value === null || value === undefined) return "–";
  return `${(value * 100).toFixed(digits)} %`;
}

/** A table from column titles and rows of cells (strings or nodes); ``numeric``: every column
 * but the first holds numbers, headers aligned with them. */
export function table(columns, rows, { numeric = false, ...attrs } = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, columns.map((c, i) => h("th", { scope: "col", class: numeric && i > 0 ? "num" : null }, c)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => (c instanceof Node && (c.tagName === "TD" || c.tagName === "TH") ? c : h("td", {}, c)))))),
  );
}

export function link(route, ...children) {
  return h("a", { href: route }, ...children);
}

/** A route fragment for parts that are user data (model and set names). */
export function route(...parts) {
  return "#/" + parts.map((p) => encodeURIComponent(String(p))).join("/");
}

export function badge(status) {
  return h("span", { class: `badge badge-${String(status).replace(/[^a-z_]/gi, "")}` }, status);
}

/** Hide the current message (a new page starts without the last page's news). */
export function clearToast() {
  document.getElementById("toast").className = "toast";
}

export function toast(message, kind = "info") {
  const node = document.getElementById("toast");
  replace(node, message);
  node.className = `toast show toast-${kind}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => {
    node.className = "toast";
  }, 5000);
}
