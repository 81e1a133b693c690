// One job: its settings, live progress and loss curves, events, checkpoints, and Cancel.

import { api, followJob, isTerminal } from "../api.js";
import { badge, fmtNum, fmtTime, h, replace, route, table, toast } from "../dom.js";
import { chart } from "../plot.js";
import { progressCell, progressOf, versionRoute } from "./jobs.js";

// Loss parts drawn when a metrics event carries them: DRM's total and its ERM and WRM parts.
const LOSS_PARTS = [
  ["loss", "total loss"],
  ["erm", "ERM part"],
  ["wrm", "WRM part"],
];

export async function jobPage(main, ctx, jobId) {
  let job = await api(`/jobs/${encodeURIComponent(jobId)}`, { signal: ctx.signal });
  const head = h("div", { class: "title-row" });
  const progress = h("p", { id: "job-progress" });
  const mode = h("p", { class: "muted", id: "stream-mode", "aria-live": "polite" });
  const summary = h("div", { class: "grid" });
  const lossBox = h("div", { id: "loss-box" }, h("p", { class: "muted" }, "No training steps yet."));
  const events = h("ol", { class: "events", id: "events" });
  const checkpoints = h("div", {});
  replace(
    main,
    head,
    progress,
    mode,
    h("section", {}, h("h2", {}, "Loss"), lossBox),
    summary,
    h("section", {}, h("h2", {}, "Checkpoints"), checkpoints),
    h("section", {}, h("h2", {}, "Events"), events),
  );
  const points = Object.fromEntries(LOSS_PARTS.map(([key]) => [key, []]));
  let current = job.progress;
  let pending = false;

  const drawHead = () => {
    const cancel =
      ctx.can("train") && !isTerminal(job.status)
        ? h("button", { type: "button", class: "danger", id: "cancel-job", onclick: () => cancelJob() }, "Cancel job")
        : null;
    replace(head, h("h1", {}, "Job ", h("code", {}, job.id)), badge(job.status), cancel);
    replace(progress, progressCell(isTerminal(job.status) ? job.progress : current, job.status));
    progress.dataset.status = job.status;
    replace(summary, ...details(job));
  };
  const drawLoss = () => {
    pending = false;
    const series = LOSS_PARTS.filter(([key]) => points[key].length).map(([key, name]) => ({
      name,
      points: points[key],
    }));
    if (!series.length) return;
    replace(
      lossBox,
      chart({
        id: "loss-plot",
        title: "Training loss",
        description: "mean over the steps since the previous event",
        xLabel: "optimiser step",
        yLabel: "loss (nats)",
        width: 960,
        height: 320,
        series,
      }),
    );
  };
  const cancelJob = async () => {
    try {
      job = await api(`/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" });
      toast("Cancellation requested: a running job stops at its next step.");
      drawHead();
    } catch (error) {
      toast(error.message, "error");
    }
  };
  const refresh = async () => {
    job = await api(`/jobs/${encodeURIComponent(job.id)}`, { signal: ctx.signal });
    drawHead();
    const list = await api(`/jobs/${encodeURIComponent(job.id)}/checkpoints`, { signal: ctx.signal });
    replace(checkpoints, checkpointTable(list.data));
  };
  const onEvent = (event) => {
    events.append(eventItem(event));
    if (event.type === "metrics" && event.data?.losses) {
      for (const [key] of LOSS_PARTS) {
        const value = event.data.losses[key];
        if (Number.isFinite(value)) points[key].push({ x: event.data.step, y: value, tip: `step ${event.data.step}: ${key} ${fmtNum(value, 4)}` });
      }
      if (!pending) {
        pending = true;
        setTimeout(drawLoss, 300);
      }
    }
    current = progressOf(event, current);
    if (event.type === "message") refresh().catch(() => {});
    else replace(progress, progressCell(current, job.status));
  };
  drawHead();
  await refresh();
  const final = await followJob(job.id, {
    signal: ctx.signal,
    onEvent,
    onMode: (text) => replace(mode, text === "live" ? "" : `Event stream: ${text}`),
  });
  if (final && !ctx.signal.aborted) {
    replace(mode, "");
    await refresh();
  }
}

function details(job) {
  const method = job.method || {};
  const settings = [
    ["Base model", job.model],
    ["Method", method.type],
    ["Objective settings", method.objective ? settingsText(method.objective) : "defaults"],
    ["Dataset", h("a", { href: route("datasets", job.dataset) }, job.dataset)],
    ["Descriptions", job.descriptions && job.descriptions !== "inline" ? h("a", { href: route("descriptions", job.descriptions) }, job.descriptions) : job.descriptions || "–"],
    ["Registers as", job.registered_model_name],
    ["Fine-tuned model", job.fine_tuned_model ? h("a", { href: versionRoute(job.fine_tuned_model), id: "fine-tuned-link" }, job.fine_tuned_model) : "–"],
    ["Seed", job.seed],
    ["Created", fmtTime(job.created_at)],
    ["Finished", fmtTime(job.finished_at)],
  ];
  if (job.error) settings.push(["Error", h("span", { class: "error" }, `${job.error.code}: ${job.error.message}`)]);
  const hyper = Object.entries(job.hyperparameters || {}).map(([k, v]) => [k, String(v)]);
  // The whole curve is drawn on the version's page; here the settings and the choice.
  const wise = Object.entries(job.wise_ft || {})
    .filter(([k]) => k !== "curve")
    .map(([k, v]) => [k, Array.isArray(v) ? v.join(", ") : String(v ?? "–")]);
  const meta = Object.entries(job.metadata || {});
  return [
    h("section", {}, h("h2", {}, "Job"), pairs(settings)),
    h("section", {}, h("h2", {}, "Hyperparameters"), pairs(hyper), h("h3", {}, "WiSE-FT"), pairs(wise)),
    meta.length ? h("section", {}, h("h2", {}, "Metadata"), pairs(meta, "metadata")) : null,
  ];
}

function settingsText(settings) {
  return Object.entries(settings)
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k} ${v}`)
    .join(" · ");
}

function pairs(rows, id) {
  return h("dl", { class: "pairs", id }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")]));
}

function eventItem(event) {
  const data = event.data && event.type === "metrics" ? ` (lr ${fmtNum(event.data.lr, 6)}, ${fmtNum(event.data.images_per_s, 1)} images/s)` : "";
  return h(
    "li",
    { class: `event level-${event.level}`, "data-type": event.type },
    h("time", {}, fmtTime(event.created_at)),
    " ",
    h("span", { class: "level" }, event.level),
    " ",
    event.message,
    data,
  );
}

function checkpointTable(rows) {
  if (!rows.length) return h("p", { class: "muted" }, "No checkpoints kept for this job.");
  return table(
    ["Checkpoint", "Step", "Created", "Losses"],
    rows.map((c) => [
      c.id,
      String(c.step_number),
      fmtTime(c.created_at),
      Object.entries(c.metrics?.losses || {})
        .map(([k, v]) => `${k} ${fmtNum(v, 4)}`)
        .join(", ") || "–",
    ]),
  );
}
