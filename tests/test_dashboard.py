"""The dashboard: its layout endpoint and pages in-process, then the page in Chromium.

The in-process tests need nothing beyond the project. The browser tests
(marked `browser`) drive the real page in headless Chromium against a real
server process and a real `wfg worker`; they skip when Chromium or
chromedriver is not installed.
"""

from __future__ import annotations

import json
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
ARTIFACTS = REPO / "test-artifacts"
STATIC = REPO / "web" / "static"
XSS = "<img src=x onerror=alert(1)>"


# --- in-process: the layout endpoint and the pages ----------------------------


@asynccontextmanager
async def client() -> AsyncIterator:
    async with open_runtime() as runtime:
        app = create_app(runtime)
        async with app.test_app() as test_app:
            yield test_app.test_client()


async def create(c, jobs: list[dict], name: str = "wf") -> str:
    resp = await c.post("/api/workflows", json={"name": name, "jobs": jobs})
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


def test_layout_of_no_jobs():
    layout = compute_layout("empty", [])
    assert layout.nodes == [] and layout.edges == [] and layout.width > 0


@pytest.mark.parametrize(
    ("path", "mimetype", "marker"),
    [
        ("/", "text/html", "/static/app.js"),
        ("/workflows/x", "text/html", "/static/app.js"),
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
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
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
                out = worker.stdout.read() if worker.poll() is not None else ""
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


def open_workflow(driver, url: str, wf_id: str) -> None:
    driver.get(f"{url}/workflows/{wf_id}")
    wait(driver).until(lambda d: d.find_elements("css selector", ".job[data-status]"))


def no_console_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    # A 409 from a double-clicked run is reported by the page itself, not a bug.
    errors = [e for e in errors if " 409 " not in e["message"]]
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
    assert "4 queued" in rows["pipeline"] and "3 queued" in rows["broken"]
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
    }
