"""``modiff view`` end to end in a real headless Chromium (Selenium with the system browser).

The viewer runs as a user starts it (``python -m MoDiffLib view CINE --port 0``) on a small
planned lung phantom; the browser loads the page with every host but this computer unreachable,
steps frames and plays, and the test compares what is on the screen: the views' pixels change
between frames, the path is drawn in the colour of the frame's status (green in a gating frame,
amber or red elsewhere) and disappears when switched off. Ctrl-C then stops the viewer.

Needs the web extra, Selenium and Chromium with its driver; skipped, saying which is missing,
without them (see the README's Web viewer section). Set ``MODIFF_WEB_SCREENSHOT=PATH`` to keep
the page's screenshot there (the README's docs/images/web-viewer.png comes from this test).
"""

from __future__ import annotations

import importlib.util
import io
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures_web import write_planned_case

WEB_MODULES = ("trame", "trame_slicer", "trame_vuetify", "slicer", "slicer_layer_dm")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
MISSING_BROWSER = ("no Chromium and chromedriver found: apt-get install chromium chromium-driver "
                   "(Debian/Ubuntu), then pip install -e '.[web-test]'")
_missing_modules = [m for m in WEB_MODULES if importlib.util.find_spec(m) is None]
if _missing_modules:
    pytest.skip(f"the web extra is not installed ({', '.join(_missing_modules)} missing): pip install -e '.[web]' "
                "and pip install --no-deps slicer-layer-dm", allow_module_level=True)
if importlib.util.find_spec("selenium") is None:
    pytest.skip("Selenium is not installed: pip install -e '.[web-test]'", allow_module_level=True)
BROWSER = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
DRIVER = shutil.which("chromedriver")
if BROWSER is None or DRIVER is None:
    pytest.skip(MISSING_BROWSER, allow_module_level=True)

from PIL import Image  # noqa: E402 - Pillow comes with the web extra (trame-slicer)
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from MoDiffLib.mrml.planning import COLOR_BLOCKED, COLOR_CLEAR, COLOR_GATING  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WINDOW = (1400, 1050)  # the page then shows the whole panel, curves included
#: Seconds for the viewer to start (read the case, build the scene) and for a change to show.
START_TIMEOUT_S = 120.0
RENDER_TIMEOUT_S = 30.0
#: A view changed when this share of its pixels changed by more than PIXEL_STEP grey levels.
PIXEL_STEP = 24
CHANGED_SHARE = 0.002
#: Pixels within this distance (per channel, 0..255) of the path's colour count as the path, and
#: a drawn path is at least this many of them in a slice view (the 48x48 case's ~10 cm path is
#: some 200 pixels long at this window size, 3 pixels wide).
COLOR_TOLERANCE = 40
PATH_PIXELS = 100
#: Size limit of the screenshot kept for the README.
SCREENSHOT_MAX_BYTES = 300_000


def _rgb255(color) -> np.ndarray:
    return np.round(np.asarray(color) * 255.0)


def status_color(frame: dict) -> np.ndarray:
    if frame["gating"]:
        return _rgb255(COLOR_GATING)
    return _rgb255(COLOR_CLEAR if frame["clear"] else COLOR_BLOCKED)


def pixels_of_color(image: np.ndarray, color: np.ndarray) -> int:
    return int(np.all(np.abs(image[..., :3].astype(int) - color) <= COLOR_TOLERANCE, axis=-1).sum())


def changed_share(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a[..., :3].astype(int) - b[..., :3].astype(int)).max(axis=-1) > PIXEL_STEP).mean())


def wait_for(what: str, check, timeout: float = RENDER_TIMEOUT_S, every: float = 0.25):
    """``check()``'s first value other than None or False, polled until ``timeout``; fails naming
    ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


class Viewer:
    """A ``modiff view`` process and the URL it printed."""

    def __init__(self, cine: Path):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "MoDiffLib", "view", str(cine), "--port", "0"],
                                        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.process.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, self.stderr.append), daemon=True).start()
        try:
            line = self.lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.stop()
            pytest.fail(f"modiff view printed no URL in {START_TIMEOUT_S:g} s; stderr: {''.join(self.stderr)}")
        match = re.fullmatch(r"modiff view: open (http://127\.0\.0\.1:\d+/) in a browser \(Ctrl-C stops the viewer\)\n",
                             line)
        assert match, f"unexpected first line: {line!r}"
        self.url = match.group(1)

    @staticmethod
    def _read(stream, put) -> None:
        for line in stream:
            put(line)

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_planned_case(tmp_path_factory.mktemp("web-browser") / "case")


@pytest.fixture(scope="module")
def viewer(case):
    viewer = Viewer(case.cine)
    yield viewer
    viewer.stop()


@pytest.fixture(scope="module")
def browser(viewer):
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1",
                     # offline: no host but this computer resolves, so a page needing the network breaks
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(RENDER_TIMEOUT_S)
    driver.get(viewer.url)
    yield driver
    driver.quit()


# -- reading the page -------------------------------------------------------------------------------------
def views(driver) -> list:
    """The four rendered views' images: axial, 3D, coronal, sagittal (the layout's order)."""
    return driver.find_elements(By.CSS_SELECTOR, "#modiff-views img.image-display-area")


def all_views(driver) -> list[np.ndarray] | None:
    """The pixels of the four views, cut from one screenshot of the page (None while one has no size)."""
    rects = [img.rect for img in views(driver)]
    if len(rects) != 4 or any(r["width"] < 10 or r["height"] < 10 for r in rects):
        return None
    page = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))
    return [page[int(r["y"]):int(r["y"] + r["height"]), int(r["x"]):int(r["x"] + r["width"])] for r in rects]


def view_pixels(driver, index: int) -> np.ndarray:
    images = all_views(driver)
    if images is None:
        pytest.fail("the views are not on the page")
    return images[index]


def rendered(driver) -> list[np.ndarray] | None:
    """The views' pixels once all four show an image (not one colour), else None."""
    images = all_views(driver)
    return images if images and all(img.reshape(-1, 3).std(axis=0).max() > 10 for img in images) else None


def frame_label(driver) -> str:
    return driver.find_element(By.ID, "modiff-frame").text


def timeline_cells(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#modiff-timeline .modiff-cell")


def show_frame(driver, t: int, path_color: np.ndarray) -> list[np.ndarray]:
    """Click frame ``t`` on the timeline; wait for its read-out and for the axial view to draw the
    path in ``path_color``; returns the four views then."""
    timeline_cells(driver)[t].click()
    wait_for(f"the read-out of frame {t}", lambda: frame_label(driver) == f"frame {t} of 3")
    wait_for(f"the path in frame {t}'s colour {path_color.tolist()}", lambda: axial_if(
        driver, lambda img: pixels_of_color(img, path_color) >= PATH_PIXELS))
    time.sleep(0.5)  # the other views come in their own messages
    return all_views(driver)


def axial_if(driver, condition) -> np.ndarray | None:
    """The axial view's pixels if they meet ``condition``, else None (for :func:`wait_for`)."""
    image = view_pixels(driver, 0)
    return image if condition(image) else None


def save_screenshot(driver, path: Path) -> None:
    """The page as a palette PNG (the README's copy must stay small; octree keeps the few strong
    colours of the overlays, which median cut merges into the greys)."""
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)


# -- the tests ---------------------------------------------------------------------------------------------------
def test_the_page_shows_the_views_the_plan_and_needs_no_network(case, viewer, browser, tmp_path):
    images = wait_for("the four views to render", lambda: rendered(browser), timeout=START_TIMEOUT_S)
    assert browser.title == "MoDiff viewer"
    assert frame_label(browser) == "frame 0 of 3"
    statuses = [cell.get_attribute("data-status") for cell in timeline_cells(browser)]
    assert statuses == [("gating" if f["gating"] else "clear" if f["clear"] else "blocked") for f in case.plan["frames"]]
    # frame 0 is a gating frame: the path is green in the axial and coronal slice views and the 3D view
    assert case.plan["frames"][0]["gating"]
    green = _rgb255(COLOR_GATING)
    assert [pixels_of_color(images[i], green) >= PATH_PIXELS for i in (0, 2)] == [True, True]
    assert pixels_of_color(images[1], green) > 0
    cursor = browser.find_element(By.CSS_SELECTOR, "#modiff-curves line.cursor")
    assert cursor.get_attribute("data-frame") == "0"
    # every file the page loaded came from the viewer (no host but this computer resolves here)
    origin = viewer.url.rstrip("/")
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(origin) for url in loaded), loaded

    shot = tmp_path / "web-viewer.png"
    save_screenshot(browser, shot)
    assert shot.stat().st_size < SCREENSHOT_MAX_BYTES
    keep = os.environ.get("MODIFF_WEB_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_stepping_frames_changes_the_views_and_the_path_takes_the_frames_colour(case, browser):
    wait_for("the four views to render", lambda: rendered(browser), timeout=START_TIMEOUT_S)
    frames = case.plan["frames"]
    green = _rgb255(COLOR_GATING)
    before = show_frame(browser, 0, green)
    browser.find_element(By.ID, "modiff-next").click()
    wait_for("frame 1", lambda: frame_label(browser) == "frame 1 of 3")
    wait_for("the curves' cursor on frame 1", lambda: browser.find_element(
        By.CSS_SELECTOR, "#modiff-curves line.cursor").get_attribute("data-frame") == "1")

    other = next(t for t, f in enumerate(frames) if not f["gating"])  # the case has one (fixtures_web)
    color = status_color(frames[other])
    assert not np.array_equal(color, green)
    after = show_frame(browser, other, color)  # fails unless the path is redrawn in the frame's colour
    assert pixels_of_color(after[0], green) < PATH_PIXELS / 4
    # the anatomy moved: the axial, 3D and coronal views differ from frame 0's
    assert [changed_share(a, b) > CHANGED_SHARE for a, b in zip(after[:3], before[:3])] == [True] * 3

    browser.find_element(By.ID, "modiff-prev").click()
    wait_for(f"frame {other - 1}", lambda: frame_label(browser) == f"frame {other - 1} of 3")


def test_the_path_switch_hides_and_shows_the_overlay(case, browser):
    wait_for("the four views to render", lambda: rendered(browser), timeout=START_TIMEOUT_S)
    green = _rgb255(COLOR_GATING)
    with_path = show_frame(browser, 0, green)[0]
    switch = browser.find_element(By.ID, "modiff-path")
    browser.execute_script("arguments[0].click()", switch)
    without = wait_for("the path to disappear", lambda: axial_if(
        browser, lambda img: pixels_of_color(img, green) < PATH_PIXELS / 4))
    assert changed_share(without, with_path) > 0
    browser.execute_script("arguments[0].click()", switch)
    wait_for("the path to come back", lambda: pixels_of_color(view_pixels(browser, 0), green) >= PATH_PIXELS)


def test_play_advances_the_frames_and_pause_holds_one(browser):
    wait_for("the four views to render", lambda: rendered(browser), timeout=START_TIMEOUT_S)
    show_frame(browser, 0, _rgb255(COLOR_GATING))
    play = browser.find_element(By.ID, "modiff-play")
    play.click()
    seen = set()

    def passed_frames_1_and_2() -> bool:
        seen.add(frame_label(browser))
        return {"frame 1 of 3", "frame 2 of 3"} <= seen

    wait_for("playback to pass through frames 1 and 2", passed_frames_1_and_2)
    play.click()

    def holds_a_frame() -> str | None:
        shown = frame_label(browser)
        time.sleep(1.0)  # several frames at the playback rate (5 per second)
        return shown if frame_label(browser) == shown else None

    held = wait_for("the pause to hold a frame", holds_a_frame)
    time.sleep(1.0)
    assert frame_label(browser) == held


def test_ctrl_c_stops_the_viewer(viewer, browser):
    code = viewer.stop(signal.SIGINT)
    assert code == 130
    time.sleep(0.5)  # the reader thread has the last line
    assert "modiff: cancelled: the viewer was stopped\n" in viewer.stderr
    assert not any("Traceback" in line for line in viewer.stderr), "".join(viewer.stderr)
