// Registered datasets: the list, and one dataset's image counts per split and class.

import { api, query } from "../api.js";
import { fmtTime, h, replace, route, table } from "../dom.js";

export async function datasetsPage(main, ctx) {
  const page = await api(`/datasets${query({ limit: 100 })}`, { signal: ctx.signal });
  const rows = page.data.map((d) => [
    h("a", { href: route("datasets", d.id) }, d.name),
    h("code", {}, d.id),
    String(d.classes.length),
    Object.entries(d.splits)
      .map(([split, counts]) => `${split} ${Object.values(counts).reduce((a, b) => a + b, 0)}`)
      .join(" · "),
    String(d.num_images),
    h("code", { title: d.fingerprint }, d.fingerprint.slice(0, 12)),
    fmtTime(d.created_at),
  ]);
  replace(
    main,
    h("h1", {}, "Datasets"),
    h("p", { class: "muted" }, "Register one with POST /datasets (a server folder or manifest) or POST /datasets/upload (an archive)."),
    rows.length
      ? table(["Name", "Id", "Classes", "Images per split", "Images", "Fingerprint", "Registered"], rows, { id: "datasets-table" })
      : h("p", { class: "muted" }, "No datasets registered yet."),
  );
}

export async function datasetPage(main, ctx, id) {
  const d = await api(`/datasets/${encodeURIComponent(id)}`, { signal: ctx.signal });
  const splits = Object.keys(d.splits);
  const total = (split) => Object.values(d.splits[split]).reduce((a, b) => a + b, 0);
  const rows = d.classes.map((cls) => [
    h("th", { scope: "row" }, cls),
    ...splits.map((split) => h("td", { class: "num" }, String(d.splits[split][cls] ?? 0))),
  ]);
  rows.push([h("th", { scope: "row" }, "all classes"), ...splits.map((split) => h("td", { class: "num total" }, String(total(split))))]);
  replace(
    main,
    h("h1", {}, "Dataset ", h("span", { class: "dataset-name" }, d.name)),
    h(
      "dl",
      { class: "pairs" },
      [
        ["Id", h("code", {}, d.id)],
        ["Source", h("code", {}, d.source)],
        ["Images", String(d.num_images)],
        ["Fingerprint", h("code", {}, d.fingerprint)],
        ["Registered", fmtTime(d.created_at)],
      ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
    ),
    h("h2", {}, "Images per split and class"),
    table(["Class", ...splits], rows, { id: "counts-table", numeric: true }),
  );
}
