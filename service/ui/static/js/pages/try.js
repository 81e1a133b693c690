// Try it: classify dropped or chosen images with a model reference, through POST /predict.

import { api, ApiError, query } from "../api.js";
import { h, pct, replace, toast } from "../dom.js";

export async function tryPage(main, ctx) {
  const models = await api(`/models${query({ limit: 100 })}`, { signal: ctx.signal });
  const references = models.data.flatMap((m) => [
    m.name,
    ...m.latest_versions.map((v) => `${m.name}/${v.version}`),
    ...Object.keys(m.aliases).map((a) => `${m.name}@${a}`),
  ]);
  const first = ctx.params.get("model") || references[0] || "";
  const model = h("input", { id: "model-ref", type: "text", list: "model-refs", required: true, value: first, size: 32 });
  const topK = h("input", { id: "top-k", type: "number", min: 1, max: 1000, value: 3 });
  const files = h("input", { id: "images", type: "file", accept: "image/*", multiple: true, class: "visually-hidden" });
  const chosen = h("p", { class: "muted", id: "chosen" }, "No images chosen.");
  const results = h("section", { id: "results", "aria-live": "polite" });
  let picked = [];
  const pick = (list) => {
    picked = Array.from(list).filter((f) => f.type.startsWith("image/") || f.type === "");
    replace(chosen, picked.length ? `${picked.length} image(s): ${picked.map((f) => f.name).join(", ")}` : "No images chosen.");
  };
  files.addEventListener("change", () => pick(files.files));
  const drop = h(
    "div",
    { class: "dropzone", id: "dropzone" },
    h("p", {}, "Drop images here, or "),
    files,
    h("label", { for: "images", class: "button secondary" }, "Choose images…"),
    chosen,
  );
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    pick(event.dataTransfer.files);
  });
  const form = h(
    "form",
    { class: "card", id: "predict-form" },
    h("div", { class: "field" }, h("label", { for: "model-ref" }, "Model reference"), model, h("small", { class: "muted" }, "name (latest ready), name/3 (a version) or name@alias")),
    h("datalist", { id: "model-refs" }, references.map((r) => h("option", { value: r }))),
    h("div", { class: "field" }, h("label", { for: "top-k" }, "Labels per image (top-k)"), topK),
    drop,
    h("div", { class: "actions" }, h("button", { type: "submit", id: "classify" }, "Classify")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!picked.length) {
      toast("Choose or drop at least one image.", "error");
      return;
    }
    const body = new FormData();
    body.set("model", model.value.trim());
    body.set("top_k", String(topK.value || 3));
    for (const file of picked) body.append("files", file, file.name);
    replace(results, h("p", { class: "muted" }, "Classifying…"));
    try {
      const answer = await api("/predict", { method: "POST", form: body, signal: ctx.signal });
      showResults(results, answer, picked, ctx.signal);
    } catch (error) {
      replace(results, h("p", { class: "error", role: "alert" }, error instanceof ApiError ? `${error.status}: ${error.message}` : String(error)));
    }
  });
  replace(
    main,
    h("h1", {}, "Try a model"),
    ctx.can("predict") ? form : h("p", { class: "error" }, "This key lacks the 'predict' scope."),
    results,
  );
}

function showResults(box, answer, files, signal) {
  const urls = files.map((f) => URL.createObjectURL(f));
  signal.addEventListener("abort", () => urls.forEach((u) => URL.revokeObjectURL(u)));
  replace(
    box,
    h("h2", {}, "Predictions from ", h("code", {}, answer.model)),
    h(
      "ul",
      { class: "predictions" },
      answer.data.map((prediction) =>
        h(
          "li",
          { class: "prediction", "data-index": prediction.index },
          h("img", { src: urls[prediction.index], alt: `uploaded image ${prediction.filename || prediction.index + 1}`, class: "thumb" }),
          h(
            "div",
            {},
            h("p", { class: "filename" }, prediction.filename || `image ${prediction.index + 1}`),
            h(
              "ol",
              { class: "labels" },
              prediction.labels.map((label, rank) => {
                const bar = h("span", { class: "bar", "aria-hidden": "true" });
                bar.style.width = `${Math.max(1, label.probability * 100)}%`;
                return h("li", { class: rank === 0 ? "top" : "" }, h("span", { class: "label-name" }, label.label), h("span", { class: "prob" }, pct(label.probability)), h("span", { class: "track" }, bar));
              }),
            ),
          ),
        ),
      ),
    ),
  );
}
