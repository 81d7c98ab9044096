"""The web page end to end in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): upload a
photo, wait for the boxes, check the face count and the canvas, beautify, and keep a screenshot."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retinaserve.serve import create_app

from ..conftest import SIX_PEOPLE
from .conftest import live_server, settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = Path(
    os.environ.get("RETINASERVE_SCREENSHOTS", Path(__file__).resolve().parents[2] / "out" / "screenshots")
)

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="headless Chromium not installed (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1280,1600",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


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
