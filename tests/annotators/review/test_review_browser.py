"""The review task as an annotator sees it: Debian's Chromium, driven by selenium, on the real Label Studio UI.

Two records of different groups are pushed; the browser logs in, opens each task and reads the label rows
the editor offers, checks that the machine masks are drawn over the image in their position colours, then
accepts one task from the browser; ``pull`` must find that verdict. ``chromium`` and ``chromium-driver`` are
installed with apt when ``/usr/bin/chromium`` or ``/usr/bin/chromedriver`` is missing.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
from PIL import Image
from review_records import make_segmented

from annotators.review import pull, push
from manifests.record import State

pytestmark = [pytest.mark.labelstudio, pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SIZE = (480, 320)  # W, H of the test images: plain grey, so anything coloured on them is a mask
GREY = 128


def _install_browser() -> None:
    """apt-get install chromium chromium-driver (as root, or through passwordless sudo)."""
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.fail(
            f"{CHROMIUM} / {CHROMEDRIVER} are missing and there is no apt-get: install Chromium and its driver"
        )
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, apt, "install", "-y", "-q", "chromium", "chromium-driver"]
    result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:  # a machine whose package lists were never fetched
        subprocess.run([*prefix, apt, "update", "-q"], capture_output=True, text=True, env=env, timeout=900)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"could not install chromium and chromium-driver with apt:\n{result.stderr[-2000:]}")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        _install_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(20)
    try:
        yield driver
    finally:
        driver.quit()


def _grey_record(store, record_id: str, concepts: tuple[str, ...], group: str):
    record = make_segmented(store, record_id, concepts=concepts, size=SIZE, group=group)
    buffer = io.BytesIO()
    Image.new("RGB", SIZE, (GREY, GREY, GREY)).save(buffer, "PNG")
    store.write_bytes(record.image.path, buffer.getvalue())
    return record


def _log_in(driver, info) -> None:
    from selenium.webdriver.common.by import By

    driver.get(info.url + "/user/login/")
    driver.find_element(By.NAME, "email").send_keys(info.username)
    driver.find_element(By.NAME, "password").send_keys(info.password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    deadline = time.monotonic() + 30
    while "/user/login" in driver.current_url and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "/user/login" not in driver.current_url, "the login did not go through"


def _open_task(driver, info, project_id: int, task_id: int) -> list[list[tuple[str, str]]]:
    """Open a task in the editor; the label rows it offers as [(text, hotkey), ...] per row (mask, box)."""
    from selenium.webdriver.common.by import By

    driver.get(f"{info.url}/projects/{project_id}/data?task={task_id}")
    driver.find_element(By.CSS_SELECTOR, ".lsf-labels")  # waits (implicitly) for the editor
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the prediction's regions are listed and drawn
        if driver.find_elements(By.CSS_SELECTOR, ".lsf-labels-list") and driver.find_elements(
            By.TAG_NAME, "canvas"
        ):
            break
        time.sleep(0.3)
    time.sleep(1.5)  # let the canvas paint the masks
    rows = []
    for row in driver.find_elements(By.CSS_SELECTOR, ".lsf-labels"):
        labels = row.find_elements(By.CSS_SELECTOR, ".lsf-label")
        rows.append([
            (label.find_element(By.CSS_SELECTOR, ".lsf-label__text").text,
             label.find_element(By.CSS_SELECTOR, ".lsf-label__hotkey").text)
            for label in labels
        ])  # fmt: skip
    return rows


def _image_pixels(driver) -> np.ndarray:
    """The screenshot pixels of the editor's image area: (h, w, 3) uint8."""
    from selenium.webdriver.common.by import By

    canvases = driver.find_elements(By.TAG_NAME, "canvas")
    rect = max((c.rect for c in canvases), key=lambda r: r["width"] * r["height"])
    shot = np.array(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(int)
    scale = driver.execute_script("return window.devicePixelRatio") or 1
    x0, y0 = int(rect["x"] * scale), int(rect["y"] * scale)
    return shot[y0 : y0 + int(rect["height"] * scale), x0 : x0 + int(rect["width"] * scale)]


def _coloured(pixels: np.ndarray) -> dict[str, int]:
    """How many pixels are clearly red, blue or green (the first three label colours over grey)."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return {
        "red": int(((r - np.maximum(g, b)) > 80).sum()),
        "blue": int(((b - np.maximum(r, g)) > 80).sum()),
        "green": int(((g - np.maximum(r, b)) > 30).sum()),
        "grey": int(((abs(r - GREY) < 6) & (abs(g - GREY) < 6) & (abs(b - GREY) < 6)).sum()),
    }


def test_each_task_offers_only_its_concepts_draws_the_masks_and_an_accept_reaches_pull(
    labelstudio, review_store, browser
):
    from selenium.webdriver.common.by import By

    info, _ = labelstudio
    store, project = review_store
    _grey_record(store, "dogs", ("husky", "wolf"), "husky-wolf")
    _grey_record(store, "citrus", ("lemon", "lime", "citron"), "citrus")
    report = push(store, url=info.url, token=info.token, project=project)
    _log_in(browser, info)

    dogs = _open_task(browser, info, report.project_id, report.task_ids["dogs"])
    assert dogs == [[("husky", "1"), ("wolf", "2")], [("husky", "4"), ("wolf", "5")]]
    seen = _coloured(_image_pixels(browser))
    assert seen["red"] > 8000 and seen["blue"] > 8000 and seen["green"] < 500, (
        seen
    )  # husky red, wolf blue (outlines: < 3000)
    assert seen["grey"] > 20000, seen  # and the grey image around them

    citrus = _open_task(browser, info, report.project_id, report.task_ids["citrus"])
    assert citrus == [
        [("lemon", "1"), ("lime", "2"), ("citron", "3")],
        [("lemon", "4"), ("lime", "5"), ("citron", "6")],
    ]
    seen = _coloured(_image_pixels(browser))
    assert min(seen["red"], seen["blue"], seen["green"]) > 8000, seen  # box outlines alone: < 3000

    # accept the dogs task from the browser; pull finds it, the citrus task stays in review
    _open_task(browser, info, report.project_id, report.task_ids["dogs"])
    for xpath in ("//label[.//*[normalize-space(text())='accept']]", "//button[normalize-space()='Submit']"):
        element = browser.find_element(By.XPATH, xpath)
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pulled = pull(store, url=info.url, token=info.token, project=project)
        if store.get("dogs").state != State.in_review:
            break
        time.sleep(1)
    dogs_record = store.get("dogs")
    assert dogs_record.state == State.reviewed, (dogs_record.state, pulled)
    assert [c.review for c in dogs_record.concepts] == ["accepted", "accepted"]  # the machine masks, unedited
    assert store.get("citrus").state == State.in_review
