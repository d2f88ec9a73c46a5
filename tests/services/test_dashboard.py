"""The dashboard: its pages over a hand-written store (test client), and the experiment page
of a pipeline store loaded in headless Chromium from a real uvicorn: its plots render, the
console stays clean, and a screenshot is kept in test-artifacts/."""

import os
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api import ServiceSettings, create_app
from services.report import write_report
from tests.services import api_store as H
from tests.services.conftest import ARTIFACTS, EXPERIMENT

CHROMIUM = os.environ.get("STRATALENS_CHROMIUM", "/usr/bin/chromium")
# Debian's Chromium as root in a container: no sandbox, no GPU, no network side traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PAGE_LOAD_MS = 60_000


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store = H.build(str(tmp_path_factory.mktemp("dashboard") / "store"))
    return TestClient(create_app(ServiceSettings(store=store.root))), store


def test_home_lists_the_experiments(client):
    http, _ = client
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<a href="/experiments/exp">exp</a>' in page.text
    assert '<a href="/experiments/other">other</a>' in page.text
    assert "<script" not in page.text and "http://" not in page.text  # offline, no CDN


def test_an_experiment_page_holds_the_report_sections_as_inline_svg(client, tmp_path):
    http, store = client
    page = http.get(f"/experiments/{H.EXPERIMENT}")
    assert page.status_code == 200
    text = page.text
    plots = re.findall(
        r'<img class="plot" src="data:image/svg\+xml;base64,[^"]+" alt="([^"]+)"', text
    )
    report = write_report(store, H.EXPERIMENT, tmp_path).read_text()
    assert plots == re.findall(r'<img src="([^"]+)\.png"', report)  # the report's figures
    assert {"ami_vs_layer_ward", "ami_vs_epoch_ward", "ari_ds-a_small_cnn_ward"} <= set(plots)
    assert "<h2>Runs (superclass accuracy)</h2>" in text and "<td>0.800</td>" in text
    assert 'class="thumb"' in text  # the cluster galleries' thumbnails
    assert "<script" not in text
    assert http.get(f"/experiments/{H.EXPERIMENT}").text == text  # drawn once, then cached


def test_pages_for_missing_or_empty_experiments(client):
    http, _ = client
    missing = http.get("/experiments/nope")
    assert missing.status_code == 404 and "it holds [&#x27;exp&#x27;, &#x27;other&#x27;]" in (
        missing.text
    )
    empty = http.get("/experiments/other")  # a run but no scores
    assert empty.status_code == 200 and "<h1>" in empty.text


def chromium_path() -> str:
    """The system Chromium; its absence fails the test (make test installs it)."""
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        pytest.fail(
            f"no Chromium at {CHROMIUM}; run `make test` (it installs Debian's chromium) or "
            "set STRATALENS_CHROMIUM to a Chromium binary"
        )
    return CHROMIUM


@pytest.mark.integration
def test_the_dashboard_renders_in_headless_chromium(live_server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on(
                "response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}")
            )
            page.goto(live_server + "/", timeout=PAGE_LOAD_MS)
            page.screenshot(path=str(ARTIFACTS / "dashboard-home.png"))
            page.click(f"a[href='/experiments/{EXPERIMENT}']", timeout=PAGE_LOAD_MS)
            page.wait_for_load_state("load", timeout=PAGE_LOAD_MS)
            page.screenshot(path=str(ARTIFACTS / "dashboard-experiment.png"), full_page=True)
            images = page.eval_on_selector_all(
                "img",
                """imgs => imgs.map(i => ({cls: i.className, alt: i.alt, ok: i.complete,
                    w: i.naturalWidth, h: i.naturalHeight,
                    shown: i.getBoundingClientRect().width}))""",
            )
            headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)")
        finally:
            browser.close()
    plots = [i for i in images if i["cls"] == "plot"]
    thumbs = [i for i in images if i["cls"] == "thumb"]
    assert {p["alt"] for p in plots} >= {
        "ami_vs_layer_ward",
        "purity_vs_layer_ward",
        "ncc_subclass_vs_layer",
        "ncc_superclass_vs_layer",
    }
    assert any(p["alt"].startswith("ari_") for p in plots)  # the cross-seed heatmap
    assert thumbs, "the cluster galleries show no thumbnails"
    for image in plots + thumbs:
        assert image["ok"] and image["w"] > 0 and image["h"] > 0 and image["shown"] > 0, image
    assert "Runs (superclass accuracy)" in headings
    assert any(h.startswith("Clusters (ward") for h in headings)
    assert problems == []
