"""The console's tests' tools: a `lab console` process, Debian's Chromium, and the page.

The browser is the system's (packages ``chromium`` and ``chromium-driver``), named by path
so that Selenium never looks for or downloads one. Without it the browser tests are skipped
with the reason, except in CI (the environment variable CI set), where a missing browser
fails: `.ci/run` installs it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from labprocess import lab_cmd, write_config
from selenium import webdriver
from selenium.common.exceptions import (
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1200",
)
WAIT = 45.0
"""Seconds a test waits for the page to show something (phones updating take ~15 s)."""
LOGIN_LINE = re.compile(r"^http://127\.0\.0\.1:(\d+)/login\?key=\S+$")


def require_browser() -> None:
    """Skip (fail in CI) when Debian's Chromium or its driver is not installed."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if not missing:
        return
    reason = (
        f"the console's browser tests need Chromium: {', '.join(missing)} missing "
        "(apt-get install chromium chromium-driver)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; in CI the browser must be there")
    pytest.skip(reason)


@dataclass
class ConsoleProcess:
    """A `lab console` process: the lab it started, and the login link it printed."""

    proc: subprocess.Popen[str]
    state: Path
    config: Path
    login_url: str
    port: int
    output: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        """The console's own origin."""
        return f"http://127.0.0.1:{self.port}"

    def lab(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the `lab` command against the console's lab."""
        return subprocess.run(
            lab_cmd(self.config, self.state, *args),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def stop(self) -> None:
        """SIGTERM, as Ctrl-C would; SIGKILL if it does not go."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def start_console(
    directory: Path, *args: str, config: Path | None = None, state: Path | None = None
) -> ConsoleProcess:
    """`lab console` with ``args``, waiting (by reading its output) for the login link: on
    a private config of free ports with a lab of its own, or with the ``config`` and
    ``state`` of a running lab, to attach to it."""
    directory.mkdir(parents=True, exist_ok=True)
    config = config or write_config(directory)
    state = state or directory / "state"
    err = (directory / "console.err").open("w")
    proc = subprocess.Popen(
        lab_cmd(config, state, "console", "--port", "0", *args),
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    err.close()
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        match = LOGIN_LINE.match(line.strip())
        if match:
            return ConsoleProcess(proc, state, config, line.strip(), int(match[1]), seen)
    proc.wait(timeout=10)
    pytest.fail(
        f"lab console ended early: {''.join(seen)} {(directory / 'console.err').read_text()}"
    )


class Page:
    """The browser on the console's page, with waits for what the page shows (no sleeps)."""

    def __init__(self, driver: webdriver.Chrome, console: ConsoleProcess) -> None:
        self.driver = driver
        self.console = console
        self.shots: Path | None = None

    def login(self) -> None:
        """Open the login link: the console sets the session and shows the page."""
        self.driver.get(self.console.login_url)
        self.wait_for(lambda: self.live_state() == "live", "the page to go live")

    def live_state(self) -> str:
        """What the page's live indicator says: live, connecting, lab-away."""
        found = self.driver.find_elements(By.ID, "live")
        return str(found[0].get_attribute("data-state")) if found else ""

    def view(self, name: str) -> None:
        """Choose a view by its tab."""
        self.driver.find_element(By.CSS_SELECTOR, f'nav.views a[data-view="{name}"]').click()
        self.wait_for(lambda: self.find(f"#{name}").is_displayed(), f"the {name} view")

    def find(self, css: str) -> WebElement:
        """The element ``css`` selects."""
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        """Every element ``css`` selects."""
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """Wait until ``condition`` is true (fragments swapped under it are retried)."""

        def check(_: Any) -> Any:
            try:
                return condition()
            except (
                StaleElementReferenceException,
                NoSuchElementException,
                ElementNotInteractableException,
                LookupError,
            ):
                # Not there yet, or swapped for a newer fragment under our hands: again.
                return False

        return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
            check, message=f"waited {timeout:g} s for {what}"
        )

    def text(self, css: str) -> str:
        """The text of the element ``css`` selects (read again if swapped while read)."""
        return str(self.wait_for(lambda: [self.find(css).text], f"the text of {css}")[0])

    def attribute(self, css: str, name: str) -> str:
        """An attribute of the element ``css`` selects ("" when it has none)."""
        found = self.wait_for(lambda: [self.find(css).get_attribute(name)], f"{css} {name}")
        return str(found[0] or "")

    def wait_text(self, css: str, text: str, timeout: float = WAIT) -> None:
        """Wait until an element ``css`` selects contains ``text``."""
        self.wait_for(
            lambda: any(text in el.text for el in self.find_all(css)),
            f"{text!r} in {css}",
            timeout,
        )

    def message(self) -> str:
        """The status line's message (or error) after an action."""
        return self.text("#message") or self.text("#error")

    def wait_message(self, text: str) -> str:
        """Wait until the status line (message or error) says ``text``; the line."""
        try:
            self.wait_for(lambda: text in self.message(), f"the status line to say {text!r}")
        except TimeoutException:
            raise AssertionError(
                f"the status line never said {text!r}; it says {self.message()!r}"
            ) from None
        return self.message()

    def fill(self, css: str, value: str) -> None:
        """Type ``value`` into the field ``css`` selects, replacing what was there."""
        field_ = self.find(css)
        field_.clear()
        field_.send_keys(value)

    def choose(self, css: str, value: str) -> None:
        """Choose the option of value ``value`` in the select ``css`` selects."""
        self.find(f"{css} option[value='{value}']").click()

    def button(self, text: str, within: str = "body") -> WebElement:
        """The first button within ``within`` whose text is (or starts with) ``text``."""
        for candidate in self.find_all(f"{within} button"):
            if candidate.text.strip().startswith(text):
                return candidate
        raise LookupError(f"no button {text!r} in {within}")

    def activate(self, css: str) -> None:
        """Press Enter on the element ``css`` selects (a link, a button), retried while the
        fragment holding it is swapped."""

        def enter() -> bool:
            self.find(css).send_keys("\n")
            return True

        self.wait_for(enter, f"{css} to take Enter")

    def press(self, text: str, within: str = "body") -> None:
        """Press a button with the keyboard (Enter), as a trainer without a mouse would."""
        # A fresh status line: the answer to this press is what shows next.
        self.driver.execute_script(
            "document.getElementById('message').textContent = '';"
            "document.getElementById('error').textContent = '';"
        )

        def enter() -> bool:
            button = self.button(text, within)
            if not button.is_enabled():
                return False
            button.send_keys("\n")
            return True

        self.wait_for(enter, f"the button {text!r} in {within} to take Enter")

    def screenshot(self, name: str) -> Path:
        """Save the window as ``name``.png in the test's directory."""
        assert self.shots is not None
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path
