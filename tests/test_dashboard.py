"""The dashboard: its layout endpoint and pages in-process, then the page in Chromium.

The in-process tests need nothing beyond the project. The browser tests
(marked `browser`) drive the real page in headless Chromium against a real
server process and a real `wfg worker`; they skip when Chromium or
chromedriver is not installed. Their screenshots go to `test-artifacts/`, or
to `$WFG_TEST_ARTIFACTS` when set.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from actors.runtime import open_runtime
from web.app import create_app
from web.dashboard import compute_layout

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("WFG_TEST_ARTIFACTS") or REPO / "test-artifacts")
STATIC = REPO / "web" / "static"
XSS = "<img src=x onerror=alert(1)>"


# --- in-process: the layout endpoint and the pages ----------------------------


@asynccontextmanager
async def client() -> AsyncIterator:
    async with open_runtime() as runtime:
        app = create_app(runtime)
        async with app.test_app() as test_app:
            yield test_app.test_client()


async def create(c, jobs: list[dict], name: str = "wf", **extra) -> str:
    resp = await c.post("/api/workflows", json={"name": name, "jobs": jobs, **extra})
    assert resp.status_code == 201, await resp.get_data(as_text=True)
    return (await resp.get_json())["id"]


async def layout_of(c, wf_id: str) -> dict:
    resp = await c.get(f"/api/workflows/{wf_id}/layout")
    assert resp.status_code == 200, await resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    return await resp.get_json()


def job(job_id: str, *needs: str, **extra) -> dict:
    return {"id": job_id, "command": "true", "depends_on": list(needs), **extra}


def assert_left_to_right(layout: dict, jobs: list[dict]) -> None:
    """Every job has a box, boxes never overlap, every edge runs left to right."""
    nodes = {n["id"]: n for n in layout["nodes"]}
    assert set(nodes) == {j["id"] for j in jobs}
    expected = {(d, j["id"]) for j in jobs for d in j["depends_on"]}
    drawn = {(e["source"], e["target"]) for e in layout["edges"]}
    assert drawn == expected
    for e in layout["edges"]:
        src, dst = nodes[e["source"]], nodes[e["target"]]
        assert src["layer"] < dst["layer"], e
        assert src["x"] + src["width"] < dst["x"], (src, dst)
        xs = [p[0] for p in e["points"]]
        assert xs == sorted(xs) and xs[0] < xs[-1], e["points"]
        # The polyline leaves the source's right side and reaches the target's left side.
        assert xs[0] == pytest.approx(src["x"] + src["width"])
        assert xs[-1] == pytest.approx(dst["x"])
        assert src["y"] <= e["points"][0][1] <= src["y"] + src["height"]
        assert dst["y"] <= e["points"][-1][1] <= dst["y"] + dst["height"]
    boxes = list(nodes.values())
    for n in boxes:
        assert n["x"] >= 0 and n["y"] >= 0
        assert n["x"] + n["width"] <= layout["width"]
        assert n["y"] + n["height"] <= layout["height"]
    for i, a in enumerate(boxes):  # no two boxes overlap
        for b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["width"] <= b["x"]
                or b["x"] + b["width"] <= a["x"]
                or a["y"] + a["height"] <= b["y"]
                or b["y"] + b["height"] <= a["y"]
            )
            assert apart, (a, b)


async def test_layout_puts_layers_left_to_right():
    jobs = [
        job("lint"),
        job("build"),
        job("unit", "build"),
        job("e2e", "build", "lint"),
        job("package", "unit", "e2e"),
        job("deploy", "package", "lint"),  # spans several layers: bends in between
        job("docs"),  # unconnected: laid out in its own band
    ]
    async with client() as c:
        wf_id = await create(c, jobs)
        layout = await layout_of(c, wf_id)
    assert layout["workflow_id"] == wf_id
    assert layout["direction"] == "LR"
    assert_left_to_right(layout, jobs)
    layers = {n["id"]: n["layer"] for n in layout["nodes"]}
    assert layers["build"] == 0 and layers["unit"] == 1 and layers["package"] == 2
    assert layers["deploy"] == 3
    long_edge = next(e for e in layout["edges"] if (e["source"], e["target"]) == ("lint", "deploy"))
    assert len(long_edge["points"]) > 2  # one bend point per layer crossed


async def test_layout_of_300_jobs_is_quick_and_cached():
    rng = random.Random(7)
    jobs = []
    for i in range(300):
        earlier = [f"j{k}" for k in range(max(0, i - 40), i)]
        jobs.append(job(f"j{i}", *rng.sample(earlier, min(len(earlier), rng.randint(0, 3)))))
    async with client() as c:
        wf_id = await create(c, jobs)
        started = time.perf_counter()
        layout = await layout_of(c, wf_id)
        first = time.perf_counter() - started
        started = time.perf_counter()
        again = await layout_of(c, wf_id)
        cached = time.perf_counter() - started
    assert first < 10, f"300-job layout took {first:.1f}s"
    assert cached < 0.5 and again == layout
    assert_left_to_right(layout, jobs)


async def test_layout_of_a_wide_fan_and_a_long_chain():
    fan = [job("root"), *[job(f"leaf{i}", "root") for i in range(150)], job("join")]
    fan[-1]["depends_on"] = [f"leaf{i}" for i in range(150)]
    chain = [job("c0"), *[job(f"c{i}", f"c{i - 1}") for i in range(1, 200)]]
    async with client() as c:
        for jobs in (fan, chain):
            assert_left_to_right(await layout_of(c, await create(c, jobs)), jobs)


async def test_layout_of_unknown_workflow_is_404_json():
    async with client() as c:
        resp = await c.get("/api/workflows/no-such-workflow/layout")
        assert resp.status_code == 404
        assert resp.mimetype == "application/json"
        body = await resp.get_json()
        assert set(body) == {"error"} and "no-such-workflow" in body["error"]


async def test_layout_is_documented_in_openapi():
    async with client() as c:
        doc = await (await c.get("/openapi.json")).get_json()
    op = doc["paths"]["/api/workflows/{workflow_id}/layout"]["get"]
    assert {"200", "404"} <= set(op["responses"])
    assert "/" not in doc["paths"]  # the pages are not part of the API


async def test_layout_carries_the_declared_inputs_and_concurrency_group():
    inputs = {
        "env": {"type": "choice", "options": ["staging", "prod"], "default": "staging"},
        "dry-run": {"type": "boolean", "default": True, "description": "plan only"},
        "replicas": {"type": "number", "required": True},
        "note": {"type": "string"},
    }
    async with client() as c:
        plain = await layout_of(c, await create(c, [job("a")]))
        wf_id = await create(c, [job("a")], inputs=inputs, concurrency="deploy-${{ inputs.env }}")
        layout = await layout_of(c, wf_id)
        assert await layout_of(c, wf_id) == layout  # the cached answer says the same
    assert plain["inputs"] == [] and plain["concurrency_group"] is None
    assert layout["concurrency_group"] == "deploy-${{ inputs.env }}"
    assert layout["inputs"] == [
        {
            "name": "env",
            "type": "choice",
            "required": False,
            "default": "staging",
            "options": ["staging", "prod"],
            "description": "",
        },
        {
            "name": "dry-run",
            "type": "boolean",
            "required": False,
            "default": True,
            "options": [],
            "description": "plan only",
        },
        {
            "name": "replicas",
            "type": "number",
            "required": True,
            "default": None,
            "options": [],
            "description": "",
        },
        {
            "name": "note",
            "type": "string",
            "required": False,
            "default": None,
            "options": [],
            "description": "",
        },
    ]


def test_layout_of_no_jobs():
    layout = compute_layout("empty", [])
    assert layout.nodes == [] and layout.edges == [] and layout.width > 0


@pytest.mark.parametrize(
    ("path", "mimetype", "marker"),
    [
        ("/", "text/html", "/static/app.js"),
        ("/workflows/x", "text/html", "/static/app.js"),
        ("/workflows/x/runs/3", "text/html", "/static/app.js"),
        ("/static/index.html", "text/html", "<!doctype html>"),
        ("/static/app.js", "text/javascript", "EventSource"),
        ("/static/app.css", "text/css", "prefers-color-scheme"),
    ],
)
async def test_pages_are_served(path: str, mimetype: str, marker: str):
    async with client() as c:
        resp = await c.get(path)
        body = await resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert resp.mimetype == mimetype
    assert resp.mimetype_params.get("charset") == "utf-8"
    assert marker in body


async def test_index_has_a_strict_content_security_policy():
    async with client() as c:
        resp = await c.get("/")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


@pytest.mark.parametrize("path", ["/api/nope", "/api/workflows/x/nope", "/static/dashboard.py"])
async def test_unknown_paths_stay_json_404(path: str):
    async with client() as c:
        resp = await c.get(path)
        assert resp.status_code == 404
        assert resp.mimetype == "application/json"
        assert "error" in await resp.get_json()


async def test_api_still_answers_beside_the_page():
    async with client() as c:
        wf_id = await create(c, [job("a")])
        listed = await (await c.get("/api/workflows")).get_json()
    assert [w["id"] for w in listed] == [wf_id]


def test_page_script_never_parses_html():
    """API text reaches the page through DOM APIs only (the XSS guard, statically)."""
    source = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source.replace("Nothing here assigns innerHTML", ""), sink


# --- in Chromium --------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

PIPELINE = """\
name: Pipeline
on: push
jobs:
  build:
    name: Build
    run: echo compiling; sleep 1; echo built
  lint:
    name: Lint
    run: echo linted
  test:
    name: Test
    needs: [build]
    labels: [linux]
    run: |
      for i in 1 2 3 4 5 6 7 8; do echo "tick $i"; sleep 0.5; done
      echo "warn: flaky" >&2
  deploy:
    name: Deploy
    needs: [test, lint]
    run: echo deployed
"""

BROKEN = """\
name: Broken
on: [push, pull_request]
jobs:
  prep:
    run: echo preparing
  explode:
    needs: prep
    run: echo "about to fail"; echo "kaboom on stderr" >&2; exit 3
  after:
    needs: explode
    run: echo never
"""

XSS_YAML = f"""\
name: '{XSS}'
on: push
jobs:
  evil:
    name: '{XSS}'
    run: echo '<script>alert(2)</script>'
  next:
    name: 'after <b>bold</b>'
    needs: evil
    run: 'true'
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,900",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.common.exceptions import SessionNotCreatedException

    # On a loaded machine Chromium can miss chromedriver's start-up deadline: a second
    # start is the same browser, not a retried assertion.
    for attempt in range(3):
        try:
            driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
            break
        except SessionNotCreatedException:
            if attempt == 2:
                raise
            time.sleep(1)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def dashboard(workflows_dir: Path, server_factory) -> Iterator[str]:
    """A server with the example workflows and one real worker (labels: linux)."""
    (workflows_dir / "pipeline.yml").write_text(PIPELINE)
    (workflows_dir / "broken.yml").write_text(BROKEN)
    (workflows_dir / "xss.yml").write_text(XSS_YAML)
    server = server_factory(workflows_dir)
    worker = subprocess.Popen(
        [sys.executable, "-m", "wfg", "worker", "--server", server.url, "--id", "ui-worker"]
        + ["--labels", "linux"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not any(w["worker_id"] == "ui-worker" for w in _get(server.url, "/api/workers")):
            if worker.poll() is not None or time.monotonic() > deadline:
                out = worker.stdout.read() if worker.stdout and worker.poll() is not None else ""
                pytest.fail(f"the worker did not register:\n{out}")
            time.sleep(0.1)
        yield server.url
    finally:
        # Nothing of its work is needed any more, and a graceful stop waits out its
        # long-poll claim; the browser (requested after this fixture) has already quit.
        worker.kill()
        worker.wait()


def _get(url: str, path: str):
    return httpx.get(url + path, timeout=10).json()


def wait(driver, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1)


def box_status(driver, job_id: str) -> str | None:
    return driver.execute_script(
        "const b = document.querySelector(`.job[data-job-id='${arguments[0]}']`);"
        "return b ? b.dataset.status || null : null;",
        job_id,
    )


def row_ids(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('.wf-row')].map(r => r.dataset.workflowId)"
    )


def open_workflow(driver, url: str, wf_id: str, run: int | None = None) -> None:
    driver.get(f"{url}/workflows/{wf_id}" + (f"/runs/{run}" if run else ""))
    wait(driver).until(lambda d: d.find_elements("css selector", ".job[data-status]"))


def row_cell(driver, wf_id: str, selector: str) -> str:
    return driver.find_element("css selector", f"[data-workflow-id='{wf_id}'] {selector}").text


def cancel_enabled(driver, wf_id: str) -> bool:
    selector = f"[data-workflow-id='{wf_id}'] .wf-actions button:not(.primary)"
    return driver.find_element("css selector", selector).is_enabled()


def run_bar(driver) -> str:
    return driver.find_element("css selector", ".run-bar").text


def history_rows(driver) -> list[dict]:
    """The run history as shown: number, status, trigger, when (text and exact), duration."""
    return driver.execute_script(
        """return [...document.querySelectorAll('#runs tbody tr')].map(r => ({
            number: Number(r.dataset.run),
            status: r.querySelector('.run-status').textContent.trim(),
            trigger: r.querySelector('.run-trigger').textContent,
            when: r.querySelector('time').textContent,
            exact: r.querySelector('time').title,
            datetime: r.querySelector('time').getAttribute('datetime'),
            duration: r.querySelector('.duration').textContent,
            current: r.getAttribute('aria-current') === 'true',
            cancel: !!r.querySelector('.run-actions button'),
        }))"""
    )


def button(driver, text: str):
    """The visible button with exactly this text, or None."""
    for b in driver.find_elements("css selector", "button"):
        if b.is_displayed() and b.text == text:
            return b
    return None


def api_post(url: str, path: str, body: dict | None = None) -> dict:
    resp = httpx.post(url + path, json=body, timeout=10)
    assert resp.status_code in (200, 201, 202), resp.text
    return resp.json()


def create_workflow(url: str, name: str, jobs: list[dict], **extra) -> str:
    return api_post(url, "/api/workflows", {"name": name, "jobs": jobs, **extra})["id"]


def run_status(url: str, wf_id: str, number: int) -> str:
    return _get(url, f"/api/workflows/{wf_id}/runs/{number}")["status"]


def no_console_errors(driver, allow: tuple[str, ...] = ()) -> None:
    """No error in the console, but for refusals the page itself reports (a 409 from a
    double-clicked run, and the statuses in `allow` a test provoked)."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    errors = [e for e in errors if not any(f" {code} " in e["message"] for code in ("409", *allow))]
    assert not errors, errors


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


@pytest.mark.browser
def test_list_shows_workflows_and_workers(dashboard, browser):
    browser.get(dashboard + "/")
    wait(browser).until(lambda d: len(d.find_elements("css selector", ".wf-row")) == 3)
    rows = {
        r.get_attribute("data-workflow-id"): r.text
        for r in browser.find_elements("css selector", ".wf-row")
    }
    assert "Pipeline" in rows["pipeline"] and "on: push" in rows["pipeline"]
    assert "on: [push, pull_request]" in rows["broken"]
    # Never run: nothing waits for a worker, so nothing reads "queued".
    for wf_id in ("pipeline", "broken"):
        assert "never run" in rows[wf_id] and "queued" not in rows[wf_id]
        assert row_cell(browser, wf_id, ".wf-id") == f"id {wf_id}"
        assert not cancel_enabled(browser, wf_id)
    run = browser.find_element("css selector", "[data-workflow-id='pipeline'] button.primary")
    assert run.get_attribute("aria-label") == "Run workflow Pipeline"
    wait(browser).until(lambda d: "ui-worker" in d.find_element("css selector", "#workers").text)
    workers = browser.find_element("css selector", "#workers").text
    assert "linux" in workers and "idle" in workers
    screenshot(browser, "list.png")
    no_console_errors(browser)


@pytest.mark.browser
def test_run_from_the_page_turns_boxes_green_live(dashboard, browser):
    open_workflow(browser, dashboard, "pipeline")
    assert {box_status(browser, j) for j in ("build", "lint", "test", "deploy")} == {"queued"}
    browser.execute_script("window.__noReload = true")
    browser.find_element("css selector", ".wf-actions button.primary").click()

    # While `test` runs: it animates, counts up, and its log streams in live.
    wait(browser).until(lambda d: box_status(d, "test") == "running")
    test_box = browser.find_element("css selector", ".job[data-job-id='test']")
    assert "labels" not in test_box.text and "linux" in test_box.text
    test_box.click()
    wait(browser).until(
        lambda d: (
            "tick 2" in d.find_element("css selector", "pre.log").text
            and box_status(d, "test") == "running"
        )
    )
    wait(browser).until(
        lambda d: (
            d.find_element("css selector", ".job[data-job-id='test'] .job-time").text
            not in ("", "0s")
        )
    )
    screenshot(browser, "dag-running.png")

    wait(browser, 40).until(
        lambda d: all(box_status(d, j) == "success" for j in ("build", "lint", "test", "deploy"))
    )
    assert browser.execute_script("return window.__noReload") is True
    # The panel stayed open through the run, and stderr is marked as such.
    wait(browser).until(
        lambda d: "warn: flaky" in d.find_element("css selector", "pre.log .stderr").text
    )
    log = browser.find_element("css selector", "pre.log")
    assert "tick 8" in log.find_element("css selector", ".stdout").text
    assert "warn: flaky" not in log.find_element("css selector", ".stdout").text
    assert browser.find_element("css selector", ".chips").text.count("success") == 1
    browser.find_element("css selector", "[aria-label='Close logs']").click()
    screenshot(browser, "dag.png")
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    screenshot(browser, "dag-dark.png")
    no_console_errors(browser)


@pytest.mark.browser
def test_failing_job_turns_red_with_its_log_and_output(dashboard, browser):
    open_workflow(browser, dashboard, "broken")
    browser.find_element("css selector", "[aria-label='Run workflow Broken']").click()
    wait(browser, 30).until(lambda d: box_status(d, "explode") == "failure")
    wait(browser).until(lambda d: box_status(d, "after") == "skipped")
    assert box_status(browser, "prep") == "success"
    color = browser.execute_script(
        "return getComputedStyle(document.querySelector(`.job[data-job-id='explode']`))"
        ".borderLeftColor"
    )
    assert color == "rgb(207, 34, 46)"  # --failure in the light theme

    browser.find_element("css selector", ".job[data-job-id='explode']").click()
    wait(browser).until(
        lambda d: "kaboom on stderr" in d.find_element("css selector", "pre.log").text
    )
    assert "kaboom on stderr" in browser.find_element("css selector", "pre.log .stderr").text
    assert "about to fail" in browser.find_element("css selector", "pre.log .stdout").text
    output = browser.find_element("css selector", "pre.output")
    expected = next(
        j for j in _get(dashboard, "/api/workflows/broken/status")["jobs"] if j["id"] == "explode"
    )["output"]
    assert output.is_displayed() and expected and output.text == expected.strip()
    browser.set_window_size(420, 900)  # a phone: the panel goes under the graph
    screenshot(browser, "dag-failure-narrow.png")
    no_console_errors(browser)


@pytest.mark.browser
def test_names_from_the_api_render_as_text(dashboard, browser):
    browser.get(dashboard + "/")
    wait(browser).until(lambda d: len(d.find_elements("css selector", ".wf-row")) == 3)
    row = browser.find_element("css selector", "[data-workflow-id='xss']")
    assert XSS in row.text
    open_workflow(browser, dashboard, "xss")
    evil = browser.find_element("css selector", ".job[data-job-id='evil']")
    assert XSS in evil.text
    assert (
        "after <b>bold</b>" in browser.find_element("css selector", ".job[data-job-id='next']").text
    )
    assert XSS in browser.find_element("css selector", "h1").text
    evil.click()
    wait(browser).until(lambda d: d.find_element("css selector", "#log-title").text == XSS)
    assert "<script>alert(2)</script>" in browser.find_element(
        "css selector", "pre.command"
    ).get_attribute("textContent")
    assert (
        browser.execute_script("return document.querySelectorAll('main img, main b').length") == 0
    )
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    no_console_errors(browser)


@pytest.mark.browser
def test_list_paginates_and_filters(dashboard, browser):
    for i in range(30):
        body = {"name": f"bulk {i:02}", "jobs": [{"id": "only", "command": "true"}]}
        assert httpx.post(dashboard + "/api/workflows", json=body, timeout=10).status_code == 201
    browser.get(dashboard + "/")
    rows = "css selector", ".wf-row"
    wait(browser).until(lambda d: len(d.find_elements(*rows)) == 25)
    assert browser.find_element("css selector", "[aria-label='Previous page']").get_attribute(
        "disabled"
    )
    browser.find_element("css selector", "[aria-label='Next page']").click()
    wait(browser).until(lambda d: len(d.find_elements(*rows)) == 8)
    assert "offset=25" in browser.current_url
    assert browser.find_element("css selector", "[aria-label='Next page']").get_attribute(
        "disabled"
    )

    httpx.post(dashboard + "/api/workflows/broken/run", timeout=10)
    wait(browser, 30).until(
        lambda _: (
            "failure"
            in [j["status"] for j in _get(dashboard, "/api/workflows/broken/status")["jobs"]]
        )
    )
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("css selector", "#status-filter")).select_by_value("failure")
    wait(browser).until(lambda d: row_ids(d) == ["broken"])
    assert "status=failure" in browser.current_url
    no_console_errors(browser)


def test_layout_json_matches_the_model():
    """The pydantic model is the contract of the extension endpoint."""
    layout = compute_layout("w", [])
    assert set(json.loads(layout.model_dump_json())) == {
        "workflow_id",
        "direction",
        "width",
        "height",
        "nodes",
        "edges",
        "inputs",
        "concurrency_group",
    }


# Jobs with a label no worker has wait in a running run: a run that stays active.
UNCLAIMABLE = {"id": "wait", "command": "true", "required_labels": ["nowhere"]}


@pytest.mark.browser
def test_cancel_is_enabled_only_while_a_run_is_queued_or_running(dashboard, browser):
    waiting = create_workflow(dashboard, "Waiting", [UNCLAIMABLE])
    api_post(dashboard, "/api/workflows/broken/run")
    wait(browser, 30).until(lambda _: run_status(dashboard, "broken", 1) == "failure")
    browser.get(dashboard + "/")
    wait(browser).until(lambda d: len(d.find_elements("css selector", ".wf-row")) == 4)
    assert not cancel_enabled(browser, "broken")  # finished
    assert not cancel_enabled(browser, waiting)  # never run
    api_post(dashboard, f"/api/workflows/{waiting}/run")
    wait(browser).until(lambda d: cancel_enabled(d, waiting))
    assert "#1 running" in row_cell(browser, waiting, ".wf-status")
    browser.find_element(
        "css selector", f"[data-workflow-id='{waiting}'] .wf-actions button:not(.primary)"
    ).click()
    wait(browser).until(lambda d: "#1 cancelled" in row_cell(d, waiting, ".wf-status"))
    wait(browser).until(lambda d: not cancel_enabled(d, waiting))
    no_console_errors(browser)


@pytest.mark.browser
def test_pages_say_loading_until_the_first_answer(dashboard, browser):
    # Hold every API request: the page must not claim "no workflows" or "no workers".
    browser.execute_cdp_cmd("Fetch.enable", {"patterns": [{"urlPattern": "*/api/*"}]})
    try:
        browser.get(dashboard + "/")
        wait(browser).until(
            lambda d: "Loading workflows" in d.find_element("css selector", "main").text
        )
        time.sleep(0.5)
        text = browser.find_element("css selector", "main").text
        assert "Loading workers" in text
        assert "No workers registered" not in text and "No workflows yet" not in text
        assert "Prev" not in text  # no pager over an empty list
        browser.get(dashboard + "/workflows/pipeline")
        wait(browser).until(lambda d: "Loading" in d.find_element("css selector", "main").text)
        time.sleep(0.5)
        text = browser.find_element("css selector", "main").text
        assert "Loading runs" in text and "No runs yet" not in text
        assert "No workers registered" not in text
    finally:
        browser.execute_cdp_cmd("Fetch.disable", {})
    browser.get(dashboard + "/")
    wait(browser).until(lambda d: len(d.find_elements("css selector", ".wf-row")) == 3)
    assert "Loading" not in browser.find_element("css selector", "main").text


FLAKY = {
    "id": "flaky",
    "name": "Flaky",
    "max_retries": 1,
    "command": 'echo "attempt $WFG_ATTEMPT says hi"; [ "$WFG_ATTEMPT" -ge 1 ] || exit 1',
}


def attempt_marks(driver) -> list[str]:
    """The log's text, each attempt mark shown as [mark]."""
    return driver.execute_script(
        "return [...document.querySelectorAll('pre.log > *')].map(e =>"
        " e.classList.contains('attempt-mark') ? `[${e.textContent}]` : e.textContent)"
    )


@pytest.mark.browser
def test_log_marks_where_each_attempt_starts(dashboard, browser):
    wf_id = create_workflow(dashboard, "Retries", [FLAKY])
    api_post(dashboard, f"/api/workflows/{wf_id}/run")
    wait(browser, 30).until(lambda _: run_status(dashboard, wf_id, 1) == "success")
    open_workflow(browser, dashboard, wf_id)
    browser.find_element("css selector", ".job[data-job-id='flaky']").click()
    wait(browser).until(
        lambda d: "attempt 1 says hi" in d.find_element("css selector", "pre.log").text
    )
    assert attempt_marks(browser) == [
        "[Attempt 1 of 2]",
        "attempt 0 says hi\n",
        "[Attempt 2 of 2]",
        "attempt 1 says hi\n",
    ]
    screenshot(browser, "log-attempts.png")
    no_console_errors(browser)


@pytest.mark.browser
def test_log_marks_attempts_by_the_chunks_attempt_key(dashboard, browser):
    """With `attempt` on each chunk, the marks follow it, not the sequence numbers."""
    wf_id = create_workflow(dashboard, "Keyed", [{"id": "one", "command": "echo a; echo b"}])
    api_post(dashboard, f"/api/workflows/{wf_id}/run")
    wait(browser, 30).until(lambda _: run_status(dashboard, wf_id, 1) == "success")
    chunks = [
        {
            "workflow_id": wf_id,
            "job_id": "one",
            "sequence": i,
            "data": f"line {i}\n",
            "timestamp_ms": 1,
            "stream": "stdout",
            "attempt": attempt,
        }
        for i, attempt in enumerate([0, 0, 1, 2])
    ]
    # The server answers this job's logs with these chunks (sequence never restarts).
    browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": "const realFetch = window.fetch; window.fetch = (url, opts) =>"
            " String(url).endsWith('/jobs/one/logs') ? Promise.resolve(new Response("
            + json.dumps(json.dumps(chunks))
            + ", {headers: {'Content-Type': 'application/json'}})) : realFetch(url, opts);"
        },
    )
    open_workflow(browser, dashboard, wf_id)
    browser.find_element("css selector", ".job[data-job-id='one']").click()
    wait(browser).until(lambda d: "line 3" in d.find_element("css selector", "pre.log").text)
    assert attempt_marks(browser) == [
        "[Attempt 1]",
        "line 0\nline 1\n",
        "[Attempt 2]",
        "line 2\n",
        "[Attempt 3]",
        "line 3\n",
    ]


def cancel_all(url: str, *wf_ids: str) -> None:
    for wf_id in wf_ids:
        api_post(url, f"/api/workflows/{wf_id}/cancel")


@pytest.fixture
def long_history(workflows_dir: Path, server_factory) -> str:
    """A server keeping 50 runs per workflow (the default keeps 3), no workers."""
    return server_factory(workflows_dir, env={"RETAIN_RUNS": "50"}).url


@pytest.mark.browser
def test_run_history_lists_runs_and_links_each(long_history, browser):
    dashboard = long_history
    wf_id = create_workflow(dashboard, "Many runs", [UNCLAIMABLE])
    for _ in range(22):  # cancelled at once: a history without waiting for work
        api_post(dashboard, f"/api/workflows/{wf_id}/run")
        api_post(dashboard, f"/api/workflows/{wf_id}/cancel")
    api_post(dashboard, f"/api/workflows/{wf_id}/run")  # #23 stays running
    try:
        open_workflow(browser, dashboard, wf_id)
        wait(browser).until(lambda d: len(history_rows(d)) == 20)
        rows = history_rows(browser)
        assert [r["number"] for r in rows] == list(range(23, 3, -1))
        assert rows[0]["status"] == "running" and rows[0]["cancel"] and rows[0]["current"]
        assert rows[1]["status"] == "cancelled" and not rows[1]["cancel"]
        assert {r["trigger"] for r in rows} == {"manual"}
        assert rows[1]["when"] == "just now" and rows[1]["exact"] and rows[1]["datetime"]
        assert "Run #23" in run_bar(browser) and "running" in run_bar(browser)
        button(browser, "Load more runs").click()
        wait(browser).until(lambda d: len(history_rows(d)) == 23)
        assert [r["number"] for r in history_rows(browser)][-3:] == [3, 2, 1]
        assert button(browser, "Load more runs") is None  # the history is complete

        browser.find_element("css selector", "#runs a[href$='/runs/2']").click()
        wait(browser).until(lambda d: d.current_url.endswith(f"/workflows/{wf_id}/runs/2"))
        wait(browser).until(lambda d: "Run #2" in run_bar(d) and "cancelled" in run_bar(d))
        assert box_status(browser, "wait") == "cancelled"
        assert [r["number"] for r in history_rows(browser) if r["current"]] == [2]
        browser.back()
        wait(browser).until(lambda d: "Run #23" in run_bar(d))
        assert box_status(browser, "wait") == "queued"

        # While nothing changes, the history is not fetched again.
        time.sleep(4)
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource')"
            ".filter(e => /\\/runs\\?/.test(e.name)).length"
        )
        assert fetched == 2  # the first page and "load more"
        screenshot(browser, "run-history.png")

        browser.get(f"{dashboard}/workflows/{wf_id}/runs/5")  # a link to a run
        wait(browser).until(lambda d: "Run #5" in run_bar(d))
        assert box_status(browser, "wait") == "cancelled"
        browser.get(f"{dashboard}/workflows/{wf_id}/runs/99")
        wait(browser).until(
            lambda d: "Run #99 does not exist" in d.find_element("css selector", "main").text
        )
    finally:
        cancel_all(dashboard, wf_id)
    no_console_errors(browser, allow=("404",))


@pytest.mark.browser
def test_rerun_failed_jobs_then_show_the_new_run(dashboard, browser):
    open_workflow(browser, dashboard, "broken")
    browser.find_element("css selector", "[aria-label='Run workflow Broken']").click()
    wait(browser).until(lambda d: d.current_url.endswith("/workflows/broken/runs/1"))
    wait(browser, 30).until(lambda d: box_status(d, "after") == "skipped")
    wait(browser).until(lambda d: button(d, "Re-run failed jobs") is not None)
    assert button(browser, "Re-run all jobs") is not None
    assert button(browser, "Cancel run") is None
    button(browser, "Re-run failed jobs").click()
    wait(browser).until(lambda d: d.current_url.endswith("/workflows/broken/runs/2"))
    wait(browser).until(lambda d: "Run #2" in run_bar(d) and "re-run of #1" in run_bar(d))
    assert "rerun" in run_bar(browser)
    wait(browser, 30).until(lambda d: box_status(d, "explode") == "failure")
    assert box_status(browser, "prep") == "success"  # kept from run 1, not run again
    wait(browser).until(lambda d: [r["number"] for r in history_rows(d)] == [2, 1])
    screenshot(browser, "rerun.png")

    open_workflow(browser, dashboard, "pipeline")  # a run where nothing failed
    browser.find_element("css selector", ".wf-actions button.primary").click()
    wait(browser, 40).until(lambda d: "success" in run_bar(d))
    assert button(browser, "Re-run failed jobs") is None
    button(browser, "Re-run all jobs").click()
    wait(browser).until(lambda d: d.current_url.endswith("/workflows/pipeline/runs/2"))
    wait(browser).until(lambda d: "Run #2" in run_bar(d))
    cancel_all(dashboard, "pipeline")
    no_console_errors(browser)


INPUTS = {
    "env_name": {"type": "choice", "options": ["staging", "prod"], "default": "staging"},
    "dry-run": {"type": "boolean", "default": True, "description": "plan, change nothing"},
    "replicas": {"type": "number", "required": True},
    "note": {"type": "string"},
}


def form_fields(driver) -> dict:
    """The open run form's fields by input name, in the form's order."""
    fields = driver.execute_script(
        """const out = [];
        for (const f of document.querySelectorAll('dialog[open] .field')) {
            const c = f.querySelector('input, select');
            out.push({
                name: f.dataset.input,
                tag: c.tagName.toLowerCase(), type: c.type,
                value: c.type === 'checkbox' ? c.checked : c.value,
                options: c.tagName === 'SELECT' ? [...c.options].map(o => o.value) : null,
                required: !!f.querySelector('.required'),
                label: f.querySelector('label').textContent,
                error: f.querySelector('.field-error').hidden ? null
                    : f.querySelector('.field-error').textContent,
                invalid: c.getAttribute('aria-invalid') === 'true',
            });
        }
        return out;"""
    )
    return {field.pop("name"): field for field in fields}


@pytest.mark.browser
def test_run_form_for_declared_inputs(dashboard, browser):
    command = 'echo "deploying $INPUT_REPLICAS to $INPUT_ENV_NAME"'
    wf_id = create_workflow(
        dashboard, "Deploy", [{"id": "ship", "command": command}], inputs=INPUTS
    )
    browser.get(dashboard + "/")
    wait(browser).until(lambda d: len(d.find_elements("css selector", ".wf-row")) == 4)
    browser.find_element("css selector", f"[data-workflow-id='{wf_id}'] button.primary").click()
    wait(browser).until(lambda d: d.find_elements("css selector", "dialog[open]"))
    fields = form_fields(browser)
    assert list(fields) == ["env_name", "dry-run", "replicas", "note"]
    assert fields["env_name"]["tag"] == "select" and fields["env_name"]["value"] == "staging"
    assert fields["env_name"]["options"] == ["staging", "prod"]
    assert fields["dry-run"]["type"] == "checkbox" and fields["dry-run"]["value"] is True
    assert fields["replicas"]["type"] == "number" and fields["replicas"]["value"] == ""
    assert fields["replicas"]["required"] and not fields["note"]["required"]
    assert fields["note"]["type"] == "text"
    assert "plan, change nothing" in browser.find_element("css selector", "dialog[open]").text
    browser.find_element("css selector", "dialog[open] button[type='submit']").click()
    # The server refuses the missing input; the form names it beside the field.
    wait(browser).until(lambda d: form_fields(d)["replicas"]["error"])
    fields = form_fields(browser)
    assert "replicas" in fields["replicas"]["error"] and fields["replicas"]["invalid"]
    assert fields["env_name"]["error"] is None and not fields["env_name"]["invalid"]
    assert _get(dashboard, f"/api/workflows/{wf_id}/runs") == []
    screenshot(browser, "run-form-error.png")
    browser.find_element("css selector", "dialog[open] [name='replicas']").send_keys("3")
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("css selector", "dialog[open] select")).select_by_value("prod")
    browser.find_element("css selector", "dialog[open] [name='dry-run']").click()
    browser.find_element("css selector", "dialog[open] button[type='submit']").click()
    wait(browser).until(lambda d: not d.find_elements("css selector", "dialog[open]"))
    run = _get(dashboard, f"/api/workflows/{wf_id}/runs/1")
    assert run["inputs"] == {"env_name": "prod", "dry-run": False, "replicas": 3, "note": ""}

    open_workflow(browser, dashboard, wf_id, run=1)
    wait(browser).until(lambda d: "replicas=3" in run_bar(d))
    assert "env_name=prod" in run_bar(browser) and "dry-run=false" in run_bar(browser)
    browser.find_element("css selector", ".wf-actions button.primary").click()
    wait(browser).until(lambda d: d.find_elements("css selector", "dialog[open]"))
    browser.find_element("css selector", "dialog[open] [name='replicas']").send_keys("1")
    browser.find_element("css selector", "dialog[open] button[type='submit']").click()
    wait(browser).until(lambda d: d.current_url.endswith(f"/workflows/{wf_id}/runs/2"))
    no_console_errors(browser, allow=("422",))


@pytest.mark.browser
def test_queued_runs_show_as_queued_and_can_be_cancelled(dashboard, browser):
    holder = create_workflow(dashboard, "Holder", [UNCLAIMABLE], concurrency="deploy")
    waiter = create_workflow(dashboard, "Waiter", [UNCLAIMABLE], concurrency="deploy")
    assert api_post(dashboard, f"/api/workflows/{holder}/run")["status"] == "running"
    assert api_post(dashboard, f"/api/workflows/{waiter}/run")["status"] == "queued"
    try:
        browser.get(dashboard + "/")
        wait(browser).until(lambda d: len(d.find_elements("css selector", ".wf-row")) == 5)
        status = row_cell(browser, waiter, ".wf-status")
        assert "#1 queued" in status and "waiting for its concurrency group" in status
        assert cancel_enabled(browser, waiter)

        open_workflow(browser, dashboard, waiter)
        wait(browser).until(lambda d: "Waiting for its concurrency group deploy" in run_bar(d))
        assert "queued" in run_bar(browser)
        rows = history_rows(browser)
        assert rows[0]["status"].startswith("queued") and rows[0]["cancel"]
        screenshot(browser, "queued-run.png")
        button(browser, "Cancel run").click()
        wait(browser).until(lambda d: "cancelled" in run_bar(d))
        assert run_status(dashboard, waiter, 1) == "cancelled"
        wait(browser).until(lambda d: not history_rows(d)[0]["cancel"])
        assert button(browser, "Cancel run") is None
        assert button(browser, "Re-run all jobs") is not None
    finally:
        cancel_all(dashboard, holder, waiter)
    no_console_errors(browser)


@pytest.mark.browser
def test_a_scheduled_workflow_shows_its_next_run_and_a_run_its_notifications(dashboard, browser):
    definition = (
        "name: Nightly\non:\n  schedule:\n    - {cron: '0 3 * * *', timezone: Europe/Berlin}\n"
        "notify:\n  - {url: 'http://127.0.0.1:9/hook', on: [success]}\n"
        "jobs:\n  build: {run: echo built}\n"
    )
    wf_id = api_post(dashboard, "/api/workflows", {"definition": definition})["id"]
    [schedule] = _get(dashboard, f"/api/workflows/{wf_id}/schedules")
    open_workflow(browser, dashboard, wf_id)
    wait(browser).until(lambda d: d.find_element("css selector", ".next-run").is_displayed())
    next_run = browser.find_element("css selector", ".next-run")
    assert next_run.text.startswith("next scheduled run in ")
    assert next_run.text.endswith("(0 3 * * *, Europe/Berlin)")
    when = next_run.find_element("css selector", "time").get_attribute("datetime")
    assert when.startswith(time.strftime("%Y-%m-%dT", time.gmtime(schedule["next_at_ms"] / 1000)))
    api_post(dashboard, f"/api/workflows/{wf_id}/run")
    # Port 9 refuses: the notification is retried, and the run bar says so.
    wait(browser).until(lambda d: "notified 127.0.0.1:9: retrying" in run_bar(d))
    assert "ConnectError" in run_bar(browser)
    screenshot(browser, "scheduled-workflow.png")
    no_console_errors(browser)


MATRIX_TEXT = """\
name: Matrix
jobs:
  test:
    runs-on: ${{ matrix.os }}
    strategy:
      matrix:
        os: [linux, gpu]
    run: echo ${{ matrix.os }}
  report:
    needs: test
    if: always()
    run: echo done
"""


def boxes(driver) -> list[str]:
    return sorted(
        e.get_attribute("data-job-id") for e in driver.find_elements("css selector", ".job")
    )


def wait_text(driver, job_id: str) -> str:
    return driver.find_element("css selector", f".job[data-job-id='{job_id}'] .job-wait").text


@pytest.mark.browser
def test_a_run_draws_its_matrix_and_says_why_a_job_waits(dashboard, browser):
    """Before a run the matrix job is one box; the run draws one per combination, and the
    combination no live worker can take (the worker has `linux`) says so on its box."""
    created = api_post(dashboard, "/api/workflows", {"definition": MATRIX_TEXT})
    wf_id = created["id"]
    try:
        open_workflow(browser, dashboard, wf_id)
        assert boxes(browser) == ["report", "test"]
        assert api_post(dashboard, f"/api/workflows/{wf_id}/run")["number"] == 1
        wait(browser).until(lambda d: boxes(d) == ["report", "test-gpu", "test-linux"])
        wait(browser).until(lambda d: box_status(d, "test-linux") == "success")
        wait(browser).until(lambda d: "no worker with gpu" in wait_text(d, "test-gpu"))
        label = browser.find_element("css selector", ".job[data-job-id='test-gpu']")
        assert "no worker with gpu" in label.get_attribute("aria-label")
        screenshot(browser, "matrix-waiting.png")
    finally:
        cancel_all(dashboard, wf_id)
    no_console_errors(browser)
