"""The web page's 3D view end to end in headless Chromium with software WebGL (SwiftShader): upload a photo, start a
reconstruct job, follow its server-sent events, check the three.js viewer's pixels, the UV map, the downloads, orbit
the mesh, and keep screenshots."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retinaserve.serve import create_app

from ..conftest import GRACE_HOPPER, SIX_PEOPLE
from .conftest import SCREENSHOTS, headless_chromium, live_server, needs_chromium, settings

STAGES = ["queued", "detecting", "geometry", "texture", "exporting", "done"]

pytestmark = needs_chromium

CANVAS_STATS = """
const source = document.querySelector('#viewer canvas');
const copy = document.createElement('canvas');
copy.width = source.width; copy.height = source.height;
const ctx = copy.getContext('2d');
ctx.drawImage(source, 0, 0);  // the renderer keeps its drawing buffer (preserveDrawingBuffer), so this is the frame
const d = ctx.getImageData(0, 0, copy.width, copy.height).data;
const bg = [d[0], d[1], d[2]];
let foreground = 0, red = 0, blue = 0;
const colours = new Set();
const digest = [];
for (let i = 0; i < d.length; i += 4) {
  if (Math.abs(d[i] - bg[0]) + Math.abs(d[i + 1] - bg[1]) + Math.abs(d[i + 2] - bg[2]) > 24) {
    foreground++; red += d[i]; blue += d[i + 2];
    colours.add((d[i] >> 3) << 10 | (d[i + 1] >> 3) << 5 | (d[i + 2] >> 3));
  }
  if (i % 4096 === 0) digest.push(d[i], d[i + 1], d[i + 2]);
}
return {canvases: document.querySelectorAll('#viewer canvas').length, width: copy.width, height: copy.height,
        background: bg, foreground: foreground / (copy.width * copy.height), colours: colours.size,
        red: red / Math.max(foreground, 1), blue: blue / Math.max(foreground, 1), digest};
"""
"""The viewer's frame: how much of it is not the clear colour, how many colours (15-bit) the mesh shows, its mean red
and blue (skin is redder than blue), and a coarse sample to tell two frames apart."""


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser saves what the page's download buttons hand it."""
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Any]:
    # WebGL without a GPU: ANGLE on SwiftShader, asked for explicitly (Chromium 156 falls back to it on its own,
    # even with --disable-gpu, but newer versions drop that fallback unless it is allowed)
    with headless_chromium("--use-angle=swiftshader", "--enable-unsafe-swiftshader", window="1280,1400") as driver:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver


def _downloaded(folder: Path, name: str, timeout_s: float = 20) -> bytes:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        path = folder / name
        if path.is_file() and not (folder / f"{name}.crdownload").exists():
            return path.read_bytes()
        time.sleep(0.1)
    raise AssertionError(f"{name} was not downloaded into {folder}: {sorted(p.name for p in folder.iterdir())}")


def test_reconstruct_and_view_in_3d(shared: object, browser: Any, downloads: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with live_server(create_app(settings())) as (base, _):
        browser.get(f"{base}/")
        wait = WebDriverWait(browser, 30)
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-name"), "ultralight-slim"))
        assert browser.find_element(By.ID, "three-d").is_displayed() is False
        assert browser.find_element(By.ID, "reconstruct-button").is_enabled() is False
        browser.find_element(By.ID, "file-input").send_keys(str(GRACE_HOPPER))
        wait.until(ec.element_to_be_clickable((By.ID, "reconstruct-button"))).click()
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "three-d").get_attribute("data-done"))
        assert browser.find_element(By.ID, "error").text == ""
        assert browser.find_element(By.ID, "three-d").get_attribute("data-done") == "true"

        # the stages arrive once each, in order (the page may connect after "queued"); progress stays within them
        events = browser.execute_script("return window.retinaserve3d.events")
        stages = [e["state"] for e in events if e["event"] == "stage"]
        assert stages in (STAGES, STAGES[1:]), events
        order = [STAGES.index(e["state"]) for e in events]
        assert order == sorted(order), events
        assert {e["event"] for e in events} <= {"stage", "progress"}
        assert [li.get_attribute("data-state") for li in browser.find_elements(By.CSS_SELECTOR, "#job-stages li")] == [
            "passed"
        ] * len(STAGES)
        assert browser.execute_script("return document.getElementById('job-progress').value") == 1
        assert browser.find_element(By.ID, "face-select").is_displayed() is False  # one face: nothing to choose
        assert browser.execute_script("return document.getElementById('uv-map').naturalWidth") > 0

        # the viewer shows a textured, lit face: a good part of the frame, many colours, skin tones (red over blue)
        browser.execute_script("document.getElementById('three-d').scrollIntoView()")
        front = browser.execute_script(CANVAS_STATS)
        assert front["canvases"] == 1
        assert front["width"] > 300 and front["height"] > 200
        assert front["foreground"] > 0.05, front
        assert front["colours"] > 300, front
        assert front["red"] > front["blue"] + 20, front
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "web_3d.png"))

        # orbit with a mouse drag: the frame changes and still shows the face
        canvas = browser.find_element(By.CSS_SELECTOR, "#viewer canvas")
        ActionChains(browser).move_to_element(canvas).click_and_hold().move_by_offset(70, 15).release().perform()
        turned = browser.execute_script(CANVAS_STATS)
        assert turned["digest"] != front["digest"]
        assert turned["foreground"] > 0.04 and turned["colours"] > 300, turned
        browser.save_screenshot(str(SCREENSHOTS / "web_3d_orbit.png"))

        # the downloads go through fetch (they would carry X-API-Key) and save under their names
        browser.find_element(By.ID, "download-glb").click()
        assert _downloaded(downloads, "face0.glb")[:4] == b"glTF"
        browser.find_element(By.ID, "download-obj").click()
        assert _downloaded(downloads, "face0_obj.zip")[:2] == b"PK"


def test_api_key_and_face_selector(shared: object, browser: Any, downloads: Path) -> None:
    """With API keys the events are read through fetch (EventSource cannot send the header): without the key the job
    fails on the page, with it the job runs; with several faces the selector swaps the mesh and the UV map."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def finished(d: Any) -> str | None:
        return d.find_element(By.ID, "three-d").get_attribute("data-done")

    with live_server(create_app(settings(api_keys=("s3cret",)))) as (base, _):
        browser.get(f"{base}/")
        wait = WebDriverWait(browser, 60)
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-name"), "ultralight-slim"))
        browser.find_element(By.ID, "file-input").send_keys(str(SIX_PEOPLE))
        wait.until(ec.element_to_be_clickable((By.ID, "reconstruct-button"))).click()
        wait.until(finished)
        assert finished(browser) == "failed"
        assert browser.find_element(By.ID, "error").text.startswith("401")

        browser.find_element(By.ID, "api-key").send_keys("s3cret")
        browser.find_element(By.ID, "reconstruct-button").click()
        wait.until(lambda d: finished(d) == "true")
        assert browser.find_element(By.ID, "error").text == ""
        assert [e["state"] for e in browser.execute_script("return window.retinaserve3d.events")][-1] == "done"
        select = Select(browser.find_element(By.ID, "face-select"))
        assert browser.find_element(By.ID, "face-select").is_displayed()
        assert len(select.options) == 6
        first = browser.execute_script(CANVAS_STATS)
        first_uv = browser.find_element(By.ID, "uv-map").get_attribute("src")

        select.select_by_index(2)
        wait.until(lambda d: finished(d) == "true" and d.find_element(By.ID, "uv-map").get_attribute("src") != first_uv)
        other = browser.execute_script(CANVAS_STATS)
        assert other["digest"] != first["digest"]
        assert other["foreground"] > 0.05 and other["colours"] > 300, other
        browser.execute_script("document.getElementById('three-d').scrollIntoView()")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "web_3d_faces.png"))
        browser.find_element(By.ID, "download-glb").click()
        assert _downloaded(downloads, "face2.glb")[:4] == b"glTF"
