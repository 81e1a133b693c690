// Description diagnostics and candidate scores as tables: per class, weak classes flagged and
// what each is taken for; per candidate, its scores, whether it is kept, and why not.

import { fmtNum, h, pct, table } from "./dom.js";

/** The concept head against the default head, and per group: accepted or the reasons why not. */
function verdictView(diagnostics) {
  if (diagnostics.default_top1 === undefined) return null; // stored before the comparison existed
  const groups = Object.entries(diagnostics.groups || {});
  return h(
    "div",
    { class: "verdict" },
    h(
      "p",
      { id: "diagnostics-verdict", class: diagnostics.accepted ? "" : "error" },
      `Default head (the class names): ${pct(diagnostics.default_top1)}; concept head ${fmtNum(diagnostics.gap * 100, 1)} points from it. `,
      diagnostics.accepted
        ? `Accepted: within ${pct(diagnostics.accept_gap)} of the default head${groups.length > 1 ? " and as right on every group" : ""}.`
        : `Not accepted: ${(diagnostics.reasons || []).join("; ")}.`,
    ),
    groups.length > 1
      ? table(
          ["Group", "Images", "Concept top-1", "Default top-1"],
          groups.map(([g, v]) => [h("th", { scope: "row" }, g), h("td", { class: "num" }, String(v.n)), h("td", { class: "num" }, pct(v.concept_top1)), h("td", { class: "num" }, pct(v.default_top1))]),
          { id: "diagnostics-groups" },
        )
      : null,
  );
}

/** models.diagnostics' output: a summary line, the guard's warning, the verdict, a per-class table. */
export function diagnosticsView(diagnostics, id = "diagnostics-table") {
  const weak = new Set(diagnostics.weak || []);
  const perClass = Object.entries(diagnostics.per_class || {});
  const defaults = diagnostics.default_per_class;
  const rows = perClass.map(([cls, v]) => {
    const flagged = weak.has(cls);
    const row = [
      h("th", { scope: "row" }, cls),
      h("td", { class: "num" }, String(v.n)),
      h("td", { class: "num" }, pct(v.concept_top1)),
      ...(defaults ? [h("td", { class: "num" }, defaults[cls] === undefined ? "–" : pct(defaults[cls]))] : []),
      h("td", { class: "num" }, fmtNum(v.pc_true)),
      h("td", {}, v.confused_with ?? "–"),
      h("td", {}, flagged ? h("span", { class: "badge badge-warn" }, "weak") : "ok"),
    ];
    return row;
  });
  const headers = ["Class", "Images", "Concept top-1", ...(defaults ? ["Default top-1"] : []), "Mean p_c (true class)", "Most often taken for", ""];
  const node = table(headers, rows, { id });
  node.querySelectorAll("tbody tr").forEach((tr, i) => {
    if (weak.has(perClass[i][0])) tr.classList.add("weak");
    tr.dataset.class = perClass[i][0];
  });
  return h(
    "div",
    { class: "diagnostics" },
    h(
      "p",
      {},
      `The frozen concept head gets ${pct(diagnostics.concept_top1)} of ${diagnostics.images} training images right (chance ${pct(diagnostics.chance)}); `,
      weak.size ? `${weak.size} weak class${weak.size > 1 ? "es" : ""} (top-1 below ${pct(diagnostics.weak_threshold)}): rewrite their descriptions (name the class; its shape and parts, never the background), or score candidates.` : "no class looks weak.",
    ),
    diagnostics.warning ? h("p", { class: "error", id: "guard-warning" }, diagnostics.warning) : null,
    verdictView(diagnostics),
    node,
  );
}

/** models.description_scoring's output: per class, then per candidate. */
export function scoresView(scores) {
  const classes = Object.entries(scores.per_class || {});
  const summary = table(
    ["Class", "Template baseline top-1", "Kept", "Dropped", ""],
    classes.map(([cls, entry]) => [
      h("th", { scope: "row" }, cls),
      h("td", { class: "num" }, pct(entry.baseline.top1)),
      h("td", { class: "num" }, String(entry.proposed.length)),
      h("td", { class: "num" }, String(entry.candidates.length - entry.proposed.length)),
      h("td", {}, entry.weak ? [h("span", { class: "badge badge-warn" }, "weak"), " ", entry.note || "no candidate passes"] : "ok"),
    ]),
    { id: "score-classes" },
  );
  return h(
    "div",
    { id: "scores" },
    h(
      "p",
      { id: "scores-summary" },
      `${scores.candidates} candidates on ${scores.images} training images: the proposed set's concept head gets ${pct(scores.proposed_concept_top1)}, the template baseline ${pct(scores.baseline_top1)}.`,
    ),
    summary,
    classes.map(([cls, entry]) => candidatesTable(cls, entry)),
  );
}

function candidatesTable(cls, entry) {
  const grouped = entry.candidates.some((c) => c.worst_group_top1 !== undefined);
  const rows = entry.candidates.map((c) => [
    h("td", {}, c.kept ? h("span", { class: "badge badge-succeeded" }, "kept") : h("span", { class: "badge badge-cancelled" }, "dropped")),
    h("td", {}, c.text),
    h("td", { class: "num" }, pct(c.top1)),
    h("td", { class: "num" }, pct(c.accuracy)),
    h("td", { class: "num" }, fmtNum(c.margin)),
    grouped ? h("td", { class: "num" }, c.worst_group_top1 == null ? "–" : pct(c.worst_group_top1)) : null,
    h("td", { class: "reasons" }, c.reasons.length ? h("ul", {}, c.reasons.map((r) => h("li", {}, r))) : ""),
  ]);
  const columns = ["", "Candidate", "Top-1 (class)", "Accuracy (all)", "Margin", ...(grouped ? ["Worst group"] : []), "Why"];
  return h("section", { class: "candidates" }, h("h4", {}, cls), table(columns, rows.map((r) => r.filter(Boolean)), { class: "candidates-table", "data-class": cls }));
}
