"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver):
log in with a token, open a failed spawn, see its failed step in the failure
colour. Without the browser the test skips locally and fails under CI=true."""

from __future__ import annotations

import pytest

from tests.web.conftest import FAIL_AT, TOKENS, Site

pytestmark = pytest.mark.integration
FAILED_RGB = "rgba(198, 40, 40, 1)"  # --failed in web/static/style.css (#c62828)


def test_login_then_failed_step_in_failure_colour(browser, sqlite_site: Site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 10)
    page = f"{sqlite_site.base}/operations/{sqlite_site.failed_op}"
    browser.get(page)
    wait.until(ec.presence_of_element_located((By.ID, "token")))  # not logged in: the form
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys(TOKENS["reader"])
    browser.find_element(By.ID, "login").click()
    wait.until(ec.presence_of_element_located((By.ID, "steps")))
    assert browser.current_url == page
    # The token cookie is HttpOnly: the page's scripts cannot read it.
    assert "cf_token" not in browser.execute_script("return document.cookie")

    def colour(step: str) -> str:
        cell = browser.find_element(By.CSS_SELECTOR, f'tr[data-step="{step}"] td.state')
        return cell.value_of_css_property("background-color")

    assert browser.find_element(By.ID, "op-state").text == "REVERTED"
    assert colour(FAIL_AT) == FAILED_RGB
    assert colour("power_on") != FAILED_RGB  # reverted, not failed
    bar = browser.find_element(By.CSS_SELECTOR, "#timeline rect.exec.failed")
    assert bar.value_of_css_property("fill") == "rgb(198, 40, 40)"
    # The flow graph: every planned step, the failed one red, the unrun one not coloured.
    nodes = {
        g.get_attribute("data-step"): g.get_attribute("class").split()[1]
        for g in browser.find_elements(By.CSS_SELECTOR, "#graph g.node")
    }
    assert nodes[FAIL_AT] == "failed" and nodes["mark_active"] == "pending"
    assert {c for s, c in nodes.items() if s not in (FAIL_AT, "mark_active")} == {"reverted"}
    node = browser.find_element(By.CSS_SELECTOR, f'#graph g.node[data-step="{FAIL_AT}"] rect')
    assert node.value_of_css_property("fill") == "rgb(198, 40, 40)"
    assert browser.find_elements(By.CSS_SELECTOR, "#graph g.group.parallel")
    # A reader gets no cancel button; the list page links to the operation.
    assert not browser.find_elements(By.ID, "cancel")
    browser.get(f"{sqlite_site.base}/operations?state=REVERTED")
    links = browser.find_elements(By.CSS_SELECTOR, "#operations tbody td:first-child a")
    assert [a.get_attribute("href") for a in links] == [page]
    # The instance's name leads to its page, with this operation in its history.
    browser.find_element(By.CSS_SELECTOR, "#operations tbody td:nth-child(3) a").click()
    wait.until(ec.presence_of_element_located((By.ID, "instance")))
    assert "vm1" in browser.find_element(By.TAG_NAME, "h1").text
    assert [
        a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#operations tbody td:first-child a")
    ] == [page]
