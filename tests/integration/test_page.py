"""The live page in a real headless browser: it loads offline, shows the numbers, and follows them.

Needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver) and the
selenium package; `make test` installs them. Missing, the test fails (it is part of the suite);
JOURNEY_SKIP_BROWSER_TEST=1 skips it explicitly on a machine that cannot have a browser.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from support.sidecar_run import Deployment, get, produce, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "test-output" / "sidecar-page.png"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

if os.environ.get("JOURNEY_SKIP_BROWSER_TEST") == "1":
    pytest.skip("JOURNEY_SKIP_BROWSER_TEST=1", allow_module_level=True)
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    raise RuntimeError(
        "the browser test needs /usr/bin/chromium and chromedriver: run `make browser` (apt-get install "
        "chromium chromium-driver), or set JOURNEY_SKIP_BROWSER_TEST=1 to skip it"
    )
from selenium import webdriver  # noqa: E402


def _events(prefix: str, n: int, types: list[str]) -> list[dict[str, Any]]:
    t0 = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
    out = []
    for i in range(n):
        for j, etype in enumerate(types):
            out.append(
                {
                    "event_id": f"{prefix}-{i}-{j}", "customer_id": f"{prefix}-{i}", "type": etype,
                    "timestamp": datetime.fromtimestamp(t0 + i * 60 + j * 600, tz=UTC).isoformat(),
                    "channel": ["email", "search", "ads"][i % 3],
                    "properties": {"order_id": f"{prefix}-{i}", "amount": 5.0} if etype == "purchase" else {},
                }
            )
    return out


def _browser() -> Any:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


async def test_page_follows_the_numbers(broker: str, tmp_path: Path) -> None:
    dep = await Deployment.create(broker, tmp_path, partitions=2)
    worker = dep.worker("worker")
    sidecar = dep.sidecar([worker.port])
    base = f"http://127.0.0.1:{sidecar.port}"
    browser = None
    try:
        await wait_for("the sidecar to be ready", lambda: (get(f"{base}/readyz")[0] == 200, get(f"{base}/readyz")[1]), dep.live(), 120)
        first = _events("a", 6, ["page_view", "product_view"])
        await produce(broker, dep.settings.topic_touchpoints, first)
        def six() -> tuple[bool, Any]:
            status, body = get(f"{base}/stages")
            return status == 200 and body["total"] == 6, (status, body)

        await wait_for("6 customers", six, dep.live(), 90)

        browser = _browser()
        browser.get(base + "/")

        def page_text(css: str) -> str | None:
            """The element's text, None while the page has no such element. Read in one step in the
            page: it replaces its rows when the numbers change, so an element found first and read
            after could be gone by then (a stale reference)."""
            text = browser.execute_script(
                "const e = document.querySelector(arguments[0]); return e === null ? null : (e.innerText ?? e.textContent).trim();", css)
            return None if text is None else str(text)

        def shows(total: str, consideration: str) -> tuple[bool, Any]:
            seen = (page_text("#total"), page_text("#stage-consideration td:last-child"))
            return seen == (total, consideration), seen

        await wait_for("the page to show 6 customers", lambda: shows("6", "6"), dep.live(), 60)
        assert "live" in (page_text("#status") or "")

        # more customers arrive: the page follows without a reload
        more = _events("b", 4, ["page_view", "add_to_cart", "purchase"])
        await produce(broker, dep.settings.topic_touchpoints, more)
        def shows_buyers() -> tuple[bool, Any]:
            # One condition: a snapshot between two batches may count the new customers before
            # their purchases.
            seen = (page_text("#total"), page_text("#stage-consideration td:last-child"),
                    page_text("#stage-purchase td:last-child"), page_text("#funnel-purchase .reached"))
            return seen == ("10", "6", "4", "4"), seen

        await wait_for("the page to show 10 customers, 4 of them buyers", shows_buyers, dep.live(), 60)
        assert page_text("#channel-email td:nth-child(2)") not in ("", None)

        # nothing was fetched from anywhere but the sidecar
        requests = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(url.startswith(base) for url in requests), requests

        SCREENSHOT.parent.mkdir(exist_ok=True)
        time.sleep(0.2)
        assert browser.save_screenshot(str(SCREENSHOT))
        print(f"\nscreenshot: {SCREENSHOT}")
    finally:
        if browser is not None:
            browser.quit()
        dep.stop()
