"""Every text from the database is escaped on the pages: an instance name
and an error text holding `<script>` show as text and never run, over plain
HTTP and in the browser. Spawn refuses such a name, so the rows are written
here directly (as an older version or another writer could have), and
removed afterwards: the shared server's other tests do not see them."""

from __future__ import annotations

import uuid

import pytest

from persistence.models import Instance, Operation
from persistence.session import Database
from tests.web.conftest import Site, login
from tests.web.test_browser_auth import _login, _request

pytestmark = pytest.mark.integration
NAME = "<script>window.pwned=1</script>"
ERROR = "boom <script>window.pwned=2</script> & <b>bold</b>"


@pytest.fixture
def hostile(sqlite_site: Site):
    db = Database(sqlite_site.db_url)
    inst_uuid, op_id = str(uuid.uuid4()), str(uuid.uuid4())
    with db.session() as s:
        s.add(
            Instance(
                uuid=inst_uuid, name=NAME, flavor="m1.small", image="cirros", vm_state="error", vifs=[], volumes=[]
            )
        )
        s.add(
            Operation(
                id=op_id,
                kind="reboot",
                instance_uuid=inst_uuid,
                parameters={},
                state="REVERTED",
                flow_version=1,
                error=ERROR,
            )
        )
    try:
        yield inst_uuid, op_id
    finally:
        with db.session() as s:
            s.query(Operation).filter_by(id=op_id).delete()
            s.query(Instance).filter_by(uuid=inst_uuid).delete()
        db.dispose()


def test_pages_escape_names_and_errors(sqlite_site: Site, hostile):
    inst_uuid, op_id = hostile
    cookies = _login(sqlite_site, "reader")
    for path in ("/operations?error=boom", f"/operations/{op_id}", f"/instances/{inst_uuid}"):
        resp, body = _request(sqlite_site, "GET", path, cookies=cookies)
        assert resp.status == 200, (path, body)
        assert "<script>window" not in body and "<b>bold" not in body, path
        assert "&lt;script&gt;window.pwned=" in body, path


def test_browser_shows_them_as_text(browser, sqlite_site: Site, hostile):
    from selenium.webdriver.common.by import By

    inst_uuid, op_id = hostile
    page = f"{sqlite_site.base}/operations/{op_id}"
    login(browser, sqlite_site, "reader", page)
    assert NAME in browser.find_element(By.TAG_NAME, "h1").text
    assert "<script>window.pwned=2</script>" in browser.find_element(By.ID, "live").text
    browser.get(f"{sqlite_site.base}/operations?error=boom")
    assert NAME in browser.find_element(By.ID, "operations").text
    assert browser.execute_script("return window.pwned === undefined")
