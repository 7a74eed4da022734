"""An operation still running: an operator cancels it through the API, and
its page refreshes itself (no reload) until it ends.

The server's spawns retry `wait_running` every 0.3 s (a transient fault that
never clears), so each stays RUNNING until cancelled; a cancel wakes the step
between retries and the spawn reverts."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import pytest

from tests.web.conftest import FAIL_AT, TOKENS, Site, login

pytestmark = pytest.mark.integration


def _until(site: Site, op_id: str, states: tuple[str, ...], deadline_s: float = 15) -> dict:
    deadline = time.monotonic() + deadline_s
    while True:
        status, op = site.call("GET", f"/api/v1/operations/{op_id}")
        if op["state"] in states:
            return op
        assert time.monotonic() < deadline, f"still {op['state']} after {deadline_s}s"
        time.sleep(0.05)  # polling interval


def _submit_spawn(site: Site, name: str) -> str:
    status, body = site.call(
        "POST",
        "/api/v1/operations",
        token="operator",
        body={"kind": "spawn", "instance": name, "parameters": {"flavor": "m1.small", "image": "cirros"}},
    )
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
    # What a resume would do (read only): its owner, this server, is alive.
    status, plan = slow_site.call("POST", f"/api/v1/operations/{op_id}/resume-plan", token="operator")
    assert status == 200 and plan["op_id"] == op_id and plan["owner_status"] == "alive", plan
    status, body = slow_site.call("POST", f"/api/v1/operations/{op_id}/cancel", token="operator")
    assert status == 202 and body["id"] == op_id, body
    op = _until(slow_site, op_id, ("SUCCEEDED", "REVERTED", "FAILED"))
    assert op["state"] == "REVERTED", op
    assert op["cancel_requested_by"].startswith("web (operator)")
    assert {st["state"] for st in op["steps"]} == {"REVERTED"}


def test_events_stream_changes_then_ends(slow_site: Site):
    """The live-update stream over plain HTTP: a first `update` with the
    rendered part and state, one per change while it runs, `end` once it ended."""
    op_id = _submit_spawn(slow_site, "vms")
    _retrying(slow_site, op_id)
    u = urlsplit(slow_site.base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", f"/api/v1/operations/{op_id}/events")
    assert conn.getresponse().status == 401
    conn.close()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", f"/api/v1/operations/{op_id}/events", headers={"Authorization": f"Bearer {TOKENS['reader']}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    events = _events(resp)
    name, first = next(events)
    assert name == "update" and first["state"] == "RUNNING" and 'id="graph"' in first["html"]
    name, second = next(events)  # the next retry of the faulty step is a change
    assert name == "update" and second["last_row"] > first["last_row"]
    assert slow_site.call("POST", f"/api/v1/operations/{op_id}/cancel", token="operator")[0] == 202
    states = []
    for name, data in events:
        states.append(data["state"])
        if name == "end":
            break
    assert states[-2:] == ["REVERTED", "REVERTED"], states  # the last update, then end
    conn.close()


def _events(resp):
    """(event name, decoded data) of a server-sent-events response, as they come."""
    name, data = None, []
    for raw in resp:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line and name:
            yield name, json.loads("".join(data))
            name, data = None, []


def test_cancel_button_then_reverted_without_reload(browser, slow_site: Site):
    """A spawn hanging in its retries: the page follows it live (server-sent
    events), an operator cancels it with the button (confirming), and the page
    shows REVERTED without a reload (a marker set in the page survives)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    op_id = _submit_spawn(slow_site, "vml")
    first = _retrying(slow_site, op_id)
    page = f"{slow_site.base}/operations/{op_id}"
    login(browser, slow_site, "operator", page)
    assert browser.find_element(By.ID, "live").get_attribute("data-active") == "true"
    browser.execute_script("window.notReloaded = true")

    # The live part is replaced at every update: read it in one script call.
    def tries() -> int:
        text = browser.execute_script(f"return document.querySelector('tr[data-step=\"{FAIL_AT}\"]').textContent")
        return int(text.split("(")[1].split()[0]) if "tries)" in text else 1

    def graph_classes() -> dict[str, str]:
        return browser.execute_script(
            "var o = {}; document.querySelectorAll('#graph g.node').forEach(function (g) {"
            " o[g.dataset.step] = g.getAttribute('class').split(' ')[1]; }); return o;"
        )

    seen = {st["step"]: st for st in first["steps"]}[FAIL_AT]["attempts"]
    WebDriverWait(browser, 10).until(lambda d: tries() > seen)  # updated while running
    assert graph_classes()[FAIL_AT] == "running"
    WebDriverWait(browser, 5, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: d.find_element(By.ID, "cancel").click() or True
    )
    alert = WebDriverWait(browser, 5).until(ec.alert_is_present())  # the confirmation
    assert "revert" in alert.text
    alert.accept()
    WebDriverWait(browser, 15, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: d.find_element(By.ID, "op-state").text == "REVERTED"
    )
    assert browser.execute_script("return window.notReloaded === true")
    assert not browser.find_elements(By.ID, "cancel")  # nothing left to cancel
    classes = set(graph_classes().values())
    assert "running" not in classes and "reverted" in classes
    op = _until(slow_site, op_id, ("REVERTED",))
    assert op["cancel_requested_by"].startswith("web (operator)")
