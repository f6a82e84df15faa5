"""The web page in a real browser: headless Chromium (Debian's package, driven by Playwright) opens the page,
uploads an image, draws two boxes, uses a task shortcut and a free question, and sees the model's answers.

Skipped, with the reason, when Playwright or a Chromium executable is missing (.ci/run installs both).
A screenshot is saved under the test's tmp dir (and to docs/serve_page.png with REGIONVLM_DOCS_SCREENSHOT=1).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from test_serve_api import random_export

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in (os.environ.get("REGIONVLM_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p), None)
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if CHROMIUM is None:
    pytest.skip("no chromium executable on PATH (Debian: apt-get install -y chromium)", allow_module_level=True)


def scene(path: Path) -> None:
    """A picture the eye can check in the screenshot: a red square and a blue disc on grey."""
    from PIL import Image

    yy, xx = np.mgrid[:120, :160]
    arr = np.full((120, 160, 3), 200, np.uint8)
    arr[20:70, 15:65] = (220, 40, 40)
    arr[(yy - 70) ** 2 + (xx - 115) ** 2 < 30 ** 2] = (40, 70, 220)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from regionvlm.inference import RegionChat
    from regionvlm.serve.app import RegionChatServer

    chat = RegionChat.from_pretrained(random_export(tmp_path_factory.mktemp("page") / "export"), device="cpu")
    server = RegionChatServer(("127.0.0.1", 0), chat, "tiny-random")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.close()


def drag(page, box, x0, y0, x1, y1) -> None:
    """A mouse drag on the canvas, in fractions of its displayed size."""
    page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + x1 * box["width"], box["y"] + y1 * box["height"], steps=5)
    page.mouse.up()



def wait_until(page, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression (page.wait_for_function compiles its string in the page, which the page's
    Content-Security-Policy forbids: no 'unsafe-eval'; evaluate runs outside that policy)."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout} s: {expression}"
        time.sleep(0.05)

def test_page_upload_draw_ask(server, tmp_path):
    picture = tmp_path / "scene.png"
    scene(picture)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 720})
            page.set_default_timeout(60_000)
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/")
            page.wait_for_selector("button[data-task='classify']")
            assert page.inner_text("#model") == "tiny-random"
            page.set_input_files("#file", str(picture))
            wait_until(page, "document.getElementById('canvas').width === 640")  # 160 px shown 4×
            box = page.locator("#canvas").bounding_box()
            drag(page, box, 0.05, 0.10, 0.45, 0.62)    # the red square
            drag(page, box, 0.50, 0.30, 0.95, 0.95)    # the blue disc
            rows = page.locator("#regions .region")
            assert rows.count() == 2
            coords = [[float(v) for v in rows.nth(i).locator(".coords").inner_text().split(",")] for i in range(2)]
            assert coords[0] == pytest.approx([8, 12, 72, 74.4], abs=1.5)  # image pixels, not screen pixels

            page.click("button[data-task='classify']")  # asks about each region alone
            wait_until(page, "[...document.querySelectorAll('#regions .answer')].every(a => a.textContent)")
            each = [rows.nth(i).locator(".answer").inner_text() for i in range(2)]
            page.fill("#question", "What is <region1> next to <region2>?")
            page.click("#ask")
            wait_until(page, "document.getElementById('answer').textContent.length > 0")
            answer = page.inner_text("#answer")
            assert page.inner_text("#status") == ""
            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert errors == []
    chat = server.chat  # the page's answers are the model's answers to what was drawn
    assert each == [chat.ask(str(picture), [c], server.tasks["classify"]) for c in coords]
    assert answer == chat.ask(str(picture), coords, "What is <region1> next to <region2>?")
    assert shot.stat().st_size > 10_000
    if os.environ.get("REGIONVLM_DOCS_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "serve_page.png")
