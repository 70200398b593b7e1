"""The page at / in headless Chromium: pick a real photo, its top class shows with bars, and the model card."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium at /usr/bin/chromium")
def test_uploading_a_photo_shows_the_right_label(server: Any, real_photos: dict[str, Path], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    photo = shutil.copy(real_photos["coffee"], tmp_path / "coffee.png")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("#card dl")  # the model card came from /v1/model
            assert "efficientnet_lite0" in page.inner_text("#card")
            page.set_input_files("#files", str(photo))
            page.wait_for_selector(".result .label", timeout=60_000)
            labels = page.locator(".result .label").all_inner_texts()
            assert labels[0] == "espresso"
            assert len(labels) == 5
            assert page.locator(".result .bar").count() == 5
            page.focus("#pick")  # the picker is reachable from the keyboard
            assert page.evaluate("document.activeElement.id") == "pick"
        finally:
            browser.close()
