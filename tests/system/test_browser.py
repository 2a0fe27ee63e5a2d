"""The page in a real browser: Debian's chromium, headless, driven by Selenium through the system
chromedriver (``apt-get install chromium chromium-driver``; ``pip install selenium``). The page
loads with nothing fetched from elsewhere, MNIST test digits drawn on the canvas with the mouse,
stroke by stroke, give their labels, the ten bars show the probabilities, an answer comes within
100 ms of a stroke ending, and uploads of a photo (a digit, a number) are read.

Skipped, saying what is missing, where chromium, its driver or Selenium is absent; failing
instead where LSTMCORE_REQUIRE_BROWSER=1 (CI: .ci/run installs them). LSTMCORE_SCREENSHOT=PATH
saves a PNG of the page after a digit is drawn (docs/serve.png is one)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_photos import CANVAS, number_photos, photograph, random_look, require_system, strokes
from helpers_photos import text_ink as font_ink
from helpers_serve import served
from trained import trained_run

import lstmcore
from lstmcore.cli import predict
from lstmcore.mnist import data, imaging

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
LATENCY_MS = 100.0  # issue 19: the answer within 100 ms of a stroke ending


def _tools() -> tuple[str, str]:
    browser = next((p for b in BROWSERS if (p := shutil.which(b))), None)
    driver = shutil.which("chromedriver")
    missing = [
        name
        for name, found in [
            ("chromium", browser),
            ("chromedriver (apt-get install chromium-driver)", driver),
            ("selenium (pip install selenium)", importlib.util.find_spec("selenium")),
        ]
        if not found
    ]
    if missing:
        require_system("the browser tests need " + ", ".join(missing))
    assert browser and driver
    return browser, driver


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory) / "best.npz"


@pytest.fixture(scope="module")
def url(checkpoint: Path) -> Iterator[str]:
    _tools()
    with served(checkpoint) as (address, _):
        yield address


@pytest.fixture(scope="module")
def browser(url: str) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _tools()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not download anything
    options = Options()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",  # as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=820,620",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        driver.get(url)
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def mnist() -> data.MnistData:
    return data.load_mnist()


def state(browser: Any) -> dict[str, Any]:
    result: dict[str, Any] = browser.execute_script("return window.lstmcore;")
    return result


SETTLED = """
const [answers, done] = arguments;
const until = performance.now() + 15000;
(function check() {
  const s = window.lstmcore;
  if ((s.answeredStroke >= s.strokes && s.answers >= answers && !s.busy) ||
      performance.now() > until) done(s);
  else setTimeout(check, 5);
})();
"""


def settled(browser: Any, answers: int) -> dict[str, Any]:
    """The page's state once every stroke drawn has its answer (and at least ``answers``),
    waited for inside the page (polling from here would take the page's time)."""
    result: dict[str, Any] = browser.execute_async_script(SETTLED, answers)
    return result


def draw(browser: Any, image: np.ndarray) -> int:
    """The digit's strokes drawn on the canvas with the mouse: press, move along, release,
    each stroke one press; 10 canvas pixels per MNIST pixel. Returns the number of strokes."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By

    canvas = browser.find_element(By.ID, "pad")
    mouse = PointerInput(interaction.POINTER_MOUSE, "mouse")
    paths = strokes(image)
    for path in paths:  # one action chain per stroke: the answer is awaited in between
        actions = ActionBuilder(browser, mouse=mouse, duration=8)
        # Selenium's element offsets are from the element's centre
        points = [(10 * c + 5 - CANVAS // 2, 10 * r + 5 - CANVAS // 2) for r, c in path]
        points = points[:-1:2] + points[-1:]  # every other pixel: 20 canvas pixels a move
        actions.pointer_action.move_to(canvas, *points[0])
        actions.pointer_action.pointer_down()
        for x, y in points[1:]:
            actions.pointer_action.move_to(canvas, x, y)
        actions.pointer_action.pointer_up()
        actions.perform()
    return len(paths)


def bars(browser: Any) -> list[float]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#bars li")
    return [float(li.get_attribute("data-p")) for li in rows]


def test_the_page_loads_offline_with_ten_empty_bars(browser: Any, url: str) -> None:
    from selenium.webdriver.common.by import By

    assert browser.title.startswith("lstmcore")
    assert browser.find_element(By.ID, "pad").size == {"width": CANVAS, "height": CANVAS}
    assert bars(browser) == [0.0] * 10
    # everything the page loaded came from the server itself
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);"
    )
    assert all(name.startswith(url) for name in loaded), loaded
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


@pytest.mark.slow
def test_mnist_digits_drawn_with_the_mouse_are_read_as_they_are_drawn(
    browser: Any, mnist: data.MnistData
) -> None:
    from selenium.webdriver.common.by import By

    picks = [int(np.nonzero(mnist.test_labels == d)[0][0]) for d in range(10)]  # one of each
    read_right, latencies = 0, []
    for i in picks:
        browser.find_element(By.ID, "clear").click()
        before = state(browser)
        count = draw(browser, mnist.test_images[i])
        after = settled(browser, before["answers"] + 1)
        assert after["strokes"] == before["strokes"] + count
        latencies += after["latencies"][len(before["latencies"]) :]
        answer = browser.find_element(By.ID, "answer").text
        probs = bars(browser)
        assert len(probs) == 10 and abs(sum(probs) - 1.0) < 1e-3
        assert str(int(np.argmax(probs))) == answer == str(after["last"]["digit"])
        read_right += answer == str(mnist.test_labels[i])
        if i == picks[7] and os.environ.get("LSTMCORE_SCREENSHOT"):
            browser.save_screenshot(os.environ["LSTMCORE_SCREENSHOT"])
    assert read_right >= 9, read_right
    assert len(latencies) >= len(picks)  # an answer after each stroke's end
    median = statistics.median(latencies)
    timings = state(browser)["timings"]
    request = statistics.median(t["request"] for t in timings)
    server = statistics.median(t["server"] for t in timings)
    print(
        f"\nstroke end -> answer: median {median:.0f} ms, max {max(latencies):.0f} ms over "
        f"{len(latencies)} strokes (a request {request:.0f} ms, of it the server {server:.1f})"
    )
    assert median <= LATENCY_MS, latencies


def test_clear_empties_the_canvas_and_the_bars(browser: Any, mnist: data.MnistData) -> None:
    from selenium.webdriver.common.by import By

    draw(browser, mnist.test_images[0])
    settled(browser, 0)
    browser.find_element(By.ID, "clear").click()
    assert bars(browser) == [0.0] * 10
    assert browser.find_element(By.ID, "answer").text.strip() == ""
    blank = browser.execute_script(
        "const c = document.getElementById('pad');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "return d.every(v => v === 255);"
    )
    assert blank


def _library_reads(checkpoint: Path, image: bytes, as_number: bool) -> str:
    """What lstmcore's own Python path reads from the same file's bytes with the same model."""
    classifier = lstmcore.load(checkpoint)
    gray = imaging.decode(image, "upload", imaging.WORK_SIDE)
    read = predict.read_number if as_number else predict.read_digit
    return read(classifier, gray, "upload").text


def test_an_uploaded_photo_of_a_digit_and_of_a_number_are_read(
    browser: Any, checkpoint: Path, mnist: data.MnistData, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    rng = np.random.default_rng(4)
    photo = tmp_path / "seven.jpg"
    photo.write_bytes(photograph(font_ink("7", "", 160), random_look(rng), rng))
    number = tmp_path / "number.jpg"
    number.write_bytes(number_photos(mnist)[6].image)  # 2026, handwritten
    # the page must show what the library reads, digit for digit; whether the suite's small
    # model reads them right is test_photos' question (it misreads 2026 on some seeds)
    uploads = [(path, as_number, _library_reads(checkpoint, path.read_bytes(), as_number))
               for path, as_number in [(photo, False), (number, True)]]  # fmt: skip
    assert [len(expected) for _, _, expected in uploads] == [1, 4]
    box = browser.find_element(By.ID, "number")
    for path, as_number, expected in uploads:
        if box.is_selected() != as_number:
            box.click()
        before = state(browser)["answers"]
        browser.find_element(By.ID, "file").send_keys(str(path))
        settled(browser, before + 1)
        assert browser.find_element(By.ID, "answer").text == expected
        assert "%" in browser.find_element(By.ID, "detail").text
    if box.is_selected():
        box.click()
