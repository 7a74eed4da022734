"""The REST API of a real `computeflow serve`, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from persistence.session import Database

from tests.web.conftest import FAIL_AT, Site

pytestmark = pytest.mark.integration


def _counts(site: Site) -> dict[str, int]:
    """Rows an accepted request would add (nothing may change on a refusal)."""
    db = Database(site.db_url)
    try:
        with db.engine.connect() as c:
            return {
                t: c.scalar(sa.text(f"SELECT COUNT(*) FROM {t}"))
                for t in ("operations", "instances", "secrets", "flow_log")
            } | {"cancels": c.scalar(sa.text("SELECT COUNT(*) FROM operations WHERE cancel_requested_by IS NOT NULL"))}
    finally:
        db.dispose()


def test_no_or_unknown_token_is_401(site: Site):
    for token in (None, "not-a-token"):
        for path in ("/api/v1/operations", f"/api/v1/operations/{site.ok_op}", "/api/v1/hosts", "/api/v1/instances"):
            status, body = site.call("GET", path, token=token)
            assert (status, sorted(body)) == (401, ["error"]), path
    assert site.call("GET", "/api/v1/operations", token="reader")[0] == 200


def test_reader_cannot_cancel_or_submit(site: Site):
    before = _counts(site)
    status, body = site.call("POST", f"/api/v1/operations/{site.ok_op}/cancel", token="reader")
    assert status == 403 and "operator" in body["error"]
    status, body = site.call("POST", "/api/v1/operations", token="reader", body={"kind": "reboot", "instance": "vm2"})
    assert status == 403
    assert _counts(site) == before
    # An operator may ask; an ended operation has nothing to cancel: one clear 409.
    status, body = site.call("POST", f"/api/v1/operations/{site.ok_op}/cancel", token="operator")
    assert status == 409 and "SUCCEEDED" in body["error"]


def test_list_filters(site: Site):
    def ids(query: str) -> list[str]:
        status, body = site.call("GET", "/api/v1/operations" + query)
        assert status == 200, body
        return [o["id"] for o in body["operations"]]

    assert ids("?kind=spawn") == [site.ok_op, site.failed_op]  # newest first
    assert ids("?state=REVERTED") == [site.failed_op]
    assert ids("?state=SUCCEEDED&kind=spawn") == [site.ok_op]
    assert ids("?instance=vm1") == [site.failed_op]
    assert ids("?host=h1&kind=spawn") == [site.ok_op, site.failed_op]
    assert ids("?error=INJECTED%20failure") == [site.failed_op]
    assert ids("?since=2999-01-01") == []
    assert ids("?until=2000-01-01T00:00:00Z") == []
    status, page = site.call("GET", "/api/v1/operations?kind=spawn&limit=1")
    assert [o["id"] for o in page["operations"]] == [site.ok_op] and page["more"] is True
    assert page["prev"] is None and page["next"]
    status, page = site.call("GET", f"/api/v1/operations?kind=spawn&limit=1&cursor={page['next']}")
    assert [o["id"] for o in page["operations"]] == [site.failed_op] and page["more"] is False
    assert page["next"] is None and page["prev"]
    status, page = site.call("GET", f"/api/v1/operations?kind=spawn&limit=1&cursor={page['last']}")
    assert [o["id"] for o in page["operations"]] == [site.failed_op]  # the oldest page
    status, body = site.call("GET", "/api/v1/instances")
    assert {i["name"]: i["vm_state"] for i in body["instances"]} == {"vm1": "error", "vm2": "active"}
    status, body = site.call("GET", "/api/v1/hosts")
    assert [h["name"] for h in body["hosts"]] == ["h1"]


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        ("GET", "/api/v1/operations?kind=nope", None, 400),
        ("GET", "/api/v1/operations?state=DONE", None, 400),
        ("GET", "/api/v1/operations?limit=0", None, 400),
        ("GET", "/api/v1/operations?offset=50", None, 400),
        ("GET", "/api/v1/operations?cursor=not-a-cursor", None, 400),
        ("GET", "/api/v1/operations?since=yesterday", None, 400),
        ("GET", "/api/v1/operations?colour=red", None, 400),
        ("GET", "/api/v1/operations?host=nohost", None, 400),
        ("GET", "/api/v1/operations/ffffffff-0000", None, 404),
        ("POST", "/api/v1/operations/ffffffff-0000/cancel", None, 404),
        ("POST", "/api/v1/operations", b"{not json", 400),
        ("POST", "/api/v1/operations", [1, 2], 400),
        ("POST", "/api/v1/operations", {"kind": "nope", "instance": "vm2"}, 400),
        ("POST", "/api/v1/operations", {"kind": "reboot", "instance": "vm2", "parameters": {"x": 1}}, 400),
        ("POST", "/api/v1/operations", {"kind": "reboot", "instance": "ghost"}, 404),
        ("POST", "/api/v1/operations", {"kind": "unpause", "instance": "vm2"}, 409),
        (
            "POST",
            "/api/v1/operations",
            {"kind": "spawn", "instance": "vm2", "parameters": {"flavor": "m1.small", "image": "cirros"}},
            400,
        ),
        (
            "POST",
            "/api/v1/operations",
            {
                "kind": "spawn",
                "instance": "vm9",
                "parameters": {"flavor": "m1.nope", "image": "cirros", "admin_password": "pw-not-kept"},
            },
            400,
        ),
    ],
)
def test_bad_input_is_one_json_error_and_writes_nothing(site: Site, method, path, body, status):
    before = _counts(site)
    raw = body if isinstance(body, bytes) else None
    got, answer = site.call(method, path, token="operator", body=None if raw else body, raw=raw)
    assert (got, list(answer)) == (status, ["error"]), answer
    assert answer["error"] and "\n" not in answer["error"]
    assert _counts(site) == before


def test_failed_spawn_shows_its_steps(site: Site):
    status, op = site.call("GET", f"/api/v1/operations/{site.failed_op[:8]}")
    assert status == 200 and op["id"] == site.failed_op
    assert (op["kind"], op["state"], op["instance_name"]) == ("spawn", "REVERTED", "vm1")
    steps = {st["step"]: st for st in op["steps"]}
    failed = steps[FAIL_AT]
    assert failed["class"] == "failed" and "injected failure" in failed["error"]
    assert failed["attempts"] == 1 and failed["execute_s"] is not None
    assert [s for s, st in steps.items() if st["class"] == "failed"] == [FAIL_AT]
    # What ran before it was undone: each has an execute and a revert span.
    for name in ("take_hold", "claim_resources", "define_guest", "power_on"):
        assert steps[name]["state"] == "REVERTED" and steps[name]["class"] == "reverted"
        assert steps[name]["execute_s"] > 0 and steps[name]["revert_s"] > 0
        assert steps[name]["revert_attempts"] == 1
    assert any(t["step"] == FAIL_AT and t["state"] == "FAILURE" for t in op["transitions"])
    assert set(op["live"]) == {"situation", "owner_status", "notes"}
    # The planned graph: the catalogue's steps, the disks and ports in one parallel block.
    assert op["plan_complete"] is True
    parallel = op["plan"]["root"]["children"][2]
    assert parallel["parallel"] is True and len(parallel["children"]) >= 2
    status, ok = site.call("GET", f"/api/v1/operations/{site.ok_op}")
    assert {st["class"] for st in ok["steps"]} == {"ok"}


def test_operator_submits_and_secrets_stay_out_of_logs(site: Site):
    secret = "pw-Zebra-4711"
    status, body = site.call(
        "POST",
        "/api/v1/operations",
        token="operator",
        body={"kind": "set_admin_password", "instance": "vm2", "parameters": {"password": secret}},
    )
    assert status == 202, body
    deadline = time.monotonic() + 20
    while True:
        status, op = site.call("GET", body["href"].removeprefix(site.base))
        if op["state"] in ("SUCCEEDED", "REVERTED", "FAILED") or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling interval
    assert op["state"] == "SUCCEEDED", op
    assert op["parameters"] == {"password": "(secret)"}
    status, listed = site.call("GET", "/api/v1/operations?kind=set_admin_password")
    assert secret not in str(listed) and secret not in str(op)
    assert secret not in site.log.read_text()
    state_log = site.conf.parent / "state" / "computeflow.log"
    assert not state_log.exists() or secret not in state_log.read_text()


def test_openapi_describes_the_api(site: Site):
    status, doc = site.call("GET", "/api/v1/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {
        "/operations",
        "/operations/{op_id}",
        "/operations/{op_id}/cancel",
        "/instances",
        "/hosts",
        "/operations/{op_id}/events",
        "/operations/{op_id}/retry-revert",
        "/operations/{op_id}/mark-reverted",
        "/operations/{op_id}/resume-plan",
        "/instances/{name}",
        "/inventory",
        "/reconcile",
    } <= set(doc["paths"])


def _instance_kinds() -> list[str]:
    from flows import catalog

    return [k.name for k in catalog.instance_operations()]


@pytest.mark.parametrize("kind", _instance_kinds())
def test_every_catalogue_operation_is_validated_before_anything_is_written(sqlite_site: Site, kind: str):
    """Each kind reaches its own parameter check through the API: an unknown
    parameter is one 400 naming the kind, and nothing is written."""
    before = _counts(sqlite_site)
    status, body = sqlite_site.call(
        "POST",
        "/api/v1/operations",
        token="operator",
        body={"kind": kind, "instance": "vm2", "parameters": {"bogus": 1}},
    )
    assert (status, list(body)) == (400, ["error"]) and kind in body["error"], body
    assert _counts(sqlite_site) == before


def test_secrets_never_in_a_url(sqlite_site: Site):
    before = _counts(sqlite_site)
    status, body = sqlite_site.call(
        "POST",
        "/api/v1/operations?password=pw-in-url-1",
        token="operator",
        body={"kind": "set_admin_password", "instance": "vm2", "parameters": {"password": "x"}},
    )
    assert status == 400 and "body" in body["error"] and "pw-in-url-1" not in body["error"]
    status, body = sqlite_site.call(
        "POST", "/api/v1/operations", token="operator", body={"kind": "reconcile", "instance": "vm2"}
    )
    assert status == 400 and list(body) == ["error"]
    assert _counts(sqlite_site) == before
    assert "pw-in-url-1" not in sqlite_site.log.read_text()
