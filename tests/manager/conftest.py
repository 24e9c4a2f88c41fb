"""Fixtures of the dashboard tests: one headless Chromium per module, a fresh page per
test that fails the test if the dashboard raised in the browser."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"the dashboard tests drive {CHROMIUM}, which is not installed")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the dashboard tests need playwright"
    )
    sync_api.expect.set_options(timeout=WAIT_MS)  # expect's own default is 5 s
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="light")
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"the dashboard raised in the browser: {errors}"
