"""The dashboard in a real headless Chromium against the real API and worker processes.

SQLite for metadata, Kombu's SQLite transport as the broker (no servers needed), the tiny
``test-tiny-vit`` backbone. Hostile data (a dataset and a description set whose class names are
script and attribute-injection payloads, a job whose metadata is one) is registered first; the
page must show it as text and run none of it. Screenshots of each page go to
``RCS_UI_SCREENSHOTS`` (``docs/images`` for docs/guides/dashboard.md) or the test's temporary
folder.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.auth.service import create_key
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from tests.service.support import API_KEY
from tests.ui.browser import chromium, console_errors, missing
from tools.processes import Process, api_process, free_port, wait_ready, worker_process

pytestmark = pytest.mark.slow

# Each would set window.__pwned if it ever ran; the CSP would also log any blocked attempt.
PAYLOADS = (
    "<img src=x onerror=\"window.__pwned='img'\">",
    '"><svg onload="window.__pwned=\'svg\'">',
    "<script>window.__pwned='script'</script>",
)
META_PAYLOAD = "javascript:window.__pwned='meta'//<b onmouseover=alert(1)>hover</b>"
JOB_TIMEOUT_S = 600


@dataclass
class UiStack:
    base_url: str
    predict_key: str
    shapes: Path
    workdir: Path
    api: Process
    worker: Process

    def client(self, key: str = API_KEY) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def logs(self) -> str:
        return f"--- api ---\n{self.api.tail()}\n--- worker ---\n{self.worker.tail(60)}"


def hostile_dataset(shapes: Path, root: Path) -> Path:
    """A manifest over the shapes images whose labels are the payloads."""
    root.mkdir(parents=True)
    rows = []
    for payload, cls in zip(PAYLOADS, ("circle", "square", "triangle"), strict=True):
        for split in ("train", "val", "test"):
            for image in sorted((shapes / split / cls).glob("*.png"))[:3]:
                target = root / split / cls / image.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(image, target)
                rows.append(
                    {"path": f"{split}/{cls}/{image.name}", "label": payload, "split": split}
                )
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def settings_for(workdir: Path, roots: list[Path]) -> dict[str, str]:
    return {
        "RCS_ENV": "production",
        "RCS_DATABASE_URL": f"sqlite:///{workdir / 'rcs.db'}",
        "RCS_BROKER_URL": f"sqla+sqlite:///{workdir / 'broker.db'}",
        "RCS_ARTIFACTS_URL": str(workdir / "artifacts"),
        "RCS_WORK_DIR": str(workdir / "work"),
        "RCS_ALLOWED_DATASET_ROOTS": ",".join(str(r) for r in roots),
        "RCS_BOOTSTRAP_API_KEY": API_KEY,
        "RCS_DEVICE": "cpu",
        "RCS_TORCH_THREADS": "1",
        "RCS_CHECKPOINT_EVERY": "2",
        # One live event stream per key: a second is refused (429) and the page must poll.
        "RCS_STREAM_MAX_PER_KEY": "1",
        # Monitoring windows small enough for a test's traffic.
        "RCS_MONITOR_WINDOW": "8",
        "RCS_MONITOR_MIN_WINDOW": "8",
        "RCS_MONITOR_FLUSH_S": "0.2",
    }


def predict_only_key(database_url: str) -> str:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return create_key(session, "dashboard viewer", ["predict"])[1]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory: pytest.TempPathFactory, shapes_root: Path) -> Iterator[UiStack]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("ui")
    hostile = workdir / "hostile"
    settings = settings_for(workdir, [shapes_root, hostile])
    hostile_dataset(shapes_root, hostile)
    key = predict_only_key(settings["RCS_DATABASE_URL"])
    port = free_port()
    api = api_process(settings, port, workdir / "api.log").start()
    worker = None
    try:
        wait_ready(f"http://127.0.0.1:{port}", api, timeout=300)
        worker = worker_process(settings, workdir / "worker.log").start()
        yield UiStack(f"http://127.0.0.1:{port}", key, shapes_root, workdir, api, worker)
    finally:
        if worker is not None:
            worker.stop()
        api.stop()


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 400, f"{response.status_code}: {response.text}"
    return response.json()


def register_data(stack: UiStack) -> dict[str, Any]:
    """Both datasets and description sets, through the API as a script would."""
    texts = json.loads((stack.shapes / "descriptions.json").read_text())
    hostile_texts = {p: [f"a shape {p}", p] for p in PAYLOADS}
    with stack.client() as client:
        shapes = ok(client.post("/datasets", json={"name": "shapes", "path": str(stack.shapes)}))
        manifest = str(stack.workdir / "hostile" / "manifest.csv")
        hostile = ok(client.post("/datasets", json={"name": PAYLOADS[0], "path": manifest}))
        described = ok(client.post("/descriptions", json={"name": "shapes", "descriptions": texts}))
        evil = ok(
            client.post("/descriptions", json={"name": "hostile", "descriptions": hostile_texts})
        )
    return {"shapes": shapes, "hostile": hostile, "texts": described, "hostile_texts": evil}


def long_hostile_job(stack: UiStack, data: dict[str, Any]) -> dict[str, Any]:
    """A FLYP job that trains until cancelled, with payloads in its metadata."""
    body = {
        "model": "test-tiny-vit",
        "dataset": data["hostile"]["id"],
        "descriptions": data["hostile_texts"]["id"],
        "method": {"type": "flyp"},
        "hyperparameters": {"max_steps": 100000, "batch_size": 4, "learning_rate": 0.0001},
        "head": {"templates": "single"},
        "registered_model_name": "hostile",
        "metadata": {"note": META_PAYLOAD, PAYLOADS[1][:60]: PAYLOADS[2]},
    }
    with stack.client() as client:
        return dict(ok(client.post("/finetune", json=body)))


class Page:
    """The browser, with the waits and checks every step uses."""

    def __init__(self, driver: Any, base_url: str, shots: Path) -> None:
        self.driver, self.base_url, self.shots = driver, base_url, shots
        self.errors: list[str] = []

    def go(self, fragment: str) -> None:
        self.driver.get(f"{self.base_url}/ui/{fragment}")

    def find(self, css: str, timeout: float = 30) -> Any:
        from selenium.webdriver.common.by import By

        return self.wait(lambda: self.driver.find_elements(By.CSS_SELECTOR, css), timeout, css)[0]

    def click(self, css: str, timeout: float = 30) -> None:
        """Click, again if the page redrew the element meanwhile (live pages redraw)."""

        def attempt() -> bool:
            self.find(css, timeout).click()
            return True

        self.wait(attempt, timeout, f"a click on {css}")

    def read(self, get: Callable[[], Any]) -> Any:
        """``get()``, again if a live page redrew an element while it was read."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(50):
            try:
                return get()
            except StaleElementReferenceException:
                time.sleep(0.2)
        return get()

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = check()
            except Exception:  # an element replaced while read: the page is redrawing
                value = None
            if value:
                return value
            time.sleep(0.2)
        self.shot("failure")
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def text(self) -> str:
        return str(self.driver.execute_script("return document.body.innerText"))

    def shot(self, name: str) -> None:
        """A screenshot of the whole page (up to 2400 px tall) at the laptop width."""
        height = int(self.driver.execute_script("return document.documentElement.scrollHeight"))
        width = self.driver.get_window_size()["width"]
        self.driver.set_window_size(width, min(max(height + 140, 900), 2400))
        time.sleep(0.3)
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))
        self.driver.set_window_size(width, 900)

    def shot_of(self, css: str, name: str) -> None:
        """A screenshot of one element (docs/guides/dashboard.md shows the WiSE-FT plots)."""
        self.find(css).screenshot(str(self.shots / f"{name}.png"))

    def assert_clean(self) -> None:
        """Nothing ran from the data, and the console holds no error."""
        assert self.driver.execute_script("return window.__pwned === undefined")
        self.errors += console_errors(self.driver)
        assert self.errors == []

    def sign_in(self, key: str) -> None:
        self.go("")
        from selenium.webdriver.common.keys import Keys

        # By keyboard: the key, then Enter submits the form.
        self.find("#api-key").send_keys(key + Keys.ENTER)
        self.find("#whoami")


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("RCS_UI_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_dashboard_in_a_real_browser(ui_stack: UiStack, shots: Path) -> None:
    started = time.monotonic()
    data = register_data(ui_stack)
    hostile_job = long_hostile_job(ui_stack, data)
    with chromium() as driver:
        page = Page(driver, ui_stack.base_url, shots)
        with stream_held_open(ui_stack, ui_stack.predict_key, hostile_job["id"]):
            predict_key_sees_no_write_controls(page, ui_stack, hostile_job)
        page.driver.execute_script("sessionStorage.clear()")
        page.sign_in(API_KEY)
        assert "bootstrap" in page.find("#whoami").text
        cancel_in_the_browser(page, hostile_job)
        version_ref = create_and_watch_a_job(page, ui_stack, data)
        name, version = version_ref.split("/")
        check_the_version_page(page, ui_stack, name, version)
        classify_an_upload(page, ui_stack, f"{name}@champion")
        check_the_monitoring_charts(page, ui_stack, name, version)
        browse_data_and_edit_descriptions(page, ui_stack, data)
        # The key stayed in this tab's session storage: not in a URL, nor in local storage.
        assert API_KEY not in driver.current_url
        assert driver.execute_script("return window.localStorage.length") == 0
        for log in ("api.log", "worker.log"):
            assert API_KEY not in (ui_stack.workdir / log).read_text()
        page.assert_clean()
    elapsed = time.monotonic() - started
    print(f"dashboard browser test: {elapsed:.1f} s")
    _record(elapsed)


def _record(elapsed: float) -> None:
    from tests.reliability.conftest import record

    record("test_dashboard_in_a_real_browser", seconds=round(elapsed, 1))


@contextmanager
def stream_held_open(stack: UiStack, key: str, job_id: str) -> Iterator[None]:
    """Take the key's only event-stream slot, so the page's own streams are refused (429)."""
    with stack.client(key) as client:
        url = f"/jobs/{job_id}/events"
        with client.stream("GET", url, params={"stream": "true"}) as held:
            assert held.status_code == 200
            yield


def predict_key_sees_no_write_controls(page: Page, stack: UiStack, job: dict[str, Any]) -> None:
    page.go("")
    assert page.find("#api-key").get_attribute("type") == "password"
    page.shot("dashboard-sign-in")
    page.sign_in(stack.predict_key)
    assert "predict" in page.find("#whoami").text
    page.go("#/jobs")
    page.find(f"tr[data-job='{job['id']}']")
    assert PAYLOADS[0] in page.text()  # the dataset's name, as text
    assert page.all("#new-job") == []
    # Progress of the running job: its stream is refused (the key's one slot is taken), so the
    # page polls the event list instead and says so.
    page.wait(lambda: "polling" in page.find("#live-mode").text, 60, "the polling notice")
    page.wait(
        lambda: (
            int(page.find(f"tr[data-job='{job['id']}'] .progress").get_attribute("data-step")) > 0
        ),
        120,
        "the hostile job's live progress",
    )
    page.go(f"#/jobs/{job['id']}")
    page.find("#metadata")
    page.wait(lambda: "polling" in page.find("#stream-mode").text, 60, "the polling notice")
    page.wait(lambda: page.all("#loss-plot circle.point"), 120, "the loss curve from polling")
    text = page.text()
    assert META_PAYLOAD in text and PAYLOADS[2] in text
    assert page.all("#cancel-job") == []
    # The server refuses anyway: the same request the button would send, with this key.
    status = page.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(`/jobs/${arguments[0]}/cancel`, {method: 'POST', headers: {Authorization:"
        " `Bearer ${sessionStorage.getItem('rcs.apiKey')}`}}).then((r) => done(r.status));",
        job["id"],
    )
    assert status == 403
    # The refusals this step provoked (403 above, 429 for the streams) are the expected ones.
    page.errors += [e for e in console_errors(page.driver) if not re.search(r"\b(403|429)\b", e)]
    page.assert_clean()


def cancel_in_the_browser(page: Page, job: dict[str, Any]) -> None:
    page.go(f"#/jobs/{job['id']}")
    page.click("#cancel-job")
    page.wait(
        lambda: page.find("#job-progress").get_attribute("data-status") == "cancelled",
        120,
        "the cancelled status",
    )
    assert page.all("#cancel-job") == []
    page.assert_clean()


def create_and_watch_a_job(page: Page, stack: UiStack, data: dict[str, Any]) -> str:
    from selenium.webdriver.support.ui import Select

    page.go("#/jobs")
    page.click("#new-job")
    form = page.find("#new-job-form")
    Select(form.find_element("id", "dataset")).select_by_value(data["shapes"]["id"])
    Select(form.find_element("id", "descriptions")).select_by_value(data["texts"]["id"])
    Select(form.find_element("id", "method")).select_by_value("drm")
    for field, value in {
        "model": "test-tiny-vit",
        "registered_model_name": "ui-shapes",
        "max_steps": "12",
        "batch_size": "8",
        "learning_rate": "0.0005",
        "seed": "0",
    }.items():
        form.find_element("id", field).send_keys(value)
    alphas = form.find_element("id", "alphas")
    alphas.clear()
    alphas.send_keys("0, 0.25, 0.5, 0.75, 1")
    Select(form.find_element("id", "selection")).select_by_value("best_id_val")
    page.shot("dashboard-new-job")
    page.click("#create-job")
    page.wait(lambda: "#/jobs/ftjob-" in page.driver.current_url, 30, "the job page")
    job_id = page.driver.current_url.rsplit("/", 1)[1]
    page.wait(lambda: page.all("#loss-plot circle.point"), JOB_TIMEOUT_S, "the loss curve")
    page.wait(
        lambda: page.find("#job-progress").get_attribute("data-status") == "succeeded",
        JOB_TIMEOUT_S,
        f"the job to succeed\n{stack.logs()}",
    )
    page.wait(lambda: page.all("#fine-tuned-link"), 30, "the registered version")
    with stack.client() as client:
        job = ok(client.get(f"/jobs/{job_id}"))
    # The status and the event log come in separate messages: the last event may follow.
    page.wait(lambda: "successfully completed" in page.text(), 30, "the completion event")
    step = page.read(lambda: page.find("#job-progress .progress").get_attribute("data-step"))
    assert step == "12"
    # One point per metrics event carrying a loss, ERM and WRM parts too for DRM.
    series = page.read(
        lambda: {s.get_attribute("data-series") for s in page.all("#loss-plot g.series")}
    )
    assert series == {"total loss", "ERM part", "WRM part"}
    page.shot("dashboard-job")
    page.go("#/jobs")
    page.find(f"tr[data-job='{job_id}']")
    page.shot("dashboard-jobs")
    page.assert_clean()
    return str(job["fine_tuned_model"])


def check_the_version_page(page: Page, stack: UiStack, name: str, version: str) -> None:
    page.go(f"#/models/{name}/versions/{version}")
    page.find("#robustness-plot")
    with stack.client() as client:
        card = ok(client.get(f"/models/{name}/versions/{version}"))
    curve = card["wise_ft"]["curve"]
    splits = list(curve[0]["metrics"])
    assert len(curve) == 5
    assert len(page.all("#robustness-plot circle.point")) == len(curve)
    assert len(page.all("#alpha-curve circle.point")) == len(curve) * len(splits)
    selected = page.all("#robustness-plot circle.point.highlight")
    assert [float(p.get_attribute("data-alpha")) for p in selected] == [
        card["wise_ft"]["selected_alpha"]
    ]
    assert len(page.all("#robustness-plot .zs-mark")) == 1
    assert len(page.all("#per-class-table tbody tr")) == len(card["classes"])
    # Description diagnostics: one row per class, the report's weak classes flagged.
    with stack.client() as client:
        report = ok(client.get(f"/models/{name}/versions/{version}/report"))
    diagnostics = report["description_diagnostics"]
    rows = page.all("#diagnostics-table tbody tr")
    assert sorted(r.get_attribute("data-class") for r in rows) == sorted(diagnostics["per_class"])
    flagged = [r.get_attribute("data-class") for r in page.all("#diagnostics-table tr.weak")]
    assert sorted(flagged) == sorted(diagnostics["weak"])
    for row in rows:
        taken_for = diagnostics["per_class"][row.get_attribute("data-class")]["confused_with"]
        assert (taken_for or "–") in row.text
    verdict = page.find("#diagnostics-verdict").text
    assert ("Accepted" if diagnostics["accepted"] else "Not accepted") in verdict
    page.shot_of("#descriptions-section", "dashboard-description-diagnostics")
    page.find("#alias-name").send_keys("champion")
    page.click("#set-alias")
    page.wait(lambda: "@champion" in page.find("#aliases-table").text, 30, "the alias row")
    with stack.client() as client:
        aliased = ok(client.get(f"/models/{name}/aliases/champion"))
    assert aliased["version"] == int(version)
    page.shot("dashboard-version")
    page.shot_of(".plots", "dashboard-wise-ft")
    serve_another_point(page, stack, name, version, card)
    page.go("#/models")
    page.find("#models-table")
    page.shot("dashboard-models")
    page.assert_clean()


def serve_another_point(page: Page, stack: UiStack, name: str, version: str, card: Any) -> None:
    """The rule's pick is stated, and another point of the curve is served as a new version
    re-merged from this one's ends; this version and its alias stay as they were."""
    from selenium.webdriver.support.ui import Select

    wise = card["wise_ft"]
    assert wise["selection"] in page.find("#served-point").text
    other = next(p["alpha"] for p in wise["curve"] if p["alpha"] != wise["selected_alpha"])
    Select(page.find("#merge-alpha")).select_by_value(format(other, "g"))  # as JS writes it
    page.click("#merge-version")
    new = int(version) + 1
    page.wait(lambda: f" v{new}" in page.find("h1").text, 60, f"version {new}")
    with stack.client() as client:
        merged = ok(client.get(f"/models/{name}/versions/{new}"))
        kept = ok(client.get(f"/models/{name}/versions/{version}"))
    assert merged["wise_ft"]["selected_alpha"] == other
    assert kept["wise_ft"]["selected_alpha"] == wise["selected_alpha"]
    page.find("#robustness-plot")
    assert f"re-merged from {name}/{version}" in page.find("#served-point").text
    highlighted = page.all("#robustness-plot circle.point.highlight")
    assert [float(p.get_attribute("data-alpha")) for p in highlighted] == [other]
    page.assert_clean()


def check_the_monitoring_charts(page: Page, stack: UiStack, name: str, version: str) -> None:
    """The profile the worker made at registration, two windows of /predict traffic, feedback
    on some images: the version page's drift and accuracy charts show them."""
    base = f"/models/{name}/versions/{version}"
    with stack.client() as client:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while client.get(f"{base}/monitor").status_code == 409:
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.5)
        # Two windows (of 8) whatever came before: the shapes splits are small, so several.
        splits = ("val", "test", "ood_test")
        images = [p for sp in splits for p in sorted((stack.shapes / sp).glob("*/*.png"))][:16]
        assert len(images) == 16
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
        served = ok(client.post("/predict", data={"model": f"{name}/{version}"}, files=files))
        while len(ok(client.get(f"{base}/monitor"))["windows"]) < 2:
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.2)
        items = [
            {"sha256": d["sha256"], "label": p.parent.name}
            for d, p in zip(served["data"], images, strict=True)
        ]
        ok(client.post(f"{base}/feedback", json={"items": items}))
        windows = ok(client.get(f"{base}/monitor"))["windows"]
    page.go(f"#/models/{name}/versions/{version}")
    page.find("#monitor-drift")
    drift = "#monitor-drift g.series[data-series='drift score'] circle.point"
    assert len(page.all(drift)) == len(windows)
    measured = "#monitor-accuracy g.series[data-series='measured (feedback)'] circle.point"
    assert len(page.all(measured)) == sum(w["measured"] is not None for w in windows) >= 1
    assert "Reference:" in page.find("#monitor-profile").text
    page.shot_of("#monitor-section", "dashboard-monitoring")
    page.assert_clean()


def classify_an_upload(page: Page, stack: UiStack, ref: str) -> None:
    images = []
    for split, cls in (("ood_test", "circle"), ("test", "cross")):
        images.append(stack.workdir / f"{cls}-{split}.png")
        shutil.copy(stack.shapes / split / cls / "0000.png", images[-1])
    page.go("#/try")
    field = page.find("#model-ref")
    field.clear()
    field.send_keys(ref)
    page.find("#images").send_keys("\n".join(str(p) for p in images))
    page.click("#classify")
    page.wait(lambda: len(page.all(".prediction")) == 2, 60, "two predictions")
    shown = [
        p.find_element("css selector", ".labels li.top .label-name").text
        for p in page.all(".prediction")
    ]
    with stack.client() as client:
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
        answer = ok(client.post("/predict", data={"model": ref, "top_k": "3"}, files=files))
    assert shown == [d["labels"][0]["label"] for d in answer["data"]]
    # The thumbnails are the uploaded files themselves (blob URLs), drawn.
    for image in page.all(".prediction img.thumb"):
        assert image.get_attribute("src").startswith("blob:")
        assert page.driver.execute_script("return arguments[0].naturalWidth", image) == 32
    page.shot("dashboard-try")
    page.assert_clean()


def browse_data_and_edit_descriptions(page: Page, stack: UiStack, data: dict[str, Any]) -> None:
    page.go("#/datasets")
    page.find("#datasets-table")
    assert PAYLOADS[0] in page.text()
    page.shot("dashboard-datasets")
    page.go(f"#/datasets/{data['hostile']['id']}")
    page.find("#counts-table")
    text = page.text()
    assert all(p in text for p in PAYLOADS)
    page.assert_clean()
    page.go(f"#/descriptions/{data['hostile_texts']['id']}")
    page.find("#set-view")
    assert all(p in page.text() for p in PAYLOADS)
    page.assert_clean()
    page.go(f"#/descriptions/{data['texts']['id']}")
    page.click("#edit-set")
    area = page.find("#texts-0")
    area.send_keys("\na shape drawn with one closed line")
    page.shot("dashboard-description-editor")
    page.click("#save-set")
    page.wait(lambda: " v2" in page.find("h1").text, 30, "version 2")
    with stack.client() as client:
        latest = ok(client.get("/descriptions", params={"name": "shapes"}))["data"]
    newest = max(latest, key=lambda s: s["version"])
    assert newest["version"] == 2
    first = next(iter(newest["descriptions"]))
    assert newest["descriptions"][first][-1] == "a shape drawn with one closed line"
    page.shot("dashboard-descriptions")
    page.assert_clean()
    score_and_accept(page, stack, data)


def score_and_accept(page: Page, stack: UiStack, data: dict[str, Any]) -> None:
    """Score the first set's sentences (and templates) on the worker from its page, read the
    per-class and per-candidate tables, and accept the proposal as a new version."""
    from selenium.webdriver.support.ui import Select

    page.go(f"#/descriptions/{data['texts']['id']}")
    Select(page.find("#score-dataset")).select_by_value(data["shapes"]["id"])
    page.find("#score-model").send_keys("test-tiny-vit")
    page.click("#score-set")
    page.wait(lambda: "succeeded" in page.find("#score-status").text, 300, "the scoring")
    with stack.client() as client:
        scorings = ok(client.get("/evaluations"))["data"]
    scoring = next(e for e in scorings if e["kind"] == "candidates")
    scores = scoring["results"]["scores"]
    assert scoring["description_set"] == data["texts"]["id"]
    assert len(page.all("#score-classes tbody tr")) == len(scores["per_class"])
    shown = page.all(".candidates-table tbody tr")
    assert len(shown) == scores["candidates"]
    dropped = [c for v in scores["per_class"].values() for c in v["candidates"] if not c["kept"]]
    assert len([r for r in shown if "dropped" in r.text]) == len(dropped)
    if dropped:
        assert dropped[0]["reasons"][0] in page.text()
    page.shot("dashboard-description-scores")
    page.click("#accept-proposal")
    page.wait(lambda: " v3" in page.find("h1").text, 30, "version 3")
    assert "Accepted from scoring" in page.find("#provenance").text
    with stack.client() as client:
        latest = ok(client.get("/descriptions", params={"name": "shapes"}))["data"]
    accepted = max(latest, key=lambda s: s["version"])
    assert accepted["descriptions"] == scores["proposed"] and accepted["status"] == "accepted"
    page.assert_clean()


def test_local_mode_without_keys_says_so(tmp_path: Path, shapes_root: Path, shots: Path) -> None:
    """RCS_AUTH_DISABLED in local mode: no key form, a banner saying so, every control shown."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    settings = {**settings_for(tmp_path, [shapes_root]), "RCS_ENV": "local"}
    settings["RCS_AUTH_DISABLED"] = "true"
    del settings["RCS_BOOTSTRAP_API_KEY"]
    port = free_port()
    api = api_process(settings, port, tmp_path / "api.log").start()
    try:
        wait_ready(f"http://127.0.0.1:{port}", api, timeout=300)
        with chromium() as driver:
            page = Page(driver, f"http://127.0.0.1:{port}", shots)
            page.go("")
            banner = page.find("#auth-mode")
            assert "authentication is disabled" in banner.text
            assert page.all("#api-key") == []
            page.find("#new-job")  # every scope, so the write controls are there
            page.shot("dashboard-local-mode")
            page.assert_clean()
    finally:
        api.stop()
