// The form behind POST /finetune: dataset, description set, method, a few hyperparameters and
// WiSE-FT. Blank numbers mean "auto" (the server resolves them from the dataset size). The
// methods and their knobs come from GET /objectives: a newly registered objective shows up here.

import { api, ApiError, query } from "../api.js";
import { h, replace, route } from "../dom.js";

function field(id, label, control, hint) {
  control.id = id;
  control.name = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("small", { class: "muted" }, hint) : null);
}

function select(options, value) {
  return h("select", {}, options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)));
}

function number(attrs) {
  return h("input", { type: "number", ...attrs });
}

export async function newJobPage(main, ctx) {
  if (!ctx.can("train")) {
    replace(main, h("h1", {}, "New job"), h("p", { class: "error" }, "This key lacks the 'train' scope: it cannot create jobs."));
    return;
  }
  const [datasets, sets, objectives] = await Promise.all([
    api(`/datasets${query({ limit: 100 })}`, { signal: ctx.signal }),
    api(`/descriptions${query({ limit: 100 })}`, { signal: ctx.signal }),
    api("/objectives", { signal: ctx.signal }),
  ]);
  const knobs = knobFields(objectives);
  // One key per rendered form: a double submit or a retried request creates one job.
  const idempotencyKey = crypto.randomUUID();
  const error = h("p", { class: "error", role: "alert", id: "form-error" });
  const form = h(
    "form",
    { class: "card", id: "new-job-form", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Data"),
      field("dataset", "Dataset", select(datasets.data.map((d) => [d.id, `${d.name} (${d.id}, ${d.classes.length} classes, ${d.num_images} images)`]))),
      field("descriptions", "Description set", select([["", "none"], ...sets.data.map((s) => [s.id, `${s.name} v${s.version} (${s.classes.length} classes)`])]), descriptionsHint(objectives.data)),
    ),
    h("fieldset", {}, h("legend", {}, "Model and method"),
      field("model", "Base model", h("input", { type: "text", required: true, placeholder: "ViT-B-16 or models:/name@champion", value: ctx.params.get("model") || "" }), "an open_clip architecture, or a registered model reference"),
      field("pretrained", "Pretrained tag", h("input", { type: "text", placeholder: "openai (blank: none or the reference's weights)" })),
      field("method", "Method", select(objectives.data.map((o) => [o.name, o.label]), objectives.default)),
      [...knobs.values()],
      field("registered_model_name", "Register as", h("input", { type: "text", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,99}" }), "a registry name: letters, digits, _ . -"),
    ),
    h("fieldset", {}, h("legend", {}, "Hyperparameters (blank: auto)"),
      field("n_epochs", "Epochs", number({ min: 1, step: 1 })),
      field("max_steps", "Max steps", number({ min: 1, step: 1 })),
      field("batch_size", "Batch size", number({ min: 2, step: 1 })),
      field("learning_rate", "Learning rate", number({ step: "any", min: 0 })),
      field("seed", "Seed", number({ min: 0, step: 1 })),
    ),
    h("fieldset", {}, h("legend", {}, "WiSE-FT"),
      field("alphas", "Alphas", h("input", { type: "text", value: "0, 0.25, 0.5, 0.75, 1" }), "mixing weights to evaluate, comma-separated, each in [0, 1]"),
      field("selection", "Selection rule", select([["tolerance", "tolerance (smallest alpha within noise of the best)"], ["best_id_val", "best ID validation"], ["fixed", "fixed"], ["paired", "paired (alphas a paired test cannot tell from the best; lowest validation NLL)"]], "tolerance")),
      field("fixed_alpha", "Fixed alpha", number({ step: "any", min: 0, max: 1, placeholder: "0.5" })),
    ),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "create-job" }, "Create job"), h("a", { href: "#/jobs" }, "Back to jobs")),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(error, "");
    for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
    let body;
    try {
      body = requestBody(form, objectives.data);
    } catch (problem) {
      replace(error, problem.message);
      return;
    }
    const button = form.querySelector("#create-job");
    button.disabled = true;
    try {
      const job = await api("/finetune", { method: "POST", json: body, extraHeaders: { "Idempotency-Key": idempotencyKey } });
      location.hash = route("jobs", job.id);
    } catch (problem) {
      button.disabled = false;
      replace(error, problem instanceof ApiError ? problem.message : String(problem));
      markInvalid(form, problem.param);
    }
  });
  const method = form.elements.namedItem("method");
  const showKnobs = () => {
    const chosen = objectives.data.find((o) => o.name === method.value);
    const names = new Set(chosen ? chosen.knobs.map((k) => k.name) : []);
    for (const [name, node] of knobs) node.hidden = !names.has(name);
  };
  method.addEventListener("change", showKnobs);
  showKnobs();
  replace(main, h("h1", {}, "New fine-tuning job"), form);
}

function descriptionsHint(objectives) {
  const needing = objectives.filter((o) => o.needs_descriptions).map((o) => o.label);
  const need = needing.length ? `${needing.join(", ")} need${needing.length === 1 ? "s" : ""} one; ` : "";
  return `${need}the others may use it for the concept head`;
}

/** One field per knob any objective reads, keyed by name (the default method's first, in its
 * order); only the chosen method's are shown. */
function knobFields(objectives) {
  const fields = new Map();
  const first = objectives.data.filter((o) => o.name === objectives.default);
  for (const objective of [...first, ...objectives.data]) {
    for (const knob of objective.knobs) {
      if (!fields.has(knob.name)) fields.set(knob.name, field(knob.name, knob.name, knobControl(knob), knob.description));
    }
  }
  return fields;
}

function knobControl(knob) {
  if (knob.type === "choice") return select(knob.choices.map((c) => [c, c]), knob.default);
  if (knob.type === "boolean") return select([["true", "yes"], ["false", "no"]], String(knob.default));
  if (knob.type === "number") return number({ step: "any", min: knob.minimum, placeholder: String(knob.default) });
  return h("input", { type: "text", placeholder: String(knob.default) });
}

function knobValue(form, knob) {
  if (knob.type === "boolean") return value(form, knob.name) === "true";
  if (knob.type === "number") return optionalNumber(form, knob.name);
  return value(form, knob.name) || undefined;
}

function markInvalid(form, param) {
  if (!param) return;
  const name = String(param).split(".").pop();
  const control = form.querySelector(`[name="${CSS.escape(name)}"]`);
  if (control) {
    control.setAttribute("aria-invalid", "true");
    control.focus();
  }
}

function value(form, name) {
  return form.elements.namedItem(name).value.trim();
}

function optionalNumber(form, name) {
  const text = value(form, name);
  return text === "" ? undefined : Number(text);
}

/** The POST /finetune body from the form; blank fields are left out (the server's defaults).
 * ``objectives`` is GET /objectives' data: the chosen method's knobs go in ``method.objective``. */
export function requestBody(form, objectives) {
  const type = value(form, "method");
  const hyperparameters = {};
  for (const key of ["n_epochs", "max_steps", "batch_size", "learning_rate"]) {
    const v = optionalNumber(form, key);
    if (v !== undefined) hyperparameters[key] = v;
  }
  const alphas = value(form, "alphas")
    .split(/[,\s]+/)
    .filter(Boolean)
    .map(Number);
  if (alphas.some((a) => !Number.isFinite(a))) throw new Error("Alphas must be numbers separated by commas.");
  const wise = { alphas, selection: value(form, "selection") };
  const fixed = optionalNumber(form, "fixed_alpha");
  if (fixed !== undefined) wise.fixed_alpha = fixed;
  const method = { type };
  const chosen = objectives.find((o) => o.name === type);
  for (const knob of chosen ? chosen.knobs : []) {
    const v = knobValue(form, knob);
    if (v !== undefined) method.objective = { ...method.objective, [knob.name]: v };
  }
  const body = {
    model: value(form, "model"),
    dataset: value(form, "dataset"),
    method,
    hyperparameters,
    wise_ft: wise,
    registered_model_name: value(form, "registered_model_name"),
  };
  if (value(form, "pretrained")) body.pretrained = value(form, "pretrained");
  if (value(form, "descriptions")) body.descriptions = value(form, "descriptions");
  const seed = optionalNumber(form, "seed");
  if (seed !== undefined) body.seed = seed;
  return body;
}
