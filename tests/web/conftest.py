"""A real `computeflow serve` subprocess over a database holding a failed and
a succeeded spawn, both made through the CLI as an operator would."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, _unreachable, clean, run_cli, write_conf
from web.auth import hash_token

TOKENS = {"reader": "reader-token-1", "operator": "operator-token-1", "admin": "admin-token-1"}
WEB_CONF = "[web]\ntokens = " + ",".join(f"{r}:{hash_token(t)}" for r, t in TOKENS.items()) + "\n"
FAIL_AT = "wait_running"


@dataclass
class Site:
    base: str
    db_url: str
    conf: Path
    log: Path
    failed_op: str  # spawn of vm1, failed at FAIL_AT and reverted
    ok_op: str  # spawn of vm2, succeeded

    def call(
        self, method: str, path: str, token: str | None = "reader", body=None, raw: bytes | None = None
    ) -> tuple[int, object]:
        """(status, decoded JSON) of one API request; token: a role name, a literal, or None."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {TOKENS.get(token, token)}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(conf: Path, log: Path, deadline_s: float = 20) -> Iterator[str]:
    """`computeflow serve` on a free port; yields its base URL once it answers."""
    port = _free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conductor.cli", "--config-file", str(conf), "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + deadline_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"computeflow serve exited {proc.returncode}: {log.read_text()}")
            try:
                with urllib.request.urlopen(base + "/api/v1/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"computeflow serve did not answer in {deadline_s}s: {log.read_text()}")
                time.sleep(0.05)  # polling interval, not synchronisation
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spawn(conf: Path, name: str) -> str:
    res = run_cli(conf, "spawn", name, "--flavor", "m1.small", "--image", "cirros")
    first = res.stdout.splitlines()[0] if res.stdout else ""
    assert first.startswith("operation "), res.stderr
    return first.split()[1]


def fresh_sqlite(tmp: Path) -> str:
    """A new SQLite database of its own, at the current schema."""
    from persistence import schema
    from persistence.session import Database

    url = f"sqlite:///{tmp}/computeflow.sqlite"
    db = Database(url)
    schema.upgrade(db)
    db.dispose()
    return url


@contextlib.contextmanager
def site_on(db_url: str, tmp: Path, server_extra: str = "") -> Iterator[Site]:
    """The two spawns made by the CLI, then `computeflow serve`; `server_extra`:
    more configuration for the server only (it runs what the API submits)."""
    clean(db_url)
    state = tmp / "state"
    failing = write_conf(tmp / "failing.conf", state, db_url, f"[fake]\nfaults = {FAIL_AT}:execute:fail\n")
    conf = write_conf(tmp / "computeflow.conf", state, db_url, WEB_CONF)
    assert run_cli(conf, "hosts", "add", "h1", "--vcpus", "8", "--ram-mb", "16384", "--disk-gb", "200").returncode == 0
    failed_op = _spawn(failing, "vm1")
    ok_op = _spawn(conf, "vm2")
    log = tmp / "serve.log"
    if server_extra:
        conf = write_conf(tmp / "serve.conf", state, db_url, WEB_CONF + server_extra)
    with serving(conf, log) as base:
        yield Site(base, db_url, conf, log, failed_op, ok_op)


@pytest.fixture(scope="package")
def sqlite_site(sqlite_url, tmp_path_factory) -> Iterator[Site]:
    """One server on SQLite for the API, page and browser tests (each server
    start costs two CLI spawns and ~4 s); tests only add operations to it."""
    with site_on(sqlite_url, tmp_path_factory.mktemp("web-sqlite")) as s:
        yield s


@pytest.fixture(scope="package", params=["sqlite", "postgresql", "mysql"])
def site(request, tmp_path_factory) -> Iterator[Site]:
    """The API tests' server on each database the CLI supports (MariaDB as mysql)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_site")
        return
    with site_on(request.getfixturevalue(f"{request.param}_url"), tmp_path_factory.mktemp(f"web-{request.param}")) as s:
        yield s


# -- the browser tier: Debian's chromium and chromedriver (scripts/web/install.sh) --
CHROMIUM = os.environ.get("COMPUTEFLOW_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("COMPUTEFLOW_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")


#: Where each browser test leaves a screenshot of its last page (CI keeps the folder).
SCREENSHOTS = Path(os.environ.get("COMPUTEFLOW_TEST_ARTIFACTS", REPO / "test-artifacts")) / "web"


@pytest.fixture
def browser(request):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        _unreachable(
            "headless browser", f"{', '.join(missing)} missing: scripts/web/install.sh installs Debian's chromium"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(15)
    try:
        yield driver
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"{request.node.name}.png"))
    finally:
        driver.quit()


def login(driver, site: Site, role: str, page: str) -> None:
    """Open `page`, be sent to the login form, log in as `role`, land on `page`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page)
    WebDriverWait(driver, 10).until(ec.presence_of_element_located((By.ID, "token")))
    assert "/login" in driver.current_url
    driver.find_element(By.ID, "token").send_keys(TOKENS[role])
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 10).until(lambda d: d.current_url == page)


#: The server's own spawns retry FAIL_AT every 0.3 s (a transient fault that
#: never clears): each stays RUNNING until cancelled.
SLOW = (
    f"[fake]\nfaults = {FAIL_AT}:execute:fail-transient-100000\n"
    "[conductor]\nstep_retry_attempts = 200\nstep_retry_base_delay = 0.3\n"
    "step_retry_max_delay = 0.3\n"
)


@pytest.fixture(scope="package")
def slow_site(tmp_path_factory) -> Iterator[Site]:
    """A second server on its own SQLite file, for tests that add operations
    the shared site's exact listings must not see (running ones, repairs)."""
    tmp = tmp_path_factory.mktemp("web-live")
    with site_on(fresh_sqlite(tmp), tmp, SLOW) as s:
        yield s
