"""The dashboard in headless Chromium during a short replay on a real broker: the overview lists
the stations, a station page renders its chart, a new forecast appears without a reload."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from pm25.embedded import free_port
from pm25.stations import BEIJING_STATIONS
from producer.replay import load_source
from tests.integration.conftest import send_readings

pytestmark = [pytest.mark.broker, pytest.mark.browser]

STATIONS = {"Dongsi", "Wanliu", "Huairou"}
CHROMIUM = os.environ.get("PM25_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "reports"


def _stations(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stations", timeout=2) as resp:
        return {s["station_id"]: s for s in orjson.loads(resp.read())["stations"]}


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_dashboard_live_in_headless_chromium(settings_env, settings, start_worker, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM} (make test installs Debian's chromium)"
    readings = list(load_source("multisite", [], stations=STATIONS, hours=60))
    first = [r for r in readings if r.hour < readings[0].hour + 54]
    later = [r for r in readings if r.hour >= readings[0].hour + 54]
    start_worker()
    port = free_port()
    log = open(tmp_path / "dashboard.log", "wb")  # noqa: SIM115
    dash = subprocess.Popen(
        [sys.executable, "-m", "pm25_ops.cli", "dashboard", "--port", str(port)],
        env={**os.environ, **settings_env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    loaded = subprocess.run(
        [sys.executable, "-m", "pm25_ops.cli", "stations", "load", str(BEIJING_STATIONS)],
        env={**os.environ, **settings_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr
    try:
        send_readings(settings, first)
        _wait(
            lambda: all(s.get("forecast") for s in _stations(port).values()) and len(_stations(port)) == 3,
            90,
            "forecasts of 3 stations on the dashboard",
        )
        SHOTS.mkdir(exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelectorAll('li.card svg path.fc').length === 3", timeout=20000)
            text = page.inner_text("#stations")
            for s in STATIONS:
                assert s in text
            assert any(c in text for c in ("Good", "Moderate", "Unhealthy", "Hazardous"))  # names, not colour only
            page.screenshot(path=str(SHOTS / "dashboard-overview.png"), full_page=True)
            # keyboard navigation: focus the card link and press Enter
            page.focus('a[data-station="Dongsi"]')
            page.keyboard.press("Enter")
            page.wait_for_url(f"http://127.0.0.1:{port}/station/Dongsi")
            page.wait_for_selector("#chart svg path.fc")
            page.wait_for_selector("#chart svg path.obs")
            issued_before = page.get_attribute("#chart", "data-issued")
            rows = page.locator("#next tbody tr").count()
            assert rows == 24
            page.wait_for_selector("#adaptation tbody tr")  # the station's current weights
            assert page.locator("#adaptation tbody tr").count() == 5
            # the station metadata: where it is, and its nearest neighbours with their latest readings
            page.wait_for_selector("#neighbours tbody tr")
            assert page.locator("#neighbours tbody tr").count() == 6
            assert "network beijing" in page.inner_text("#location")
            # new readings -> new forecast, shown without reloading the page
            page.evaluate("window.__noReload = true")
            send_readings(settings, later)
            page.wait_for_function(
                f"document.querySelector('#chart').dataset.issued > '{issued_before}'", timeout=60000
            )
            assert page.evaluate("window.__noReload") is True  # same document: no reload happened
            page.screenshot(path=str(SHOTS / "dashboard-station.png"), full_page=True)
            print(f"\nforecast on the page went from {issued_before} to {page.get_attribute('#chart', 'data-issued')}")
            browser.close()
    finally:
        dash.terminate()
        dash.wait(timeout=10)
        log.close()
