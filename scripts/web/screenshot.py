"""docs/web-operation.png: the operation page of a spawn that failed at
wait_running, in headless Debian chromium (run from the repository root with
the venv's python). Makes its own SQLite database in a temporary directory."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.web.conftest import CHROMEDRIVER, CHROMIUM, TOKENS, fresh_sqlite, login, site_on  # noqa: E402

OUT = Path("docs/web-operation.png")


def main() -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory() as tmp:
        with site_on(fresh_sqlite(Path(tmp)), Path(tmp)) as site:
            opts = webdriver.ChromeOptions()
            opts.binary_location = CHROMIUM
            for arg in (
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1200,1100",
                "--hide-scrollbars",
            ):
                opts.add_argument(arg)
            driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
            try:
                page = f"{site.base}/operations/{site.failed_op}"
                login(driver, site, "reader", page)
                driver.save_screenshot(str(OUT))
            finally:
                driver.quit()
    print(f"wrote {OUT} (token used: {TOKENS['reader']!r}, a test token)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
