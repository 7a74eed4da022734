"""The operations list in keyset pages (`cursor=`): a walk over every page,
older or newer, sees each operation once while new ones are recorded, pages
split ties of created_at by id, the error search pages too, a bad cursor is
one clear 400, and the list page's newest / newer / older / oldest links in
the browser.

The rows are written here directly, in a year of their own (2001: the shared
server's other tests filter on other times) and removed afterwards."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from persistence.history import NEWEST, OLDEST, Cursor, HistoryFilter
from persistence.models import Operation
from persistence.session import Database
from tests.web.conftest import Site, login
from tests.web.test_browser_auth import _login, _request
from web import cursor, pages, views

pytestmark = pytest.mark.integration
T0 = dt.datetime(2001, 3, 4, 5, 6, 7, 123456)
WINDOW = "since=2001-01-01&until=2001-12-31"


class Rows:
    """Operations written straight into the site's database, removed at the end."""

    def __init__(self, site: Site) -> None:
        self.db = Database(site.db_url)
        self.ids: list[str] = []

    def add(self, created: list[dt.datetime], error: str | None = None, parameters: dict | None = None) -> list[str]:
        ids = [str(uuid.uuid4()) for _ in created]
        with self.db.engine.begin() as c:
            c.execute(
                sa.insert(Operation.__table__),
                [
                    dict(
                        id=i,
                        kind="reboot",
                        parameters=parameters or {},
                        flow_version=1,
                        created_at=at,
                        state="FAILED" if error else "SUCCEEDED",
                        error=None if error is None else f"{error} #{n}",
                    )
                    for n, (i, at) in enumerate(zip(ids, created, strict=True))
                ],
            )
        self.ids += ids
        return ids

    def newest_first(self) -> list[str]:
        """Every row of ours, in the list's order: created_at then id, both descending."""
        with self.db.engine.connect() as c:
            return list(
                c.scalars(
                    sa.select(Operation.id)
                    .where(Operation.id.in_(self.ids))
                    .order_by(Operation.created_at.desc(), Operation.id.desc())
                )
            )

    def remove(self) -> None:
        with self.db.engine.begin() as c:
            c.execute(sa.delete(Operation).where(Operation.id.in_(self.ids)))
        self.db.dispose()


@pytest.fixture
def rows(site: Site) -> Iterator[Rows]:
    r = Rows(site)
    try:
        yield r
    finally:
        r.remove()


def _seconds(*offsets: float) -> list[dt.datetime]:
    return [T0 + dt.timedelta(seconds=s) for s in offsets]


def _page(site: Site, query: str) -> dict:
    status, page = site.call("GET", "/api/v1/operations?" + query)
    assert status == 200, page
    assert page["more"] is (page["next"] is not None)
    return page


def _ids(page: dict) -> list[str]:
    return [o["id"] for o in page["operations"]]


def test_walks_see_each_operation_once_while_new_ones_arrive(site: Site, rows: Rows):
    # 13 operations, five of them sharing one created_at and three another:
    # with 3 to a page, page ends fall inside those ties.
    rows.add(_seconds(0, 1, 1, 1, 1, 1, 2, 3, 3, 3, 4, 5, 6))
    before = rows.newest_first()
    walked, query, pages = [], f"{WINDOW}&limit=3", 0
    page = _page(site, query)
    assert page["prev"] is None  # the newest page
    while True:
        walked += _ids(page)
        pages += 1
        # Meanwhile two newer operations are recorded, one of them at the very
        # time of the newest row (an OFFSET page would now repeat rows).
        rows.add(_seconds(100 + pages, 6))
        if page["next"] is None:
            break
        page = _page(site, f"{query}&cursor={page['next']}")
        assert page["prev"] is not None
    assert walked == before and pages == 5

    # Back from the oldest page to the newest: everything, the new ones too, once.
    everything = rows.newest_first()
    page = _page(site, f"{query}&cursor={page['last']}")
    assert page["next"] is None and _ids(page) == everything[-3:]
    back: list[str] = []
    while True:
        back = _ids(page) + back
        if page["prev"] is None:
            break
        page = _page(site, f"{query}&cursor={page['prev']}")
    assert back == everything and len(set(back)) == len(everything) == 13 + 2 * pages


def test_error_search_pages_through_the_failed_operations(site: Site, rows: Rows):
    rows.add(_seconds(*range(0, 40, 2)))  # no error: never matched
    failed = rows.add(_seconds(*range(1, 40, 4)), error="Disk Full on host h9")  # 10 of them
    rows.add(_seconds(3, 5), error="timed out")
    query = f"{WINDOW}&error=disk%20FULL&limit=4"
    page, walked = _page(site, query), []
    while True:
        walked += _ids(page)
        if page["next"] is None:
            break
        page = _page(site, f"{query}&cursor={page['next']}")
    assert walked == failed[::-1]
    last = _page(site, f"{query}&cursor={page['last']}")
    assert _ids(last) == failed[3::-1] and last["next"] is None and last["prev"]
    # A substring, in any case; `%` and `_` are the characters themselves.
    assert _ids(_page(site, f"{WINDOW}&error=ON%20HOST%20h9%20%239")) == [failed[9]]
    assert _ids(_page(site, f"{WINDOW}&error=disk_full")) == []
    assert _ids(_page(site, f"{WINDOW}&error=%25")) == []


def test_a_host_or_error_search_reads_a_bounded_share_per_page(site: Site, rows: Rows, monkeypatch):
    """A search whose rows are rare does not read the whole history in one
    request: each page reads SCAN_ROWS operations at most (4 here, called in
    this process against the site's database) and is `partial` when that
    found fewer than the limit; paging on finds every match once."""
    monkeypatch.setattr(views, "SCAN_ROWS", 4)
    rows.add(_seconds(*range(0, 30)), parameters={"host": "h0"})
    rows.add(_seconds(*range(0, 30)), error="Disk Full", parameters={"host": "h0"})
    on_h1 = rows.add(_seconds(3, 4, 17), parameters={"target_host": "h1"})
    full = rows.add(_seconds(4, 22), error="No space left: disk full")
    since, until = dt.datetime(2001, 1, 1), dt.datetime(2001, 12, 31)

    def walk(f: HistoryFilter, start: Cursor, way: str) -> tuple[list[str], list[bool]]:
        found: list[str] = []
        partial: list[bool] = []
        at = start
        with rows.db.session() as s:
            for _ in range(100):  # a token that does not move on would loop
                page = views.history_page(s, f, 2, at)
                html = pages.operations_body({"limit": "2"}, page)
                assert ('id="partial"' in html) is page["partial"]
                assert ('rel="next"' in html) is (page["next"] is not None)
                shown = [o["id"] for o in page["operations"]]
                found = found + shown if way == "next" else shown + found
                partial.append(page["partial"])
                if page[way] is None:
                    return found, partial
                at = cursor.decode(page[way])
        pytest.fail(f"100 pages and still a {way} token: {at}")

    def newest_first(ids: list[str]) -> list[str]:
        return [i for i in rows.newest_first() if i in ids]

    host = HistoryFilter(host="h1", since=since, until=until)
    found, partial = walk(host, NEWEST, "next")
    assert found == newest_first(on_h1)  # 63 operations read 4 at a time
    assert len(partial) >= 63 // 4 and partial.count(True) >= len(partial) - 2
    assert walk(host, OLDEST, "prev")[0] == newest_first(on_h1)
    # The error search reads only the 32 operations with an error, 4 at a time.
    error = HistoryFilter(error="NO SPACE", since=since, until=until)
    found, partial = walk(error, NEWEST, "next")
    assert found == newest_first(full) and 32 // 4 <= len(partial) <= 32 // 4 + 1
    assert walk(error, OLDEST, "prev")[0] == newest_first(full)


def test_a_bad_cursor_is_one_clear_400(sqlite_site: Site):
    r = Rows(sqlite_site)
    try:
        r.add(_seconds(0, 1))
        good = _page(sqlite_site, f"{WINDOW}&limit=1")["next"]
    finally:
        r.remove()
    assert good
    for bad in (
        "nonsense",
        good[:-4],
        "W10",
        "eyJvIjoxfQ",
        "WyJvIiwibm90IGEgdGltZSIsIngiXQ",
        "WyJ4IiwiMjAwMS0wMS0wMVQwMDowMDowMCIsIngiXQ",
        "%C3%A9",
    ):
        status, body = sqlite_site.call("GET", f"/api/v1/operations?cursor={bad}")
        assert status == 400 and list(body) == ["error"], (bad, body)
        assert body["error"].startswith("bad cursor") and "next, prev or last" in body["error"]
    assert sqlite_site.call("GET", f"/api/v1/operations?cursor={good}")[0] == 200
    status, body = sqlite_site.call("GET", "/api/v1/operations?offset=50")
    assert status == 400 and "cursor" in body["error"]
    # The page shows the same message in place of the list, with the filters form.
    resp, html = _request(sqlite_site, "GET", "/operations?cursor=nonsense", cookies=_login(sqlite_site, "reader"))
    assert resp.status == 200 and "bad cursor" in html and 'class="filters"' in html


def test_browser_pages_newer_older_oldest_newest(browser, sqlite_site: Site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    r = Rows(sqlite_site)
    try:
        r.add(_seconds(*range(7)))
        everything = r.newest_first()
        start = f"{sqlite_site.base}/operations?{WINDOW}&limit=3"
        login(browser, sqlite_site, "reader", f"{sqlite_site.base}/operations")
        browser.get(start)

        def shown() -> list[str]:
            links = browser.find_elements(By.CSS_SELECTOR, "#operations tbody td:first-child a")
            return [a.get_attribute("href").rsplit("/", 1)[1] for a in links]

        def links() -> set[str]:
            return {a.get_attribute("id") for a in browser.find_elements(By.CSS_SELECTOR, "nav.pager a")}

        def follow(link: str) -> None:
            table = browser.find_element(By.ID, "operations")
            browser.find_element(By.ID, link).click()
            WebDriverWait(browser, 10).until(ec.staleness_of(table))

        assert shown() == everything[:3] and links() == {"older", "oldest"}
        follow("older")
        assert shown() == everything[3:6] and links() == {"newest", "newer", "older", "oldest"}
        assert "limit=3" in browser.current_url and "since=2001-01-01" in browser.current_url
        follow("older")
        assert shown() == everything[6:] and links() == {"newest", "newer"}
        follow("newer")
        assert shown() == everything[3:6]
        follow("oldest")
        assert shown() == everything[4:] and links() == {"newest", "newer"}
        follow("newer")
        assert shown() == everything[1:4]
        follow("newest")
        assert shown() == everything[:3] and "cursor" not in browser.current_url
    finally:
        r.remove()
