"""The web page end to end in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): upload a
photo, wait for the boxes, check the face count, the canvas and its labels against the faces table, beautify, the
favicon, and keep a screenshot."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from retinaserve.serve import create_app

from ..conftest import GRACE_HOPPER, SIX_PEOPLE
from .conftest import SCREENSHOTS, headless_chromium, live_server, needs_chromium, settings

pytestmark = needs_chromium

RECORD_CANVAS_TEXT = """
window.canvasText = [];
const fillText = CanvasRenderingContext2D.prototype.fillText;
CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
  window.canvasText.push(String(text));
  return fillText.call(this, text, ...rest);
};
"""
"""Records every text drawn on a 2D canvas (the box labels) in ``window.canvasText``."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with headless_chromium("--disable-gpu", window="1280,1600") as driver:
        yield driver


def test_upload_detect_and_beautify_in_the_browser(shared: object, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with live_server(create_app(settings())) as (base, _):
        browser.get(f"{base}/")
        wait = WebDriverWait(browser, 30)
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-name"), "ultralight-slim"))
        browser.execute_script(RECORD_CANVAS_TEXT)
        browser.find_element(By.ID, "file-input").send_keys(str(SIX_PEOPLE))
        wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-done") == "true")
        assert browser.find_element(By.ID, "face-count").text == "6"
        assert browser.find_element(By.ID, "error").is_displayed() is False
        canvas_size = browser.execute_script("const c = document.getElementById('canvas'); return [c.width, c.height];")
        assert canvas_size == [1280, 886]
        # the box colour (40, 220, 60) is on the canvas where the first face's box is drawn
        green = browser.execute_script(
            "const c = document.getElementById('canvas').getContext('2d');"
            "const d = c.getImageData(0, 0, 1280, 886).data; let n = 0;"
            "for (let i = 0; i < d.length; i += 4) if (d[i] === 40 && d[i+1] === 220 && d[i+2] === 60) n++;"
            "return n;"
        )
        assert green > 1000
        rows = browser.find_elements(By.CSS_SELECTOR, "#faces tbody tr")
        assert len(rows) == 6
        # each box is labelled with its row of the faces table: "#<row> <score>"
        cells = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]
        assert [c[0] for c in cells] == ["1", "2", "3", "4", "5", "6"]
        assert browser.execute_script("return window.canvasText") == [f"#{c[0]} {c[1]}" for c in cells]
        assert "total" in browser.find_element(By.ID, "timings").text
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "web_detect.png"))

        browser.find_element(By.ID, "beautify-button").click()
        wait.until(lambda d: d.find_element(By.ID, "beauty").get_attribute("data-done") == "true")
        wait.until(lambda d: d.execute_script("return document.getElementById('after').naturalWidth") == 1280)
        assert "Beautified 6 faces" in browser.find_element(By.ID, "status").text
        browser.execute_script("document.getElementById('beauty').scrollIntoView()")
        browser.save_screenshot(str(SCREENSHOTS / "web_beautify.png"))


def test_one_face_is_singular_and_the_favicon_is_served(shared: object, browser: Any) -> None:
    import httpx2
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with live_server(create_app(settings())) as (base, _):
        browser.get(f"{base}/")
        wait = WebDriverWait(browser, 30)
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-name"), "ultralight-slim"))
        icon = browser.execute_script("return document.querySelector('link[rel=icon]').href")
        assert icon == f"{base}/static/favicon.svg"
        answer = httpx2.get(icon)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/svg+xml")
        assert answer.text.lstrip().startswith("<svg") and "http" not in answer.text.replace(
            "http://www.w3.org/2000/svg", ""
        )  # self-contained: nothing fetched from outside
        browser.find_element(By.ID, "file-input").send_keys(str(GRACE_HOPPER))
        wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-done") == "true")
        assert browser.find_element(By.CSS_SELECTOR, "#result h2").text == "1 face"
        browser.find_element(By.ID, "beautify-button").click()
        wait.until(lambda d: d.find_element(By.ID, "beauty").get_attribute("data-done") == "true")
        assert browser.find_element(By.ID, "status").text == "Beautified 1 face"
        # the browser asked for no file the server does not have (a missing favicon would show here as a 404)
        errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not [message for message in errors if "404" in message or "Failed to load" in message], errors
