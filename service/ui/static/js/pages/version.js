// A model version's card: the WiSE-FT alpha curve and the effective-robustness plot, metrics
// per split and head, per-class accuracy, descriptions, diagnostics, and alias controls.

import { api, ApiError } from "../api.js";
import { badge, fmtNum, fmtTime, h, pct, replace, route, table, toast } from "../dom.js";
import { chart, COLOURS } from "../plot.js";
import { diagnosticsView } from "../scores.js";
import { monitorSection } from "./monitor.js";

const HEADS = ["dual", "default", "concept"];
const VAL_SPLITS = new Set(["val", "validation", "id_val"]);

/** OOD splits of a {split: …} mapping: named ood* (the service's default for a job's splits). */
export function oodSplits(bySplit) {
  return Object.keys(bySplit || {}).filter((name) => name.toLowerCase().startsWith("ood"));
}

/** The in-distribution split to plot OOD against: a held-out ID test split, else validation. */
export function idSplit(bySplit) {
  const names = Object.keys(bySplit || {}).filter((name) => !name.toLowerCase().startsWith("ood"));
  return names.find((name) => !VAL_SPLITS.has(name)) || names[0] || null;
}

export async function versionPage(main, ctx, name, version) {
  const base = `/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`;
  const card = await api(base, { signal: ctx.signal });
  const report = await optionalReport(base, ctx.signal);
  const headSelect = h(
    "select",
    { id: "head-select" },
    HEADS.map((head) => h("option", { value: head }, head === "dual" ? "dual (served)" : head)),
  );
  const plots = h("div", { class: "plots" });
  const metrics = h("section", {});
  const perClass = h("section", {});
  const draw = () => {
    const head = headSelect.value;
    replace(plots, ...curvePlots(card, head));
    replace(metrics, h("h2", {}, `Metrics per split and head at the selected α = ${fmtNum(card.wise_ft?.selected_alpha, 2)}`), metricsTable(card));
    replace(perClass, h("h2", {}, `Per-class accuracy (${head} head, selected α)`), perClassTable(card, head));
  };
  headSelect.addEventListener("change", draw);
  const aliases = h("section", { id: "alias-section" });
  replace(
    main,
    h("div", { class: "title-row" }, h("h1", {}, h("a", { href: route("models", name) }, name), ` / v${card.version}`), badge(card.status), card.aliases.map((a) => h("span", { class: "alias" }, `@${a}`))),
    h("p", {}, h("a", { href: `#/try?model=${encodeURIComponent(`${name}/${card.version}`)}`, class: "button", id: "try-version" }, "Try this version")),
    summary(card),
    h("section", {}, h("h2", {}, "WiSE-FT curve"), h("div", { class: "field inline" }, h("label", { for: "head-select" }, "Head"), headSelect), plots, otherPoint(card, ctx, name, base)),
    metrics,
    perClass,
    descriptionsSection(card, report),
    monitorSection(base, report, ctx.signal),
    aliases,
  );
  draw();
  await drawAliases(aliases, ctx, name, card.version);
}

/** What the rule served, and a control to serve another point of the curve instead: a new
 * version re-merged at that alpha from this one's stored ends (POST …/merge), this one kept. */
function otherPoint(card, ctx, name, base) {
  const wise = card.wise_ft || {};
  const curve = wise.curve || [];
  const head = wise.selected_head || "dual";
  const served = h(
    "p",
    { id: "served-point" },
    `Served: α = ${fmtNum(wise.selected_alpha, 2)}, ${head} head, ${
      wise.selection === "manual"
        ? `chosen by hand (re-merged from ${card.origin?.from || "another version"})`
        : `picked by the ${wise.selection || "–"} rule on validation ${wise.metric || "top1"}`
    }.`,
  );
  if (curve.length < 2 || !ctx.can("train")) return served;
  const select = h(
    "select",
    { id: "merge-alpha" },
    curve.map((p) => {
      const isServed = p.alpha === wise.selected_alpha;
      return h("option", { value: String(p.alpha), selected: isServed }, `α = ${fmtNum(p.alpha, 2)}${isServed ? " (served)" : ""}`);
    }),
  );
  const form = h(
    "form",
    { class: "inline-form", id: "merge-form" },
    h("label", { for: "merge-alpha" }, "Serve another point"),
    select,
    h("button", { type: "submit", id: "merge-version" }, "Register as a new version"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const alpha = Number(select.value);
    try {
      const made = await api(`${base}/merge`, { method: "POST", json: { alpha, description: `v${card.version} re-merged at alpha ${alpha}` } });
      toast(`v${made.version}: v${card.version} re-merged at α = ${alpha}.`);
      location.hash = route("models", name, "versions", made.version);
    } catch (error) {
      toast(error.message, "error");
    }
  });
  return h("div", {}, served, form, h("p", { class: "muted" }, "Any point of the curve can be served: it becomes a new version (an alias moves to it when you say so); this version stays as it is."));
}

const REPORT_ROUTE = "/models/{name}/versions/{version}/report";
let routes = null;

async function optionalReport(base, signal) {
  // A fuller report route may exist on newer servers: asked only when the server's OpenAPI
  // schema lists it (a 404 would be a console error); without it the card is enough.
  routes ??= api("/openapi.json", { signal }).then((schema) => new Set(Object.keys(schema.paths || {})));
  if (!(await routes).has(REPORT_ROUTE)) return null;
  try {
    return await api(`${base}/report`, { signal });
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

function summary(card) {
  const fields = [
    ["Status", card.status_message ? `${card.status} (${card.status_message})` : card.status],
    ["Objective", card.objective || "–"],
    ["β (dual inference)", fmtNum(card.beta, 2)],
    ["Backbone", [card.backbone?.arch, card.backbone?.pretrained].filter(Boolean).join(" · ") || "–"],
    ["Classes", String(card.classes.length)],
    ["Dataset fingerprint", h("code", {}, String(card.dataset?.fingerprint || "–").slice(0, 16))],
    ["Job", card.job_id ? h("a", { href: route("jobs", card.job_id) }, card.job_id) : "–"],
    ["Source", h("code", {}, card.source || "–")],
    ["Selection", `${card.wise_ft?.selection || "–"} on ${card.wise_ft?.metric || "top1"}`],
    ["Created", fmtTime(card.created_at)],
  ];
  const hyper = Object.entries(card.hyperparameters || {}).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]);
  return h(
    "div",
    { class: "grid" },
    h("section", {}, h("h2", {}, "Card"), dl(fields)),
    h("section", {}, h("h2", {}, "Training settings"), hyper.length ? dl(hyper) : h("p", { class: "muted" }, "None (zero-shot).")),
  );
}

function dl(rows) {
  return h("dl", { class: "pairs" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

/** Top-1 along alpha per split, and OOD against ID (effective robustness), for one head. */
export function curvePlots(card, head) {
  const curve = card.wise_ft?.curve || [];
  if (!curve.length) return [h("p", { class: "muted" }, "This version has no WiSE-FT curve.")];
  const selected = card.wise_ft.selected_alpha;
  const splits = Object.keys(curve[0].metrics || {});
  const top1 = (point, split) => point.metrics?.[split]?.[head]?.top1;
  const alphaSeries = splits.map((split) => ({
    name: split,
    dashed: split.toLowerCase().startsWith("ood"),
    points: curve.map((p) => ({
      x: p.alpha,
      y: 100 * top1(p, split),
      highlight: p.alpha === selected,
      marker: p.alpha === 0 ? "zeroshot" : null,
      data: { alpha: p.alpha, split },
      tip: `${split}, α = ${p.alpha}: top-1 ${pct(top1(p, split))}${p.alpha === 0 ? " (zero-shot)" : ""}`,
    })),
  }));
  const alphaPlot = chart({
    id: "alpha-curve",
    title: "Accuracy along the WiSE-FT mixing weight",
    description: `${head} head; α = 0 is the zero-shot model (square), α = 1 the fine-tuned one; ring: selected α`,
    xLabel: "α (weight of the fine-tuned model)",
    yLabel: "top-1 accuracy (%)",
    xDomain: [-0.03, 1.03],
    series: alphaSeries,
    vLines: selected === undefined ? [] : [{ x: selected, label: `selected α = ${selected}` }],
  });
  const idName = idSplit(curve[0].metrics);
  const ood = oodSplits(curve[0].metrics);
  if (!idName || !ood.length) return [alphaPlot, h("p", { class: "muted" }, "No OOD split (named ood…) to plot against ID accuracy.")];
  const oodMean = (p) => (100 * ood.reduce((sum, sp) => sum + (top1(p, sp) ?? 0), 0)) / ood.length;
  const robust = chart({
    id: "robustness-plot",
    title: "Effective robustness: OOD against ID accuracy along α",
    description: `${head} head; x: ${idName}, y: mean of ${ood.join(", ")}; dashed: y = x`,
    xLabel: `ID top-1 on ${idName} (%)`,
    yLabel: "mean OOD top-1 (%)",
    diagonal: true,
    series: [
      {
        name: "WiSE-FT curve (α = 0 → 1)",
        colour: COLOURS[0],
        points: curve.map((p) => ({
          x: 100 * top1(p, idName),
          y: oodMean(p),
          label: `α ${p.alpha}`,
          highlight: p.alpha === selected,
          marker: p.alpha === 0 ? "zeroshot" : null,
          data: { alpha: p.alpha },
          tip: `α = ${p.alpha}: ID ${fmtNum(top1(p, idName))}, OOD ${fmtNum(oodMean(p) / 100)}${p.alpha === 0 ? " (zero-shot)" : ""}`,
        })),
      },
    ],
  });
  return [alphaPlot, robust];
}

function metricsTable(card) {
  const selected = card.metrics?.selected || {};
  const zeroshot = card.metrics?.zeroshot || {};
  const rows = Object.keys(selected).map((split) => [
    h("th", { scope: "row" }, split),
    String(selected[split]?.dual?.n ?? "–"),
    ...HEADS.map((head) => fmtNum(selected[split]?.[head]?.top1)),
    fmtNum(zeroshot[split]?.dual?.top1),
    fmtNum(selected[split]?.dual?.macro_f1),
    fmtNum(selected[split]?.dual?.worst_group_acc),
    fmtNum(selected[split]?.dual?.ece),
    fmtNum(selected[split]?.dual?.nll),
  ]);
  if (!rows.length) return h("p", { class: "muted" }, "No metrics on this card.");
  return table(
    ["Split", "Images", "Top-1 dual", "Top-1 default", "Top-1 concept", "Zero-shot top-1 (dual)", "Macro-F1 (dual)", "Worst-group (dual)", "ECE (dual)", "NLL (dual, nats)"],
    rows.map((r) => r.map((c, i) => (i === 0 ? c : h("td", { class: "num" }, c)))),
    { id: "metrics-table", numeric: true },
  );
}

function perClassTable(card, head) {
  const selected = card.metrics?.selected || {};
  const splits = Object.keys(selected);
  if (!splits.length) return h("p", { class: "muted" }, "No per-class metrics.");
  const classes = card.classes.length ? card.classes : Object.keys(selected[splits[0]]?.[head]?.per_class_acc || {});
  return table(
    ["Class", ...splits],
    classes.map((cls) => [h("th", { scope: "row" }, cls), ...splits.map((sp) => h("td", { class: "num" }, fmtNum(selected[sp]?.[head]?.per_class_acc?.[cls])))]),
    { id: "per-class-table", numeric: true },
  );
}

function descriptionsSection(card, report) {
  const entries = Object.entries(card.descriptions || {});
  const diagnostics = report?.description_diagnostics ?? report?.diagnostics ?? null;
  return h(
    "section",
    { id: "descriptions-section" },
    h("h2", {}, "Class descriptions"),
    entries.length
      ? h("dl", { class: "pairs wide" }, entries.map(([cls, texts]) => [h("dt", {}, cls), h("dd", {}, h("ul", {}, texts.map((t) => h("li", {}, t))))]))
      : h("p", { class: "muted" }, "None stored on this card."),
    h("h3", {}, "Description diagnostics"),
    diagnostics ? diagnosticsView(diagnostics) : h("p", { class: "muted", id: "no-diagnostics" }, "This server's version report gives no description diagnostics."),
  );
}

async function drawAliases(box, ctx, name, version) {
  const model = await api(`/models/${encodeURIComponent(name)}`, { signal: ctx.signal });
  const entries = Object.entries(model.aliases || {});
  const canEdit = ctx.can("train");
  const rows = entries.map(([alias, v]) => [
    `@${alias}`,
    h("a", { href: route("models", name, "versions", v) }, `v${v}`),
    canEdit ? h("button", { type: "button", class: "secondary", "data-alias": alias, onclick: () => removeAlias(box, ctx, name, version, alias) }, `Remove @${alias}`) : "",
  ]);
  const input = h("input", { id: "alias-name", type: "text", required: true, pattern: "[A-Za-z][A-Za-z0-9_\\-]{0,99}", placeholder: "champion" });
  const form = canEdit
    ? h(
        "form",
        { class: "inline-form", id: "alias-form" },
        h("label", { for: "alias-name" }, `Point an alias at v${version}`),
        input,
        h("button", { type: "submit", id: "set-alias" }, "Set alias"),
      )
    : null;
  form?.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api(`/models/${encodeURIComponent(name)}/aliases/${encodeURIComponent(input.value.trim())}`, { method: "PUT", json: { version: Number(version) } });
      toast(`@${input.value.trim()} now points at v${version}.`);
      await drawAliases(box, ctx, name, version);
    } catch (error) {
      toast(error.message, "error");
    }
  });
  replace(
    box,
    h("h2", {}, "Aliases"),
    rows.length ? table(["Alias", "Version", ""], rows, { id: "aliases-table" }) : h("p", { class: "muted" }, "No aliases on this model."),
    form,
  );
}

async function removeAlias(box, ctx, name, version, alias) {
  try {
    await api(`/models/${encodeURIComponent(name)}/aliases/${encodeURIComponent(alias)}`, { method: "DELETE" });
    toast(`@${alias} removed.`);
    await drawAliases(box, ctx, name, version);
  } catch (error) {
    toast(error.message, "error");
  }
}
