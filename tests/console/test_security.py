"""The console's guard, tried against a real `lab console` with a browser and plain HTTP.

Everything needs a session (the login link works once); actions also need the session's
CSRF token and the console's own origin; a request addressed to another host is refused
(DNS rebinding); a foreign page's form post reaches nothing (SameSite=Strict, no token).
Every refusal is 403 with a sentence saying why.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import quote

import pytest
from console_page import ConsoleProcess, Page

pytestmark = pytest.mark.timeout(120)


def request(
    console: ConsoleProcess,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: str | None = None,
) -> tuple[int, dict[str, str], str]:
    """One plain HTTP request to the console: status, headers, body."""
    connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=10)
    try:
        # A Host given here replaces the one http.client would send.
        sent = {"Host": f"127.0.0.1:{console.port}", **(headers or {})}
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        text = "" if path == "/events" else response.read().decode()
        return response.status, dict(response.getheaders()), text
    finally:
        connection.close()


@pytest.fixture
def session(page: Page, console: ConsoleProcess) -> dict[str, str]:
    """The logged-in browser's session cookie and the page's CSRF token."""
    cookie = page.driver.get_cookie(f"lab_console_{console.port}")
    assert cookie is not None
    csrf = page.attribute('meta[name="csrf-token"]', "content")
    return {"cookie": f"{cookie['name']}={cookie['value']}", "csrf": str(csrf)}


def form(csrf: str | None = None, **fields: str) -> str:
    """An urlencoded form body."""
    if csrf is not None:
        fields["_csrf"] = csrf
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in fields.items())


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/panels/network"),
        ("GET", "/events"),
        ("POST", "/actions/firewall-flip"),
    ],
)
def test_without_a_session_everything_is_refused(
    console: ConsoleProcess, method: str, path: str
) -> None:
    status, _, text = request(console, method, path, body="" if method == "POST" else None)
    assert status == 403
    if path != "/events":
        assert "no console session" in text


def test_the_login_link_works_once(page: Page, console: ConsoleProcess) -> None:
    # The browser of this module has used it already.
    login = console.login_url.removeprefix(console.origin)
    status, headers, text = request(console, "GET", login)
    assert status == 403
    assert "login link is not valid" in text
    assert "Set-Cookie" not in headers


def test_the_session_cookie_is_http_only_and_strict(page: Page, console: ConsoleProcess) -> None:
    cookie = page.driver.get_cookie(f"lab_console_{console.port}")
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    # The page's own script cannot read it.
    assert "lab_console" not in page.driver.execute_script("return document.cookie")


def test_an_action_needs_the_token_and_the_console_origin(
    console: ConsoleProcess, session: dict[str, str]
) -> None:
    own = {**FORM, "Cookie": session["cookie"], "Accept": "application/json"}
    body = form(session["csrf"], action="reset")

    status, _, text = request(
        console,
        "POST",
        "/actions/firewall-reset",
        headers={**own, "Origin": console.origin},
        body=form(None),
    )
    assert (status, "no valid CSRF token" in text) == (403, True)

    status, _, text = request(
        console,
        "POST",
        "/actions/firewall-reset",
        body=body,
        headers={**own, "X-CSRF-Token": "forged", "Origin": console.origin},
    )
    assert (status, "no valid CSRF token" in text) == (403, True)

    for foreign in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"}, {}):
        status, _, text = request(
            console, "POST", "/actions/firewall-reset", headers={**own, **foreign}, body=body
        )
        assert status == 403, foreign
        assert "only from the console's own page" in text

    # The same request from the console's own page is done.
    status, _, text = request(
        console,
        "POST",
        "/actions/firewall-reset",
        headers={**own, "Origin": console.origin},
        body=body,
    )
    assert status == 200
    assert json.loads(text) == {"message": "the firewall is back to its segments"}


@pytest.mark.parametrize("host", ["evil.example:{port}", "localhost:{port}", "127.0.0.1"])
def test_a_request_for_another_host_is_refused(
    console: ConsoleProcess, session: dict[str, str], host: str
) -> None:
    status, _, text = request(
        console,
        "GET",
        "/",
        headers={"Host": host.format(port=console.port), "Cookie": session["cookie"]},
    )
    assert status == 403
    assert f"answers only at {console.origin}" in text


def test_pages_forbid_framing_and_foreign_scripts(
    console: ConsoleProcess, session: dict[str, str]
) -> None:
    status, headers, _ = request(console, "GET", "/", headers={"Cookie": session["cookie"]})
    assert status == 200
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cache-Control"] == "no-store"


def test_a_foreign_page_cannot_post_an_action(page: Page, console: ConsoleProcess) -> None:
    # A page of another origin posts a form to the console: the browser sends no session
    # cookie (SameSite=Strict), and there is no token anyway.
    attack = (
        "<form method='post' action='"
        + console.origin
        + "/actions/firewall-flip'><input name='on' value='1'></form>"
        "<script>document.forms[0].submit()</script>"
    )
    page.driver.get("data:text/html," + quote(attack))
    page.wait_for(lambda: "403 Forbidden" in page.text("body"), "the console's refusal")
    assert "no console session" in page.text("body")

    # Back on the console, the firewall is as it was.
    page.driver.get(console.origin + "/#admin")
    page.wait_for(lambda: page.live_state() == "live", "the page to go live")
    assert "flipped" not in page.text("[data-panel='firewall']")
    page.screenshot("after-foreign-post")


def test_a_browser_without_the_session_is_refused(page: Page, console: ConsoleProcess) -> None:
    page.driver.delete_all_cookies()
    page.driver.get(console.origin + "/")
    page.wait_for(lambda: "403 Forbidden" in page.text("body"), "the refusal")
    assert "open the login link the console printed" in page.text("body")
    page.screenshot("no-session")
