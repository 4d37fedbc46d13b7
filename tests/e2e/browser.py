"""A real headless Chromium driven by Selenium, for the UI's end-to-end tests.

Debian's `chromium` and `chromium-driver` only (paths fixed, so Selenium Manager never looks for or downloads a
browser: the tests run without internet). Every page visited is screenshotted into the artifacts directory, and its
browser console is checked for errors (a Content-Security-Policy violation, a script error, a failed load).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from .conftest import APT_PACKAGES_FILE, REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 10.0
DESKTOP = (1280, 900)
PHONE = (375, 900)


def artifacts_dir() -> Path:
    """Where screenshots go: $MOORAGE_TEST_ARTIFACTS/ui, by default <repo>/test-artifacts/ui (created if missing)."""
    base = os.environ.get("MOORAGE_TEST_ARTIFACTS") or str(REPO_ROOT / "test-artifacts")
    path = Path(base) / "ui"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _require(path: str, package: str) -> None:
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{path} is missing: the UI browser tests need the Debian package {package!r} "
            f"(`apt-get install {package}`; CI installs everything listed in {APT_PACKAGES_FILE}).",
            pytrace=False,
        )


def _processes_using(marker: str) -> list[int]:
    """The ids of this machine's processes whose command line contains `marker` (our unique profile directory)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


@dataclass
class Browser:
    """One Chromium session with a fresh profile; `page_count` numbers the screenshots in visiting order."""

    driver: webdriver.Chrome
    base_url: str
    shots: Path
    profile: Path
    label: str  # names this session's screenshots: LABEL-NN-PAGE.png
    page_count: int = 0
    console: list[str] = field(default_factory=list)  # every console entry seen
    errors: list[str] = field(default_factory=list)  # the unexpected SEVERE ones, with their page

    # Navigation and checks.

    def url(self, path: str) -> str:
        return self.base_url + path

    def get(self, path: str) -> None:
        self.driver.get(self.url(path))

    @property
    def path(self) -> str:
        """The current page's path and query."""
        current: str = self.driver.current_url
        assert current.startswith(self.base_url), f"left the registry: {current}"
        return current[len(self.base_url) :]

    def wait(self, condition: Callable[[webdriver.Chrome], Any], what: str, timeout: float = WAIT) -> Any:
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(condition)
        except TimeoutException:
            pytest.fail(f"within {timeout:g}s, never: {what} (at {self.driver.current_url})")

    def wait_path(self, pattern: str) -> None:
        """Wait until the current path (with query) matches the regular expression `pattern` in full."""
        self.wait(lambda d: re.fullmatch(pattern, self.path) is not None, f"the page's path matches {pattern!r}")
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete", "the page is loaded")

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def exists(self, css: str) -> bool:
        return bool(self.find_all(css))

    def text(self, css: str) -> str:
        return self.find(css).text.strip()

    def click_and_load(self, element: WebElement, pattern: str) -> None:
        """Click a link or submit button and wait for the next page (its path matching `pattern`) to load."""
        old = self.find("html")
        element.click()
        self.wait_next_page(old, pattern)

    def wait_next_page(self, old: WebElement, pattern: str) -> None:
        """Wait until the page whose root was `old` is replaced by one whose path matches `pattern`."""
        self.wait(lambda d: _stale(old), "the browser goes to another page")
        self.wait_path(pattern)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def active_element_id(self) -> str:
        found: str = self.js("const e = document.activeElement; return e ? (e.id || e.tagName) : ''")
        return found

    def checked(self, name: str, *, expected_status: int | None = None) -> None:
        """Screenshot the page as `LABEL-NN-name.png`, and note the errors (SEVERE entries) its console holds.

        A page expected to answer an error status logs that its own load failed ("Failed to load resource: the
        server responded with a status of 404"): that one entry is expected; any other error is not. Errors are
        kept in `errors` for the test to assert at its end, so that one does not hide what the rest of it checks.
        """
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete", "the page is loaded")
        self.page_count += 1
        self.driver.save_screenshot(str(self.shots / f"{self.label}-{self.page_count:02d}-{name}.png"))
        entries = self.console_entries()
        self.console.extend(f"[{name}] {e['level']} {e['message']}" for e in entries)
        errors = [e["message"] for e in entries if e["level"] == "SEVERE"]
        if expected_status is not None:
            own = f"{self.driver.current_url} - Failed to load resource: the server responded with a status of "
            errors = [m for m in errors if not m.startswith(own + str(expected_status))]
        self.errors.extend(f"{name} ({self.driver.current_url}): {m}" for m in errors)

    def clipboard(self) -> str:
        """What the system clipboard holds (the page may read it: permission granted at start)."""
        text: str = self.driver.execute_async_script(
            "navigator.clipboard.readText().then(arguments[0], (e) => arguments[0]('<unreadable: ' + e + '>'))"
        )
        return text

    def console_entries(self) -> list[dict[str, Any]]:
        """The browser console's entries since the last call (`goog:loggingPrefs`), each with `level` and `message`."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return entries

    def horizontal_overflow(self) -> str | None:
        """None when the page as a whole fits the window's width (wide tables may scroll inside their `.scroll`
        wrappers); otherwise what sticks out."""
        scroll_width, inner_width = self.js("return [document.documentElement.scrollWidth, window.innerWidth]")
        if scroll_width <= inner_width + 1:
            return None
        return f"the page is {scroll_width} px wide in a {inner_width} px window; sticking out: " + ", ".join(
            self.widest_elements(inner_width)
        )

    def widest_elements(self, limit: int) -> list[str]:
        """The elements whose box reaches past `limit` px, except those a `.scroll` wrapper clips (for messages)."""
        found: list[str] = self.js(
            """
            const out = [];
            for (const e of document.body.querySelectorAll('*')) {
              const r = e.getBoundingClientRect();
              const wrapper = e.closest('.scroll');
              const clipped = wrapper && wrapper !== e && wrapper.getBoundingClientRect().right <= arguments[0] + 1
                && getComputedStyle(e).position !== 'absolute';
              if (r.right > arguments[0] + 1 && !clipped) {
                const classes = [...e.classList].map((c) => '.' + c).join('');
                out.push(`${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''}${classes} (right edge at `
                  + `${Math.round(r.right)} px, "${e.textContent.trim().slice(0, 30)}")`);
              }
            }
            return out.slice(0, 10);
            """,
            limit,
        )
        return found

    def set_size(self, size: tuple[int, int]) -> None:
        self.driver.set_window_size(*size)
        self.wait(lambda d: d.execute_script("return window.innerWidth") == size[0], f"the window is {size[0]} px wide")

    def emulate_dark(self, dark: bool) -> None:
        value = "dark" if dark else "light"
        self.driver.execute_cdp_cmd(
            "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": value}]}
        )

    def cookie(self, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.driver.get_cookie(name)
        return found


def _stale(element: WebElement) -> bool:
    try:
        element.is_enabled()
    except WebDriverException:
        return True
    return False


@contextlib.contextmanager
def chromium(base_url: str, profile: Path, label: str, shots: Path | None = None) -> Iterator[Browser]:
    """A headless Chromium on `base_url` with a fresh profile in `profile`; always quit, its processes ended."""
    _require(CHROMIUM, "chromium")
    _require(CHROMEDRIVER, "chromium-driver")
    profile.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--password-store=basic",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager is never run, so nothing is downloaded.
    service = Service(CHROMEDRIVER, log_output=str(profile.parent / f"chromedriver-{label}.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.execute_cdp_cmd(
            "Browser.grantPermissions",
            {"origin": base_url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
        )
        yield Browser(driver, base_url, shots or artifacts_dir(), profile, label)
    finally:
        with contextlib.suppress(Exception):
            driver.quit()
        # Whatever outlived quit() (a hung renderer, a crashed driver): ours carry our unique profile path.
        leftovers = _processes_using(f"--user-data-dir={profile}")
        if service.process is not None and service.process.poll() is None:
            leftovers.append(service.process.pid)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while leftovers and time.monotonic() < deadline and _processes_using(f"--user-data-dir={profile}"):
            time.sleep(0.05)
