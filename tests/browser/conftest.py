"""A real headless Chromium (Debian's, never a downloaded one) driven by playwright, beside the in-process relay."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; ./scripts/test installs it)")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


class PageErrors:
    """Script errors and CSP violations of the pages a test opened: a test fails on any it did not expect."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._expected: list[str] = []

    def expect(self, text: str) -> None:
        """Console errors holding `text` are part of the test (the browser logs every 4xx answer)."""
        self._expected.append(text)

    def watch(self, page: Page) -> Page:
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))

        def on_console(msg: ConsoleMessage) -> None:
            # a refused connection while the relay is down is what the reconnect tests make happen
            expected = ["ERR_CONNECTION_REFUSED", *self._expected]
            if msg.type == "error" and not any(text in msg.text for text in expected):
                self.errors.append(f"{page.url}: console: {msg.text}")

        page.on("console", on_console)
        return page


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: CONSOLE_SCREENSHOTS (e.g. docs) when set, the test's tmp dir otherwise."""
    wanted = os.environ.get("CONSOLE_SCREENSHOTS")
    path = Path(wanted) if wanted else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path
