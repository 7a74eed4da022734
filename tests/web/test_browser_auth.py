"""The browser's login cookie and CSRF rules, over plain HTTP (no browser)."""

from __future__ import annotations

import html
import http.client
import re
from urllib.parse import urlencode, urlsplit

import pytest

from tests.web.conftest import TOKENS, Site

pytestmark = pytest.mark.integration


def _request(
    site: Site,
    method: str,
    path: str,
    cookies: dict | None = None,
    form: dict | None = None,
    headers: dict | None = None,
):
    u = urlsplit(site.base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    hdrs = dict(headers or {})
    if cookies:
        hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    body = None
    if form is not None:
        body = urlencode(form)
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    return resp, data


def _login_csrf(site: Site) -> dict[str, str]:
    """The CSRF cookie the login form sets (and repeats in its hidden field)."""
    resp, body = _request(site, "GET", "/login")
    cookie = next(c for c in resp.headers.get_all("set-cookie") if c.startswith("cf_csrf="))
    value = cookie.split("=", 1)[1].split(";")[0]
    assert f'name="csrf" value="{value}"' in body
    return {"cf_csrf": value}


def _login(site: Site, role: str) -> dict[str, str]:
    pre = _login_csrf(site)
    resp, _ = _request(
        site, "POST", "/login", cookies=pre, form={"token": TOKENS[role], "next": "/operations", "csrf": pre["cf_csrf"]}
    )
    assert resp.status == 303 and resp.getheader("location") == "/operations"
    set_cookies = resp.headers.get_all("set-cookie")
    token_cookie = next(c for c in set_cookies if c.startswith("cf_token="))
    assert "httponly" in token_cookie.lower() and "samesite=strict" in token_cookie.lower()
    return {c.split("=", 1)[0]: c.split("=", 1)[1].split(";")[0] for c in set_cookies}


def test_login_sets_cookies_and_pages_need_them(sqlite_site: Site):
    resp, _ = _request(sqlite_site, "GET", "/operations")
    assert resp.status == 303 and resp.getheader("location").startswith("/login")
    pre = _login_csrf(sqlite_site)
    resp, body = _request(
        sqlite_site, "POST", "/login", cookies=pre, form={"token": "wrong", "next": "/", "csrf": pre["cf_csrf"]}
    )
    assert resp.status == 401 and "unknown token" in body
    assert not [c for c in resp.headers.get_all("set-cookie") if c.startswith("cf_token")]
    # Login CSRF: a post from another site has no matching cookie and field.
    for cookies, form in (({}, {"csrf": pre["cf_csrf"]}), (pre, {}), (pre, {"csrf": "forged"})):
        resp, body = _request(
            sqlite_site, "POST", "/login", cookies=cookies, form={"token": TOKENS["reader"], "next": "/"} | form
        )
        assert resp.status == 403 and "log in again" in body
        assert not [c for c in resp.headers.get_all("set-cookie") if c.startswith("cf_token")]
    cookies = _login(sqlite_site, "reader")
    resp, body = _request(sqlite_site, "GET", "/operations", cookies=cookies)
    assert resp.status == 200 and sqlite_site.failed_op[:8] in body
    resp, body = _request(sqlite_site, "GET", f"/api/v1/operations/{sqlite_site.failed_op}", cookies=cookies)
    assert resp.status == 200  # the page's live refresh reads the API with the cookie
    resp, _ = _request(
        sqlite_site,
        "POST",
        "/login",
        cookies=pre,
        form={"token": TOKENS["reader"], "next": "//evil.example/", "csrf": pre["cf_csrf"]},
    )
    assert resp.getheader("location") == "/operations"  # never an open redirect


def test_browser_posts_need_the_csrf_token(sqlite_site: Site):
    cookies = _login(sqlite_site, "operator")
    path = f"/operations/{sqlite_site.ok_op}/cancel"
    for form in ({}, {"csrf": "forged"}):
        resp, body = _request(sqlite_site, "POST", path, cookies=cookies, form=form)
        assert resp.status == 403 and "CSRF" in body
    resp, body = _request(sqlite_site, "POST", f"/api/v1/operations/{sqlite_site.ok_op}/cancel", cookies=cookies)
    assert resp.status == 403 and "CSRF" in body
    # With the token the request gets through to the cancel itself (it has ended: 409).
    resp, body = _request(sqlite_site, "POST", path, cookies=cookies, form={"csrf": cookies["cf_csrf"]})
    assert resp.status == 409 and "SUCCEEDED" in body and 'id="message"' in body  # a page
    resp, body = _request(
        sqlite_site,
        "POST",
        f"/api/v1/operations/{sqlite_site.ok_op}/cancel",
        cookies=cookies,
        headers={"X-CSRF-Token": cookies["cf_csrf"]},
    )
    assert resp.status == 409
    # A reader with the right CSRF token is still only a reader.
    reader = _login(sqlite_site, "reader")
    resp, body = _request(sqlite_site, "POST", path, cookies=reader, form={"csrf": reader["cf_csrf"]})
    assert resp.status == 403 and "operator" in body


def test_operations_page_filters_and_pages(sqlite_site: Site):
    cookies = _login(sqlite_site, "reader")
    resp, body = _request(sqlite_site, "GET", "/operations?kind=spawn&limit=1", cookies=cookies)
    assert resp.status == 200 and sqlite_site.ok_op[:8] in body and sqlite_site.failed_op[:8] not in body
    assert 'rel="next"' in body and 'rel="prev"' not in body
    older = html.unescape(re.search(r'href="([^"]*)" rel="next"', body).group(1))
    assert "kind=spawn" in older and "limit=1" in older  # the filters stay
    resp, body = _request(sqlite_site, "GET", older, cookies=cookies)
    assert sqlite_site.failed_op[:8] in body and sqlite_site.ok_op[:8] not in body
    assert 'rel="prev"' in body and 'rel="next"' not in body
    # Nothing is fetched from the internet: every asset is the server's own.
    assert "//" not in "".join(re.findall(r'(?:src|href)="([^"]*)"', body))
    for asset in ("/static/app.js", "/static/style.css"):
        resp, text = _request(sqlite_site, "GET", asset)
        assert resp.status == 200 and "http" not in text
    resp, body = _request(sqlite_site, "GET", "/operations?state=BOGUS", cookies=cookies)
    assert resp.status == 200 and "unknown state" in body  # the form stays, with the error
