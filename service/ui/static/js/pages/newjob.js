// The form behind POST /finetune: dataset, description set, method, a few hyperparameters and
// WiSE-FT. Blank numbers mean "auto" (the server resolves them from the dataset size).

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
  const [datasets, sets] = await Promise.all([
    api(`/datasets${query({ limit: 100 })}`, { signal: ctx.signal }),
    api(`/descriptions${query({ limit: 100 })}`, { signal: ctx.signal }),
  ]);
  // One key per rendered form: a double submit or a retried request creates one job.
  const idempotencyKey = crypto.randomUUID();
  const error = h("p", { class: "error", role: "alert", id: "form-error" });
  const form = h(
    "form",
    { class: "card", id: "new-job-form", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Data"),
      field("dataset", "Dataset", select(datasets.data.map((d) => [d.id, `${d.name} (${d.id}, ${d.classes.length} classes, ${d.num_images} images)`]))),
      field("descriptions", "Description set", select([["", "none"], ...sets.data.map((s) => [s.id, `${s.name} v${s.version} (${s.classes.length} classes)`])]), "DRM needs one; FLYP and CE may use it for the concept head"),
    ),
    h("fieldset", {}, h("legend", {}, "Model and method"),
      field("model", "Base model", h("input", { type: "text", required: true, placeholder: "ViT-B-16 or models:/name@champion", value: ctx.params.get("model") || "" }), "an open_clip architecture, or a registered model reference"),
      field("pretrained", "Pretrained tag", h("input", { type: "text", placeholder: "openai (blank: none or the reference's weights)" })),
      field("method", "Method", select([["drm", "DRM (dual risk minimisation)"], ["flyp", "FLYP"], ["ce", "Cross-entropy"], ["zeroshot", "Zero-shot (no training)"]], "drm")),
      field("wrm", "WRM reading (DRM)", select([["weight", "weight"], ["soft", "soft"]], "weight")),
      field("lam", "λ (DRM: ERM + λ·WRM)", number({ step: "any", min: 0, placeholder: "1.0" })),
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
      field("selection", "Selection rule", select([["tolerance", "tolerance (smallest alpha within noise of the best)"], ["best_id_val", "best ID validation"], ["fixed", "fixed"]], "tolerance")),
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
      body = requestBody(form);
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
  replace(main, h("h1", {}, "New fine-tuning job"), form);
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

/** The POST /finetune body from the form; blank fields are left out (the server's defaults). */
export function requestBody(form) {
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
  if (type === "drm") {
    method.objective = { wrm: value(form, "wrm") };
    const lam = optionalNumber(form, "lam");
    if (lam !== undefined) method.objective.lam = lam;
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
