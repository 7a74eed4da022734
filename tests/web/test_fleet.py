"""Instances and hosts through a real server: an instance's page with its
history, the hosts page with each driver's inventory next to the database,
and reconcile (dry run: operator; apply: admin)."""

from __future__ import annotations

import pytest

from tests.web.conftest import Site
from tests.web.test_browser_auth import _login, _request

pytestmark = pytest.mark.integration


def test_instance_with_its_history(site: Site):
    status, d = site.call("GET", "/api/v1/instances/vm1")
    assert status == 200, d
    assert d["instance"]["name"] == "vm1" and d["instance"]["vm_state"] == "error"
    assert [o["id"] for o in d["operations"]] == [site.failed_op]
    status, by_uuid = site.call("GET", f"/api/v1/instances/{d['instance']['uuid']}")
    assert by_uuid["instance"] == d["instance"]
    assert site.call("GET", "/api/v1/instances/ghost")[0] == 404
    assert site.call("GET", "/api/v1/instances/vm1", token=None)[0] == 401


def test_inventory_next_to_the_database(site: Site):
    status, inv = site.call("GET", "/api/v1/inventory")
    assert status == 200, inv
    (h1,) = inv["hosts"]
    assert h1["host"]["name"] == "h1"
    vm2 = [i for i in h1["database"]["instances"] if i["name"] == "vm2"]
    assert vm2 and vm2[0]["uuid"] in h1["driver"]["guests"]  # the spawn that succeeded
    assert h1["only_driver"] == [] and h1["only_database"] == []


def test_reconcile_roles_and_dry_run(site: Site):
    assert site.call("POST", "/api/v1/reconcile", token="reader")[0] == 403
    assert site.call("POST", "/api/v1/reconcile", token="operator", body={"apply": True})[0] == 403
    status, body = site.call("POST", "/api/v1/reconcile", token="operator", body={"apply": "yes"})
    assert status == 400 and list(body) == ["error"]
    status, body = site.call("POST", "/api/v1/reconcile", token="operator", body={"host": "nohost"})
    assert status == 400 and "nohost" in body["error"]
    status, audit = site.call("POST", "/api/v1/reconcile", token="operator")
    assert status == 200 and audit["hosts"] == ["h1"] and "reconcile:" in audit["text"]


def test_instance_and_hosts_pages(sqlite_site: Site):
    cookies = _login(sqlite_site, "operator")
    resp, body = _request(sqlite_site, "GET", "/instances/vm1", cookies=cookies)
    assert resp.status == 200 and sqlite_site.failed_op[:8] in body and 'id="instance"' in body
    assert "Z</td>" in body  # times in UTC, marked
    resp, body = _request(sqlite_site, "GET", "/hosts", cookies=cookies)
    assert resp.status == 200 and 'id="host-h1"' in body and "agrees with the database" in body
    assert 'id="reconcile-dry-run"' in body and 'id="reconcile-apply"' not in body  # admin only
    resp, body = _request(sqlite_site, "GET", "/instances/nope", cookies=cookies)
    assert resp.status == 404
