"""A real browser uses the Echo Test demo served by the loop under test.

Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) is driven
with selenium from an executor thread while the loop keeps serving.  It
loads the page, checks the stylesheet applied, waits for the WebSocket to
connect, clicks Send and waits for the echo.

chromedriver is started by the test itself, outside the loop and its
threads: under gevent's monkey-patching a child process can only be
watched from the main hub.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import cast

import pytest

pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from protoshim.conformance._helpers import free_port
from protoshim.conformance.http._support import serving, small_config
from protoshim.conformance.plugin import RunCoroutine
from protoshim.examples.echo_test import protocol_factory
from protoshim.protocols.http import HTTPServerProtocol

pytestmark = pytest.mark.requires("tcp", "threads")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
#: seconds the browser may take for any one step
STEP = 20


@pytest.fixture
def chromedriver() -> Iterator[str]:
    """Run chromedriver on a loopback port; yield its URL."""
    port = free_port()
    process = subprocess.Popen(
        [CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(STEP)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STEP)


def wait_for_driver(url: str) -> None:
    """Poll chromedriver's status endpoint until it is ready (at most STEP seconds)."""
    deadline = time.monotonic() + STEP
    while True:
        try:
            with urllib.request.urlopen(f"{url}/status", timeout=STEP) as answer:
                if json.load(answer)["value"]["ready"]:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"chromedriver did not become ready within {STEP} s")
        time.sleep(0.1)


def drive(
    driver_url: str, url: str, profile: pathlib.Path, screenshot: pathlib.Path
) -> dict[str, str]:
    """Open ``url``, click Send, and report what the page showed."""
    wait_for_driver(driver_url)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    # A running driver and an explicit binary: selenium never looks for downloads.
    driver = webdriver.Remote(command_executor=driver_url, options=options)
    try:
        driver.set_page_load_timeout(STEP)
        driver.get(url)
        log = driver.find_element(By.ID, "log")
        WebDriverWait(driver, STEP).until(lambda _: "Connected to" in log.text)
        font = driver.execute_script("return getComputedStyle(document.body).fontFamily")
        value = driver.find_element(By.ID, "message").get_attribute("value")
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, STEP).until(lambda _: "Got echo:" in log.text)
        driver.save_screenshot(str(screenshot))
        return {"title": driver.title, "font": str(font), "value": str(value), "log": log.text}
    finally:
        driver.quit()


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is absent (apt-get install chromium chromium-driver)",
)
@pytest.mark.skipif(
    not os.path.exists(CHROMEDRIVER),
    reason="chromedriver is absent (apt-get install chromium-driver)",
)
def test_echo_test_page_works_in_chromium(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, tmp_path: pathlib.Path, chromedriver: str
) -> None:
    profile = tmp_path / "profile"
    profile.mkdir()

    async def main() -> dict[str, str]:
        # The port is only the page's fallback address; the page uses its own host.
        factory = cast("type[HTTPServerProtocol]", protocol_factory(0, small_config()))
        async with serving(loop, factory) as served:
            url = f"http://127.0.0.1:{served.port}/"
            shot = tmp_path / "echo-test.png"
            return await loop.run_in_executor(None, drive, chromedriver, url, profile, shot)

    seen = run(main(), timeout=90)
    assert seen["title"] == "Echo Test"
    assert seen["font"].replace('"', "").replace(" ", "") == "Helvetica,Arial,sans-serif"
    assert seen["value"] == "Hello, world!"
    lines = seen["log"].splitlines()
    assert lines[0].startswith("Connected to ws://127.0.0.1:")
    assert lines[0].endswith("/ws")
    assert "Sent: Hello, world!" in lines
    assert "Got echo: Hello, world!" in lines
