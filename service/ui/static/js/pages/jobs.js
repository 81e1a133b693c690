// Jobs: the list, with the progress of running jobs updated live from their event streams.

import { api, followJob, isTerminal, query } from "../api.js";
import { badge, fmtDuration, fmtTime, h, replace, route } from "../dom.js";

// Live streams the list keeps open at once; the rest refresh with the list every few seconds.
const MAX_LIVE = 3;
const REFRESH_MS = 4000;

export function progressCell(progress, status) {
  const { step, total_steps: total, eta_seconds: eta } = progress;
  const fraction = total ? Math.min(1, step / total) : status === "succeeded" ? 1 : 0;
  const bar = h("progress", { max: 100, value: Math.round(fraction * 100), "aria-label": "training progress" });
  const text = total ? `${step}/${total}` : `${step}`;
  const etaText = status === "running" && eta !== null && eta !== undefined ? ` · ETA ${fmtDuration(eta)}` : "";
  return h("span", { class: "progress", "data-step": step, "data-total": total ?? "" }, bar, ` ${text} steps${etaText}`);
}

/** Progress from a metrics event (step, total_steps, eta_s), in the job object's shape. */
export function progressOf(event, previous) {
  if (event.type !== "metrics" || !event.data || event.data.step === undefined) return previous;
  return {
    step: event.data.step,
    total_steps: event.data.total_steps ?? previous.total_steps,
    eta_seconds: event.data.eta_s ?? null,
  };
}

export async function jobsPage(main, ctx) {
  const body = h("tbody", {});
  const mode = h("p", { class: "muted", id: "live-mode", "aria-live": "polite" });
  replace(
    main,
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, "Fine-tuning jobs"),
      ctx.can("train") ? h("a", { href: "#/jobs/new", class: "button", id: "new-job" }, "New job") : null,
    ),
    mode,
    h(
      "table",
      { id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["Job", "Status", "Method", "Dataset", "Registers as", "Progress", "Created"].map((c) => h("th", { scope: "col" }, c)))),
      body,
    ),
  );
  const datasets = await api(`/datasets${query({ limit: 100 })}`, { signal: ctx.signal });
  const names = new Map(datasets.data.map((d) => [d.id, d.name]));
  const live = new Map(); // job id -> latest progress from its stream
  const following = new Set();
  let jobs = [];
  const draw = () => {
    replace(
      body,
      jobs.length
        ? jobs.map((job) => row(job, live.get(job.id), names))
        : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No jobs yet.")),
    );
  };
  const follow = (job) => {
    following.add(job.id);
    let progress = job.progress;
    followJob(job.id, {
      signal: ctx.signal,
      onEvent: (event) => {
        progress = progressOf(event, progress);
        live.set(job.id, progress);
        draw();
      },
      onMode: (text) => replace(mode, text === "live" ? "" : `Job ${job.id}: ${text}`),
    })
      .then(() => refresh())
      .catch(() => {})
      .finally(() => following.delete(job.id));
  };
  const refresh = async () => {
    const page = await api(`/jobs${query({ limit: 50 })}`, { signal: ctx.signal });
    jobs = page.data;
    for (const job of jobs) if (isTerminal(job.status)) live.delete(job.id);
    draw();
    for (const job of jobs.filter((j) => !isTerminal(j.status))) {
      if (following.size < MAX_LIVE && !following.has(job.id)) follow(job);
    }
  };
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), REFRESH_MS);
  ctx.signal.addEventListener("abort", () => clearInterval(timer));
}

function row(job, liveProgress, names) {
  const progress = liveProgress && !isTerminal(job.status) ? liveProgress : job.progress;
  return h(
    "tr",
    { "data-job": job.id },
    h("td", {}, h("a", { href: route("jobs", job.id) }, h("code", {}, job.id))),
    h("td", {}, badge(job.status)),
    h("td", {}, job.method?.type ?? "–"),
    h("td", {}, h("a", { href: route("datasets", job.dataset), title: job.dataset }, names.get(job.dataset) ?? job.dataset)),
    h("td", {}, job.fine_tuned_model ? h("a", { href: versionRoute(job.fine_tuned_model) }, job.fine_tuned_model) : job.registered_model_name),
    h("td", {}, progressCell(progress, job.status)),
    h("td", {}, fmtTime(job.created_at)),
  );
}

/** "models:/name/3" or "name/3" -> the version page's route. */
export function versionRoute(reference) {
  const ref = String(reference).replace(/^models:\//, "");
  const cut = ref.lastIndexOf("/");
  return cut > 0 ? route("models", ref.slice(0, cut), "versions", ref.slice(cut + 1)) : route("models", ref);
}
