"""The operator and admin actions on one operation through a real server:
who may (401/403), when (409 with the reason), and what they do. Two spawns
whose revert failed (FAILED, needing repair) are made by the CLI with a fault
at `power_on`'s revert; the server itself runs with no fault, so its retry of
the revert succeeds."""

from __future__ import annotations

import time

import pytest

from tests.conftest import run_cli, write_conf
from tests.web.conftest import FAIL_AT, Site

pytestmark = pytest.mark.integration


def _failed_spawn(site: Site, name: str) -> str:
    conf = write_conf(
        site.conf.parent / "revert-fails.conf",
        site.conf.parent / "state",
        site.db_url,
        f"[fake]\nfaults = {FAIL_AT}:execute:fail,power_on:revert:fail\n",
    )
    res = run_cli(conf, "spawn", name, "--flavor", "m1.small", "--image", "cirros")
    op_id = res.stdout.split()[1]
    _, op = site.call("GET", f"/api/v1/operations/{op_id}")
    assert op["state"] == "FAILED", op
    return op_id


def _until_ended(site: Site, op_id: str, deadline_s: float = 15) -> dict:
    deadline = time.monotonic() + deadline_s
    while True:
        _, op = site.call("GET", f"/api/v1/operations/{op_id}")
        if op["state"] in ("SUCCEEDED", "REVERTED", "FAILED"):
            return op
        assert time.monotonic() < deadline, op["state"]
        time.sleep(0.05)  # polling interval


def test_repair_actions_need_admin_and_a_failed_operation(slow_site: Site):
    site = slow_site
    op_id = _failed_spawn(site, "vmf1")
    path = f"/api/v1/operations/{op_id}"
    assert site.call("POST", path + "/retry-revert", token=None)[0] == 401
    for role in ("reader", "operator"):
        status, body = site.call("POST", path + "/retry-revert", token=role)
        assert status == 403 and "admin" in body["error"]
    status, body = site.call("POST", path + "/no-such-action", token="admin")
    assert status == 404 and "retry-revert" in body["error"]
    status, body = site.call("POST", f"/api/v1/operations/{site.ok_op}/retry-revert", token="admin")
    assert status == 409 and list(body) == ["error"]  # it succeeded: nothing to revert
    status, body = site.call("POST", path + "/cancel", token="operator")
    assert status == 409  # it ended
    status, body = site.call("POST", path + "/retry-revert", token="admin")
    assert status == 202 and body["id"] == op_id, body
    op = _until_ended(site, op_id)
    assert op["state"] == "REVERTED", op
    assert {st["state"] for st in op["steps"]} == {"REVERTED"}


def test_mark_reverted_records_the_manual_cleanup(slow_site: Site):
    site = slow_site
    op_id = _failed_spawn(site, "vmf2")
    status, body = site.call("POST", f"/api/v1/operations/{op_id}/mark-reverted", token="admin", body={"note": 1})
    assert status == 400
    status, body = site.call(
        "POST", f"/api/v1/operations/{op_id}/mark-reverted", token="admin", body={"note": "cleaned by hand"}
    )
    assert status == 200 and body["state"] == "REVERTED", body
    assert any(lb["step"] == "power_on" for lb in body["left_behind"])
    status, body = site.call("POST", f"/api/v1/operations/{op_id}/mark-reverted", token="admin")
    assert status == 409  # once only


def test_resume_plan_is_refused_for_an_ended_operation(slow_site: Site):
    status, body = slow_site.call("POST", f"/api/v1/operations/{slow_site.ok_op}/resume-plan", token="operator")
    assert status == 409 and "nothing to resume" in body["error"]
    status, body = slow_site.call("POST", f"/api/v1/operations/{slow_site.ok_op}/resume-plan", token="reader")
    assert status == 403
