// The public REST API, with the key from this tab's sessionStorage (gone when the tab closes;
// never in persistent storage, a cookie or a URL). Every call the page makes is one a script can make.

const KEY_NAME = "rcs.apiKey";

export function getKey() {
  return sessionStorage.getItem(KEY_NAME);
}

export function setKey(key) {
  sessionStorage.setItem(KEY_NAME, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_NAME);
}

export class ApiError extends Error {
  constructor(status, code, message, param, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
    this.retryAfter = retryAfter;
  }
}

function headers(extra = {}) {
  const key = getKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function errorOf(response) {
  let code = "http_error";
  let message = `${response.status} ${response.statusText}`;
  let param = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      param = body.error.param ?? null;
    }
  } catch {
    // Not our JSON error shape (a proxy's page): the status line says enough.
  }
  const retry = Number(response.headers.get("Retry-After"));
  return new ApiError(response.status, code, message, param, Number.isFinite(retry) ? retry : null);
}

/** GET/POST/PUT/DELETE a route; ``json`` or ``form`` (FormData) as the body. */
export async function api(path, { method = "GET", json, form, extraHeaders, signal } = {}) {
  const init = { method, headers: headers(extraHeaders), signal, credentials: "omit", cache: "no-store" };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  return response.json();
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) search.set(k, v);
  const text = search.toString();
  return text ? `?${text}` : "";
}

// One server-sent event block: "id:", "event:" and "data:" lines; ":" lines are comments.
function parseBlock(block) {
  let event = "message";
  let id = null;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  return { event, id, data: JSON.parse(data.join("\n")) };
}

/**
 * Read ``GET /jobs/{id}/events?stream=true`` with fetch, since EventSource cannot send the
 * Authorization header (and the key must not go in the URL). Resolves with the final status
 * when the server sends ``end``; rejects with ApiError on a refusal (429 past the stream cap).
 */
export async function readStream(jobId, after, onEvent, signal, onOpen = () => {}) {
  const url = `/jobs/${encodeURIComponent(jobId)}/events${query({ stream: "true", after })}`;
  const extra = { Accept: "text/event-stream" };
  if (after) extra["Last-Event-ID"] = after;
  const response = await fetch(url, { headers: headers(extra), signal, credentials: "omit", cache: "no-store" });
  if (!response.ok) throw await errorOf(response);
  onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null; // closed without "end": the caller reconnects
    buffer += value;
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const parsed = parseBlock(block);
      if (!parsed) continue;
      if (parsed.event === "end") return parsed.data.status;
      if (parsed.event === "error") {
        // The server's last word before it closes: a revoked key is final (as a 401 would be);
        // anything else (the database briefly away) is worth a reconnect.
        const error = parsed.data?.error ?? {};
        if (error.code === "invalid_api_key") throw new ApiError(401, error.code, error.message, null, null);
        return null;
      }
      onEvent(parsed.data);
    }
  }
}

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function isTerminal(status) {
  return TERMINAL.has(status);
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * Follow a job's events until it ends: the stream, reconnecting after a dropped connection
 * from the last event seen, and polling the paginated list when the server refuses another
 * stream (429). ``onMode`` hears "live", "polling (…)" or "reconnecting".
 */
export async function followJob(jobId, { onEvent, onMode = () => {}, signal }) {
  let after = null;
  const seen = (event) => {
    after = event.id || after;
    onEvent(event);
  };
  while (!signal?.aborted) {
    try {
      const status = await readStream(jobId, after, seen, signal, () => onMode("live"));
      if (status) return status;
      onMode("reconnecting");
      await sleep(1000, signal);
    } catch (error) {
      if (signal?.aborted) return null;
      if (error instanceof ApiError && error.status === 429) {
        onMode(`polling (the server allows no more live streams for this key; retry in ${error.retryAfter ?? 5} s)`);
        const status = await pollEvents(jobId, () => after, seen, signal, (error.retryAfter ?? 5) * 1000);
        if (status) return status;
      } else if (error instanceof ApiError) {
        throw error;
      } else {
        onMode("reconnecting");
        await sleep(2000, signal);
      }
    }
  }
  return null;
}

// Poll the event list until the job ends or ``budgetMs`` passes (then the stream is retried).
async function pollEvents(jobId, cursor, onEvent, signal, budgetMs) {
  const until = Date.now() + Math.max(budgetMs, 3000);
  while (!signal?.aborted && Date.now() < until) {
    const page = await api(`/jobs/${encodeURIComponent(jobId)}/events${query({ after: cursor(), limit: 1000 })}`, { signal });
    page.data.forEach(onEvent);
    const job = await api(`/jobs/${encodeURIComponent(jobId)}`, { signal });
    if (isTerminal(job.status) && !page.has_more) return job.status;
    await sleep(2000, signal);
  }
  return null;
}
