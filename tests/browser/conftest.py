"""The console in a real browser: headless Chromium (Debian's chromium and chromium-driver, which
`make services` installs) driven by Selenium, against the real server on the front door and the
simulator. A missing browser fails the tests (CI must not skip them quietly)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from livecall import LiveServer, start_server
from simulator import FakeTelnyx

WAIT_S = 15


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"no {' or '.join(names)}: install Debian's chromium and chromium-driver (make services)",
                pytrace=False)


class Page:
    """The browser on the console, with waits that fail the test instead of hanging."""

    def __init__(self, driver: WebDriver, base_url: str, shots: Path) -> None:
        self.driver = driver
        self.base_url = base_url
        self.shots = shots

    def open(self, path: str = "/console") -> None:
        self.driver.get(self.base_url + path)

    def find(self, test: str, root: WebElement | None = None) -> WebElement:
        return (root or self.driver).find_element(By.CSS_SELECTOR, f'[data-test="{test}"]')

    def find_all(self, test: str, root: WebElement | None = None) -> list[WebElement]:
        return (root or self.driver).find_elements(By.CSS_SELECTOR, f'[data-test="{test}"]')

    def present(self, test: str) -> bool:
        return bool(self.find_all(test))

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(lambda _: condition(), what)
        except Exception:
            self.screenshot(f"failed-{what.replace(' ', '-')[:60]}")
            raise

    def call_row(self, call_control_id: str) -> WebElement | None:
        rows = self.driver.find_elements(By.CSS_SELECTOR, f'[data-test="call-row"][data-call="{call_control_id}"]')
        return rows[0] if rows else None

    def open_call(self, call_control_id: str) -> None:
        row = self.wait(lambda: self.call_row(call_control_id), "the call in the list")
        row.click()
        self.wait(lambda: self.find("call-id").text == call_control_id, "the call's panel")

    def injection_rows(self) -> list[WebElement]:
        return self.find_all("injection-row")

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture(scope="session")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1440,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    service = Service(executable_path=_binary("chromedriver", "chromium-driver"),
                      log_output=str(tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"))
    try:
        browser = webdriver.Chrome(options=options, service=service)
    except WebDriverException as exc:
        pytest.fail(f"headless Chromium would not start: {exc.msg}", pytrace=False)
    yield browser
    browser.quit()


@pytest.fixture
def make_console(driver: WebDriver, telnyx: FakeTelnyx, tmp_path: Path,
                 media_dir: Path) -> Iterator[Callable[..., tuple[LiveServer, Page]]]:
    """The real server (front door) and the browser on a fresh session of its console."""
    started: list[LiveServer] = []

    def make(**overrides: Any) -> tuple[LiveServer, Page]:
        server = start_server(telnyx, tmp_path / "mixer.sqlite3", media_dir, **overrides)
        started.append(server)
        driver.get(f"{server.url}/health")  # cookies are per host, not port: drop an earlier test's
        driver.delete_all_cookies()
        page = Page(driver, server.url, tmp_path)
        return server, page

    yield make
    driver.get("about:blank")  # stop the page's feed before the server goes
    for server in started:
        server.stop()
