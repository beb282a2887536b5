"""Fixtures of the console's tests: one `lab console` and one headless Chromium per module.

Each module shares its console (and so its lab) and its browser among its tests; what a
test does to the lab stays in that module. Screenshots go to each test's tmp_path.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_page import (
    CHROMEDRIVER,
    CHROMIUM,
    CHROMIUM_FLAGS,
    ConsoleProcess,
    Page,
    require_browser,
    start_console,
)
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Debian's Chromium, headless, with a profile of its own."""
    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.TemporaryDirectory(prefix="console-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile.name}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        profile.cleanup()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    """One `lab console` for the module, with a lab of its own at 60 times real time (its
    default): a phone's five-minute wait takes five seconds, long enough for the page to
    show phones on their way (at 600 times a whole update can pass between two looks)."""
    require_browser()
    running = start_console(tmp_path_factory.mktemp("console"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def logged_in(browser: webdriver.Chrome, console: ConsoleProcess) -> Page:
    """The browser on the console, logged in with the link it printed."""
    page = Page(browser, console)
    page.login()
    return page


@pytest.fixture
def page(logged_in: Page, tmp_path: Path) -> Page:
    """The logged-in page, saving screenshots to this test's tmp_path."""
    logged_in.shots = tmp_path
    return logged_in
