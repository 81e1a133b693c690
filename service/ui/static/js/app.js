// The dashboard's shell: who the key is (GET /me), the navigation, and a router over the
// fragment (#/jobs/ftjob-…), so no route ever carries the key and the server serves one page.

import { api, ApiError, forgetKey, getKey, setKey } from "./api.js";
import { clearToast, h, replace, toast } from "./dom.js";
import { datasetPage, datasetsPage } from "./pages/datasets.js";
import { descriptionEditor, descriptionPage, descriptionsPage } from "./pages/descriptions.js";
import { jobPage } from "./pages/job.js";
import { jobsPage } from "./pages/jobs.js";
import { modelPage, modelsPage } from "./pages/models.js";
import { newJobPage } from "./pages/newjob.js";
import { tryPage } from "./pages/try.js";
import { versionPage } from "./pages/version.js";

const ROUTES = [
  [/^\/jobs\/new$/, "jobs", newJobPage],
  [/^\/jobs\/([^/]+)$/, "jobs", jobPage],
  [/^\/jobs$/, "jobs", jobsPage],
  [/^\/models\/([^/]+)\/versions\/(\d+)$/, "models", versionPage],
  [/^\/models\/([^/]+)$/, "models", modelPage],
  [/^\/models$/, "models", modelsPage],
  [/^\/try$/, "try", tryPage],
  [/^\/datasets\/([^/]+)$/, "datasets", datasetPage],
  [/^\/datasets$/, "datasets", datasetsPage],
  [/^\/descriptions\/new$/, "descriptions", descriptionEditor],
  [/^\/descriptions\/([^/]+)\/edit$/, "descriptions", descriptionEditor],
  [/^\/descriptions\/([^/]+)$/, "descriptions", descriptionPage],
  [/^\/descriptions$/, "descriptions", descriptionsPage],
];

const session = { me: null, controller: null };

/** What a page gets: the key's identity and scopes, and a signal aborted on navigation. */
function context(signal, params) {
  return {
    me: session.me,
    can: (scope) => Boolean(session.me && session.me.scopes.includes(scope)),
    signal,
    params,
  };
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, search = ""] = raw.split("?");
  return { path, params: new URLSearchParams(search) };
}

async function render(focus = false) {
  session.controller?.abort();
  if (focus) clearToast();
  const controller = new AbortController();
  session.controller = controller;
  const main = document.getElementById("main");
  if (!session.me) {
    keyForm(main);
    return;
  }
  const { path, params } = parseHash();
  const found = ROUTES.map(([re, section, page]) => [path.match(re), section, page]).find(([m]) => m);
  markSection(found ? found[1] : null);
  replace(main, h("p", { class: "muted" }, "Loading…"));
  if (!found) {
    replace(main, h("h1", {}, "Not found"), h("p", {}, "No such page. ", h("a", { href: "#/jobs" }, "Back to jobs")));
    return;
  }
  const [match, , page] = found;
  const args = match.slice(1).map(decodeURIComponent);
  try {
    await page(main, context(controller.signal, params), ...args);
  } catch (error) {
    if (controller.signal.aborted) return;
    showError(main, error);
  }
  const heading = main.querySelector("h1");
  heading?.setAttribute("tabindex", "-1");
  // After a navigation, keyboard and screen-reader users start at the new page's heading.
  if (focus && !controller.signal.aborted) heading?.focus();
}

function showError(main, error) {
  if (error instanceof ApiError && error.status === 401) {
    session.me = null;
    forgetKey();
    showSession();
    keyForm(main, error.message);
    return;
  }
  const message = error instanceof ApiError ? `${error.status} ${error.code}: ${error.message}` : String(error);
  replace(main, h("h1", {}, "Something went wrong"), h("p", { class: "error", role: "alert" }, message));
}

function markSection(section) {
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function keyForm(main, problem) {
  markSection(null);
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true, spellcheck: "false", size: 48 });
  const error = h("p", { class: "error", role: "alert" }, problem || "");
  const form = h(
    "form",
    { class: "card narrow", "aria-labelledby": "key-title" },
    h("h1", { id: "key-title" }, "Sign in with an API key"),
    h(
      "p",
      {},
      "Paste a key (",
      h("code", {}, "python -m service create-key --name me --scopes predict,train"),
      "). It is kept in this tab's session storage only, sent as an Authorization header, and forgotten when the tab closes.",
    ),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("div", { class: "actions" }, h("button", { type: "submit", id: "use-key" }, "Use this key")),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setKey(input.value.trim());
    input.value = "";
    try {
      await signIn();
    } catch (err) {
      forgetKey();
      replace(error, err instanceof ApiError ? err.message : String(err));
    }
  });
  replace(main, form);
  input.focus();
}

// Set by the server in the page: "disabled" in local mode without keys.
const AUTH = document.querySelector('meta[name="rcs-auth"]')?.content || "enabled";

/** GET /me: the key's identity; null, without asking, when a key is needed and none is held. */
async function whoAmI() {
  if (AUTH === "enabled" && !getKey()) return null;
  return api("/me");
}

async function signIn() {
  session.me = await whoAmI();
  if (!session.me) throw new Error("No key given.");
  showSession();
  await render();
}

function showSession() {
  const box = document.getElementById("session");
  const me = session.me;
  document.body.classList.toggle("signed-out", !me);
  if (!me) {
    replace(box, h("span", { class: "muted" }, "Not signed in"));
    return;
  }
  if (!me.auth_enabled) {
    replace(
      box,
      h("span", { class: "badge badge-warn", id: "auth-mode" }, "Local mode: authentication is disabled"),
      h("span", { class: "muted" }, ` every request has the scopes ${me.scopes.join(", ")}`),
    );
    return;
  }
  const out = h("button", { type: "button", class: "secondary", id: "sign-out" }, "Forget key");
  out.addEventListener("click", () => {
    forgetKey();
    session.me = null;
    showSession();
    render();
    toast("The key is forgotten in this tab.");
  });
  replace(box, h("span", { id: "whoami" }, `Key “${me.name}” · scopes: ${me.scopes.join(", ")}`), " ", out);
}

async function start() {
  window.addEventListener("hashchange", () => render(true));
  try {
    session.me = await whoAmI();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) throw error;
    if (getKey()) forgetKey();
    session.me = null;
  }
  showSession();
  await render();
}

start().catch((error) => showError(document.getElementById("main"), error));
