// A version's shift monitoring (GET /models/{name}/versions/{v}/monitor): drift score and
// estimated accuracy per closed window as SVG charts, the open window, the events.

import { api, ApiError } from "../api.js";
import { fmtNum, fmtTime, h, pct, replace, table } from "../dom.js";
import { chart, COLOURS } from "../plot.js";

/**
 * The monitoring section of a version page; it fills itself once the monitor answers. The
 * version's report says whether it has a profile: without one (or without a report route)
 * the monitor is not asked, so the page logs no 409.
 */
export function monitorSection(base, report, signal) {
  const box = h("section", { id: "monitor-section" }, h("h2", {}, "Shift monitoring"), h("p", { class: "muted" }, "Loading…"));
  if (!report || !report.monitoring) {
    const why = report
      ? "No monitoring profile yet: a worker computes it after registration (an evaluation of kind profile), or POST …/monitor/profile with a dataset and its labelled ID split."
      : "This server's version report says nothing about monitoring.";
    replace(box, h("h2", {}, "Shift monitoring"), h("p", { class: "muted", id: "monitor-none" }, why));
    return box;
  }
  fill(box, base, signal).catch((error) => {
    if (error.name !== "AbortError") replace(box, h("h2", {}, "Shift monitoring"), h("p", { class: "muted" }, error.message));
  });
  return box;
}

async function fill(box, base, signal) {
  let view;
  try {
    view = await api(`${base}/monitor`, { signal });
  } catch (error) {
    // 409: no profile yet (the message says how to make one); 404: a server without monitoring.
    if (error instanceof ApiError && (error.status === 409 || error.status === 404)) {
      replace(box, h("h2", {}, "Shift monitoring"), h("p", { class: "muted", id: "monitor-none" }, error.message));
      return;
    }
    throw error;
  }
  replace(
    box,
    h("h2", {}, "Shift monitoring"),
    h("p", { id: "monitor-profile" }, profileLine(view.profile)),
    h("p", { id: "monitor-current" }, currentLine(view.current)),
    ...charts(view),
    eventsList(view.events),
  );
}

function profileLine(profile) {
  return `Reference: ${profile.n} images of ${profile.split} (${profile.dataset}), top-1 ${pct(profile.accuracy)}, head disagreement ${pct(profile.disagreement)}.`;
}

function currentLine(current) {
  if (current.status !== "ok") return `Open window: ${current.message}.`;
  return `Open window: ${current.n} images so far, drift score ${fmtNum(current.drift.score, 2)} (alarm above ${fmtNum(current.drift.threshold, 2)}), estimated top-1 ${pct(current.accuracy.estimate)}.`;
}

function charts(view) {
  const windows = view.windows.filter((w) => w.result.status === "ok");
  if (!windows.length) return [h("p", { class: "muted", id: "monitor-no-windows" }, "No closed window yet.")];
  const x = (w) => w.id;
  const tip = (w) => `window ${w.id} (${w.n} images, closed ${fmtTime(w.closed_at)})`;
  const threshold = windows[0].result.drift.threshold;
  const drift = chart({
    id: "monitor-drift",
    title: "Drift score per window",
    description: "−log10 of the combined p-value (MMD on embeddings, KS on confidence, head disagreement); above the dashed line a window is flagged",
    xLabel: "window",
    yLabel: "drift score (−log10 p)",
    xTicks: Math.min(6, windows.length),
    series: [
      {
        name: "drift score",
        points: windows.map((w) => ({
          x: x(w),
          y: w.result.drift.score,
          highlight: w.result.drift.drifted,
          data: { window: w.id, drifted: w.result.drift.drifted },
          tip: `${tip(w)}: score ${fmtNum(w.result.drift.score, 2)}, p = ${w.result.drift.p_value.toPrecision(2)}${w.result.drift.drifted ? " (drifted)" : ""}`,
        })),
      },
      flat("alarm threshold", windows, threshold, COLOURS[1]),
    ],
  });
  const accuracy = chart({
    id: "monitor-accuracy",
    title: "Estimated top-1 per window",
    description: "ATC estimate with its 95% interval; measured top-1 where feedback labelled images; dashed: the reference's top-1",
    xLabel: "window",
    yLabel: "top-1 (%)",
    xTicks: Math.min(6, windows.length),
    series: [
      {
        name: "estimated (ATC)",
        points: windows.map((w) => ({
          x: x(w),
          y: 100 * w.result.accuracy.estimate,
          data: { window: w.id },
          tip: `${tip(w)}: estimated ${pct(w.result.accuracy.estimate)} (${pct(w.result.accuracy.interval[0])}–${pct(w.result.accuracy.interval[1])})`,
        })),
      },
      band("interval low", windows, (w) => w.result.accuracy.interval[0]),
      band("interval high", windows, (w) => w.result.accuracy.interval[1]),
      {
        name: "measured (feedback)",
        line: false,
        colour: COLOURS[2],
        points: windows
          .filter((w) => w.measured?.top1 != null)
          .map((w) => ({ x: x(w), y: 100 * w.measured.top1, tip: `${tip(w)}: measured ${pct(w.measured.top1)} on ${w.measured.labelled} labelled images` })),
      },
      flat("reference", windows, 100 * windows[0].result.accuracy.reference, COLOURS[1]),
    ],
  });
  return [h("div", { class: "plots" }, drift, accuracy)];
}

function flat(name, windows, y, colour) {
  return { name, dashed: true, colour, radius: 0, points: [windows[0], windows[windows.length - 1]].map((w) => ({ x: w.id, y, tip: `${name}: ${fmtNum(y, 2)}` })) };
}

function band(name, windows, value) {
  return { name, dashed: true, colour: COLOURS[5], radius: 0, points: windows.map((w) => ({ x: w.id, y: 100 * value(w), tip: `${name}: ${pct(value(w))}` })) };
}

function eventsList(events) {
  if (!events.length) return h("p", { class: "muted", id: "monitor-events" }, "No monitoring events.");
  return table(
    ["When", "Level", "Event"],
    events.map((e) => [fmtTime(e.created_at), e.level, e.message]),
    { id: "monitor-events" },
  );
}
