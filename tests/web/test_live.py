"""An operation still running: an operator cancels it through the API, and
its page refreshes itself (no reload) until it ends.

The server's spawns retry `wait_running` every 0.3 s (a transient fault that
never clears), so each stays RUNNING until cancelled; a cancel wakes the step
between retries and the spawn reverts."""
from __future__ import annotations

import time

import pytest

from tests.web.conftest import FAIL_AT, Site, fresh_sqlite, login, site_on

pytestmark = pytest.mark.integration
SLOW = (f"[fake]\nfaults = {FAIL_AT}:execute:fail-transient-100000\n"
        "[conductor]\nstep_retry_attempts = 200\nstep_retry_base_delay = 0.3\n"
        "step_retry_max_delay = 0.3\n")


@pytest.fixture(scope="module")
def slow_site(tmp_path_factory):
    """Its own SQLite file: the shared site's database stays intact."""
    tmp = tmp_path_factory.mktemp("web-live")
    with site_on(fresh_sqlite(tmp), tmp, SLOW) as s:
        yield s


def _until(site: Site, op_id: str, states: tuple[str, ...], deadline_s: float = 15) -> dict:
    deadline = time.monotonic() + deadline_s
    while True:
        status, op = site.call("GET", f"/api/v1/operations/{op_id}")
        if op["state"] in states:
            return op
        assert time.monotonic() < deadline, f"still {op['state']} after {deadline_s}s"
        time.sleep(0.05)  # polling interval


def _submit_spawn(site: Site, name: str) -> str:
    status, body = site.call("POST", "/api/v1/operations", token="operator", body={
        "kind": "spawn", "instance": name,
        "parameters": {"flavor": "m1.small", "image": "cirros"}})
    assert status == 202, body
    return body["id"]


def _retrying(site: Site, op_id: str) -> dict:
    """Wait until the spawn is retrying its faulty step."""
    deadline = time.monotonic() + 15
    while True:
        op = _until(site, op_id, ("RUNNING",))
        step = {st["step"]: st for st in op["steps"]}.get(FAIL_AT)
        if step is not None and step["attempts"] >= 2:
            return op
        assert time.monotonic() < deadline, op["steps"]
        time.sleep(0.05)


def test_operator_cancels_a_running_operation(slow_site: Site):
    op_id = _submit_spawn(slow_site, "vmc")
    _retrying(slow_site, op_id)
    status, body = slow_site.call("POST", f"/api/v1/operations/{op_id}/cancel", token="reader")
    assert status == 403
    status, body = slow_site.call("POST", f"/api/v1/operations/{op_id}/cancel", token="operator")
    assert status == 202 and body["id"] == op_id, body
    op = _until(slow_site, op_id, ("SUCCEEDED", "REVERTED", "FAILED"))
    assert op["state"] == "REVERTED", op
    assert op["cancel_requested_by"].startswith("web (operator)")
    assert {st["state"] for st in op["steps"]} == {"REVERTED"}


def test_page_refreshes_itself_while_running(browser, slow_site: Site):
    """The page polls the API: the retry count and then the end appear
    without a reload (a marker set in the page survives)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    op_id = _submit_spawn(slow_site, "vml")
    first = _retrying(slow_site, op_id)
    page = f"{slow_site.base}/operations/{op_id}"
    login(browser, slow_site, "operator", page)
    assert browser.find_element(By.ID, "live").get_attribute("data-active") == "true"
    browser.execute_script("window.notReloaded = true")

    def tries() -> int:
        text = browser.find_element(By.CSS_SELECTOR, f'tr[data-step="{FAIL_AT}"]').text
        return int(text.split("(")[1].split()[0]) if "tries)" in text else 1

    seen = {st["step"]: st for st in first["steps"]}[FAIL_AT]["attempts"]
    WebDriverWait(browser, 10).until(lambda d: tries() > seen)  # refreshed while running
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-step="{FAIL_AT}"]')
    assert "running" in row.get_attribute("class").split()
    status, _ = slow_site.call("POST", f"/api/v1/operations/{op_id}/cancel", token="operator")
    assert status == 202
    WebDriverWait(browser, 15).until(
        lambda d: d.find_element(By.ID, "op-state").text == "REVERTED")
    assert browser.execute_script("return window.notReloaded === true")
