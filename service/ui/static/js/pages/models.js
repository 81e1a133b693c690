// The registry: registered models, their versions and aliases.

import { api, query } from "../api.js";
import { badge, fmtNum, fmtTime, h, replace, route, table } from "../dom.js";
import { idSplit, oodSplits } from "./version.js";

export async function modelsPage(main, ctx) {
  const page = await api(`/models${query({ limit: 100 })}`, { signal: ctx.signal });
  const rows = page.data.map((m) => [
    h("a", { href: route("models", m.name) }, m.name),
    m.description || "–",
    String(m.latest_versions.length),
    aliasList(m.name, m.aliases),
    fmtTime(m.updated_at),
  ]);
  replace(
    main,
    h("h1", {}, "Registered models"),
    rows.length
      ? table(["Model", "Description", "Versions", "Aliases", "Updated"], rows, { id: "models-table" })
      : h("p", { class: "muted" }, "No registered models yet: a finished job registers one."),
  );
}

export function aliasList(name, aliases) {
  const entries = Object.entries(aliases || {});
  if (!entries.length) return "–";
  return h(
    "span",
    { class: "aliases" },
    entries.map(([alias, version]) => h("a", { href: route("models", name, "versions", version), class: "alias" }, `@${alias} → v${version}`)),
  );
}

export async function modelPage(main, ctx, name) {
  const enc = encodeURIComponent(name);
  const [model, versions] = await Promise.all([
    api(`/models/${enc}`, { signal: ctx.signal }),
    api(`/models/${enc}/versions`, { signal: ctx.signal }),
  ]);
  const rows = versions.data.map((v) => {
    const dual = v.metrics?.selected;
    const id = idSplit(dual);
    const ood = oodSplits(dual);
    const oodMean = ood.length ? ood.reduce((sum, sp) => sum + (dual[sp]?.dual?.top1 ?? 0), 0) / ood.length : null;
    return [
      h("a", { href: route("models", name, "versions", v.version) }, `v${v.version}`),
      badge(v.status),
      v.aliases.length ? v.aliases.map((a) => `@${a}`).join(" ") : "–",
      v.objective || "–",
      fmtNum(v.wise_ft?.selected_alpha, 2),
      id ? `${fmtNum(dual[id]?.dual?.top1)} (${id})` : "–",
      oodMean === null ? "–" : fmtNum(oodMean),
      v.job_id ? h("a", { href: route("jobs", v.job_id) }, v.job_id) : "–",
      fmtTime(v.created_at),
    ];
  });
  replace(
    main,
    h("h1", {}, "Model ", h("code", {}, model.name)),
    model.description ? h("p", {}, model.description) : null,
    h("p", {}, "Aliases: ", aliasList(model.name, model.aliases)),
    table(["Version", "Status", "Aliases", "Objective", "Selected α", "ID top-1 (dual)", "Mean OOD top-1 (dual)", "Job", "Created"], rows, { id: "versions-table" }),
  );
}
