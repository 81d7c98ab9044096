"""The web page end to end in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): upload a
photo, wait for the boxes, check the face count and the canvas, beautify, and keep a screenshot."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from retinaserve.serve import create_app

from ..conftest import SIX_PEOPLE
from .conftest import SCREENSHOTS, headless_chromium, live_server, needs_chromium, settings

pytestmark = needs_chromium


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
        assert "total" in browser.find_element(By.ID, "timings").text
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "web_detect.png"))

        browser.find_element(By.ID, "beautify-button").click()
        wait.until(lambda d: d.find_element(By.ID, "beauty").get_attribute("data-done") == "true")
        wait.until(lambda d: d.execute_script("return document.getElementById('after').naturalWidth") == 1280)
        assert "Beautified 6 faces" in browser.find_element(By.ID, "status").text
        browser.execute_script("document.getElementById('beauty').scrollIntoView()")
        browser.save_screenshot(str(SCREENSHOTS / "web_beautify.png"))
