// Description sets: the list, a viewer, and an editor whose save stores a new version.

import { api, ApiError, query } from "../api.js";
import { badge, fmtTime, h, replace, route, table } from "../dom.js";
import { scoresView } from "../scores.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export async function descriptionsPage(main, ctx) {
  const page = await api(`/descriptions${query({ limit: 100 })}`, { signal: ctx.signal });
  const rows = page.data.map((set) => [
    h("a", { href: route("descriptions", set.id) }, set.name),
    `v${set.version}`,
    set.status || "accepted",
    String(set.classes.length),
    String(Object.values(set.descriptions).reduce((n, texts) => n + texts.length, 0)),
    h("code", {}, set.id),
    fmtTime(set.created_at),
  ]);
  replace(
    main,
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, "Description sets"),
      ctx.can("train") ? h("a", { href: "#/descriptions/new", class: "button", id: "new-set" }, "New description set") : null,
    ),
    rows.length
      ? table(["Name", "Version", "Status", "Classes", "Descriptions", "Id", "Created"], rows, { id: "sets-table" })
      : h("p", { class: "muted" }, "No description sets yet."),
  );
}

export async function descriptionPage(main, ctx, id) {
  const set = await api(`/descriptions/${encodeURIComponent(id)}`, { signal: ctx.signal });
  replace(
    main,
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, "Descriptions ", h("span", { class: "set-name" }, set.name), ` v${set.version}`),
      ctx.can("train") ? h("a", { href: `${route("descriptions", set.id)}/edit`, class: "button", id: "edit-set" }, "Edit as a new version") : null,
    ),
    h("p", { class: "muted" }, `${set.id} · created ${fmtTime(set.created_at)} · `, badge(set.status || "accepted")),
    set.status === "candidates" ? h("p", { id: "pool-note" }, "A pool of candidates: no job trains on it. Score it and accept a proposal to make a set jobs can use.") : null,
    set.provenance ? h("p", { class: "muted", id: "provenance" }, provenanceText(set.provenance)) : null,
    h(
      "dl",
      { class: "pairs wide", id: "set-view" },
      Object.entries(set.descriptions).map(([cls, texts]) => [h("dt", {}, cls), h("dd", {}, h("ul", {}, texts.map((t) => h("li", {}, t))))]),
    ),
    ctx.can("train") ? await scorePanel(ctx, set) : null,
  );
}

function provenanceText(p) {
  if (p.source === "draft") return `Drafted by ${p.model} at ${fmtTime(p.drafted_at)}.`;
  if (p.source === "proposal") return `Accepted from scoring ${p.evaluation} (pool ${p.pool || "inline"}, dataset ${p.dataset}, backbone ${p.model}).`;
  return JSON.stringify(p);
}

/** Score this set's sentences (plus, optionally, templates naming each class) on a dataset's
 * training images with a frozen backbone; show every candidate's scores; accept the proposal. */
async function scorePanel(ctx, set) {
  const datasets = await api(`/datasets${query({ limit: 100 })}`, { signal: ctx.signal });
  const dataset = h("select", { id: "score-dataset" }, datasets.data.map((d) => h("option", { value: d.id }, `${d.name} (${d.id})`)));
  const model = h("input", { id: "score-model", type: "text", required: true, placeholder: "offline-lite0-minilm" });
  const templates = h("input", { id: "score-templates", type: "checkbox", checked: true });
  const status = h("p", { id: "score-status", role: "status" });
  const results = h("div", { id: "score-results" });
  const form = h(
    "form",
    { class: "card", id: "score-form" },
    h("h2", {}, "Score these descriptions"),
    h("p", { class: "muted" }, "Each sentence is scored by the frozen backbone on the dataset's training images (never its validation, test or OOD images) against the class named in a photo template; the sentences that do as well make the proposed set."),
    h("div", { class: "field" }, h("label", { for: "score-dataset" }, "Dataset"), dataset),
    h("div", { class: "field" }, h("label", { for: "score-model" }, "Backbone"), model),
    h("div", { class: "field inline" }, templates, h("label", { for: "score-templates" }, "Add candidates that name each class")),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "score-set" }, "Score")),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(results, "");
    try {
      const body = { dataset: dataset.value, model: model.value.trim(), pool: set.id, templates: templates.checked };
      let evaluation = await api("/descriptions/score", { method: "POST", json: body });
      while (!TERMINAL.has(evaluation.status) && !ctx.signal.aborted) {
        replace(status, `Scoring ${evaluation.id}: ${evaluation.status}…`);
        await new Promise((done) => setTimeout(done, 1000));
        evaluation = await api(`/evaluations/${encodeURIComponent(evaluation.id)}`, { signal: ctx.signal });
      }
      if (evaluation.status !== "succeeded") {
        replace(status, h("span", { class: "error" }, `Scoring ${evaluation.status}: ${evaluation.error?.message || ""}`));
        return;
      }
      replace(status, `Scoring ${evaluation.id} succeeded.`);
      replace(results, scoresView(evaluation.results.scores), acceptForm(set, evaluation));
    } catch (problem) {
      replace(status, h("span", { class: "error" }, problem instanceof ApiError ? problem.message : String(problem)));
    }
  });
  return h("section", {}, form, results);
}

function acceptForm(set, evaluation) {
  const name = h("input", { id: "accept-name", type: "text", required: true, value: set.name });
  const error = h("p", { class: "error", role: "alert", id: "accept-error" });
  const form = h(
    "form",
    { class: "inline-form", id: "accept-form" },
    h("label", { for: "accept-name" }, "Accept the proposed set as a new version of"),
    name,
    h("button", { type: "submit", id: "accept-proposal" }, "Accept"),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const created = await api("/descriptions/accept", { method: "POST", json: { evaluation: evaluation.id, name: name.value.trim() } });
      location.hash = route("descriptions", created.id);
    } catch (problem) {
      replace(error, problem instanceof ApiError ? problem.message : String(problem));
    }
  });
  return form;
}

function classRow(list, cls = "", texts = []) {
  const index = list.children.length;
  const name = h("input", { type: "text", class: "class-name", id: `class-${index}`, value: cls, required: true });
  const area = h("textarea", { class: "class-texts", id: `texts-${index}`, rows: Math.max(2, texts.length), value: texts.join("\n") });
  const remove = h("button", { type: "button", class: "secondary" }, "Remove class");
  const row = h(
    "fieldset",
    { class: "class-row" },
    h("legend", {}, `Class ${index + 1}`),
    h("div", { class: "field" }, h("label", { for: name.id }, "Class name"), name),
    h("div", { class: "field" }, h("label", { for: area.id }, "Descriptions (one per line: core features, not background or colour)"), area),
    remove,
  );
  remove.addEventListener("click", () => row.remove());
  list.append(row);
}

/** {class: [texts]} from the editor's rows; empty lines are dropped. */
function collect(list) {
  const result = {};
  for (const row of list.querySelectorAll(".class-row")) {
    const cls = row.querySelector(".class-name").value.trim();
    const texts = row.querySelector(".class-texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
    if (cls in result) throw new Error(`Class “${cls}” is given twice.`);
    result[cls] = texts;
  }
  return result;
}

export async function descriptionEditor(main, ctx, id) {
  if (!ctx.can("train")) {
    replace(main, h("h1", {}, "Edit descriptions"), h("p", { class: "error" }, "This key lacks the 'train' scope."));
    return;
  }
  const base = id ? await api(`/descriptions/${encodeURIComponent(id)}`, { signal: ctx.signal }) : null;
  const name = h("input", { id: "set-name", type: "text", required: true, value: base?.name || "", readonly: base ? true : null });
  const list = h("div", { id: "class-rows" });
  for (const [cls, texts] of Object.entries(base?.descriptions || { "": [] })) classRow(list, cls, texts);
  const error = h("p", { class: "error", role: "alert", id: "editor-error" });
  const add = h("button", { type: "button", class: "secondary", id: "add-class" }, "Add class");
  add.addEventListener("click", () => classRow(list));
  const form = h(
    "form",
    { class: "card", id: "editor-form" },
    h("div", { class: "field" }, h("label", { for: "set-name" }, "Set name"), name, base ? h("small", { class: "muted" }, `saving stores version ${base.version + 1} or later of “${base.name}”`) : null),
    list,
    h("div", { class: "actions" }, add, h("button", { type: "submit", id: "save-set" }, "Save as a new version")),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(error, "");
    try {
      const created = await api("/descriptions", { method: "POST", json: { name: name.value.trim(), descriptions: collect(list) } });
      location.hash = route("descriptions", created.id);
    } catch (problem) {
      replace(error, problem instanceof ApiError ? problem.message : problem.message || String(problem));
    }
  });
  replace(main, h("h1", {}, base ? `Edit “${base.name}” v${base.version}` : "New description set"), form);
}
