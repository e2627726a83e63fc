"""The web in a real browser (Debian's Chromium, driven by Playwright) against a real
`isidorus serve`: log in, change a password, the second factor, the admin pages; no page
asks another host for anything, every field has a label, the layout fits a phone."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pyotp
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from isidorus.ops import accounts as ops
from isidorus.services import catalog, installed
from isidorus.services.lifecycle import Added
from isidorus.system.processes import systemd_is_pid1
from tests.integration.servers import free_port, stop, wait_for_port

CHROMIUM = "/usr/bin/chromium"
# No network of its own: no updates, sync, field trials or QUIC probes during the tests.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_PW = "the keeper's passphrase"
ALICE_PW = "a long passphrase of hers"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def make_host(run, home) -> None:
    run("init", "--data-dir", home, "--password-stdin", input=ADMIN_PW + "\n")
    run("user", "add", "alice", "--email", "alice@example.org", "--fullname", "Alice",
        "--password-stdin", "--data-dir", home, input=ALICE_PW + "\n")  # fmt: skip
    run("group", "add", "family", "--data-dir", home)


@contextlib.contextmanager
def serving(run, home, env: dict[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    web = run.popen(
        "serve", "--data-dir", home, "--listen", f"127.0.0.1:{port}", "--workers", "2", env=env
    )
    try:
        wait_for_port(port, web, "isidorus serve")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop([web])


@pytest.fixture
def server(run, tmp_path) -> Iterator[str]:
    make_host(run, tmp_path / "host")
    with serving(run, tmp_path / "host") as base:
        yield base


class Visit:
    """A browser page that records every request and console error it makes."""

    def __init__(self, browser: Browser, base: str, width: int = 1280) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": width, "height": 800})
        self.page: Page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", self.console)
        self.page.on("response", self.response)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def console(self, message: Any) -> None:
        # a page answered 401 or 403 is expected (see `response` for the rest)
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def response(self, response: Any) -> None:
        # a missing style, script or icon is an error
        if response.status >= 400 and response.request.resource_type != "document":
            self.errors.append(f"{response.status} {response.url}")

    def go(self, path: str) -> Page:
        self.page.goto(self.base + path)
        return self.page

    def login(self, name: str, password: str) -> None:
        page = self.go("/login")
        page.get_by_label("User name").fill(name)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()

    def check(self) -> None:
        """Nothing but this host was asked for; no console errors (CSP violations show
        there); every visible field of the page has a label."""
        own = urlsplit(self.base).netloc
        others = {
            u for u in self.requests if urlsplit(u).scheme != "data" and urlsplit(u).netloc != own
        }
        assert not others, f"requests to other hosts: {others}"
        assert not self.errors, self.errors
        unlabelled = self.page.evaluate(
            """[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
               .filter(e => e.labels.length === 0).map(e => e.name)"""
        )
        assert unlabelled == [], f"fields without a label on {self.page.url}: {unlabelled}"

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser, server) -> Iterator[Visit]:
    v = Visit(browser, server)
    yield v
    v.close()


def test_a_visitor_sees_the_terms_and_nothing_else_is_fetched(visit):
    page = visit.go("/")
    expect(page.get_by_role("heading", level=2, name="Terms")).to_be_visible()
    expect(page.get_by_text("best-effort basis")).to_have_count(2)  # the terms and the footer
    assert any(u.endswith("/static/style.css") for u in visit.requests)
    page.get_by_role("link", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/login"))
    visit.check()


def test_a_member_logs_in_and_changes_the_password(visit):
    visit.login("alice", "not her password")
    expect(visit.page.get_by_role("alert")).to_contain_text("wrong user name or password")
    visit.check()
    visit.login("alice", ALICE_PW)
    page = visit.page
    expect(page.get_by_role("heading", level=1)).to_have_text("Hello Alice")
    visit.check()
    page.get_by_label("Current password").fill(ALICE_PW)
    page.get_by_label("New password", exact=True).fill("her brand new passphrase")
    page.get_by_label("New password again").fill("her brand new passphrase")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status")).to_have_text("Your password was changed.")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("link", name="Log in")).to_be_visible()
    visit.login("alice", ALICE_PW)
    expect(visit.page.get_by_role("alert")).to_be_visible()
    visit.login("alice", "her brand new passphrase")
    expect(visit.page.get_by_role("heading", level=1)).to_have_text("Hello Alice")
    visit.check()


def test_a_member_turns_on_the_second_factor(visit):
    visit.login("alice", ALICE_PW)
    page = visit.page
    page.get_by_role("link", name="Turn it on").click()
    qr = page.get_by_role("img", name=re.compile("QR code"))
    expect(qr).to_be_visible()
    assert page.evaluate("document.querySelector('img').naturalWidth") > 100  # it drew
    secret = page.locator("code.secret-text").inner_text()
    page.get_by_label("Code from the app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("status")).to_contain_text("second factor is on")
    visit.check()
    page.get_by_role("button", name="Log out").click()
    visit.login("alice", ALICE_PW)
    expect(page.get_by_role("heading", level=1)).to_have_text("Second factor")
    page.get_by_label(re.compile("6-digit code")).fill(pyotp.TOTP(secret).at(time.time() + 30))
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Hello Alice")
    visit.check()


def test_the_admin_adds_a_user_and_opens_a_group_to_them(visit, browser, server):
    visit.login("admin", ADMIN_PW)
    page = visit.page
    page.get_by_role("link", name="Admin", exact=True).click()
    page.get_by_role("link", name="Users", exact=True).first.click()
    visit.check()
    page.get_by_label("User name").fill("carol")
    page.get_by_label("Full name").fill("Carol")
    page.get_by_label("E-mail").fill("carol@example.org")
    page.get_by_role("button", name="Add the user").click()
    password = page.locator(".secret code").inner_text()
    assert re.fullmatch(r"[a-z0-9]{5}(-[a-z0-9]{5}){3}", password)
    page.get_by_role("link", name="Back to carol").click()
    page.get_by_label("family").check()
    page.get_by_role("button", name="Save the groups").click()
    expect(page.get_by_role("status")).to_have_text("Groups saved.")
    expect(page.get_by_label("family")).to_be_checked()
    visit.check()
    carol = Visit(browser, server)
    try:
        carol.login("carol", password)
        expect(carol.page.get_by_role("heading", level=1)).to_have_text("Hello Carol")
        assert carol.go("/admin").content().count("for the host") == 1  # 403 page
        # disabled by the admin: carol's very next request is logged out
        page.get_by_role("button", name="Disable carol").click()
        expect(page.get_by_role("button", name="Enable carol")).to_be_visible()
        carol.go("/portal")
        expect(carol.page).to_have_url(re.compile(r"/login\?next=/portal"))
    finally:
        carol.close()
    page.get_by_label("Type carol").fill("carol")
    page.get_by_role("button", name="Remove carol").click()
    expect(page.get_by_role("status")).to_have_text("Removed.")
    expect(page.get_by_role("link", name="carol")).to_have_count(0)
    visit.check()


def test_keyboard_and_a_phone_screen(browser, server):
    phone = Visit(browser, server, width=360)
    try:
        page = phone.go("/login")
        # the keyboard alone logs in: tab to the first field (past the header's few
        # links), type, tab, type, press Enter
        for _ in range(6):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "name":
                break
        assert page.evaluate("document.activeElement.id") == "name"
        page.keyboard.type("alice")
        page.keyboard.press("Tab")
        page.keyboard.type(ALICE_PW)
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", level=1)).to_have_text("Hello Alice")
        for path in ("/", "/login", "/portal", "/portal/totp"):
            phone.go(path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 360, f"{path} scrolls sideways on a phone ({width}px)"
        phone.check()
    finally:
        phone.close()


def test_the_services_in_the_admin_area_and_the_portal(browser, run, tmp_path):
    """An installed service (recorded as an install leaves it; no process runs it): the
    admin's Services pages and a member's tile, each asking nothing of another host."""
    home = tmp_path / "host"
    make_host(run, home)
    run("group", "add-member", "family", "alice", "--data-dir", home)
    run("group", "add", "friends", "--data-dir", home)
    db = ops.open_state(str(home))
    manifest = catalog.get("radicale").manifest
    with db.write() as conn:
        installed.begin(conn, manifest, "radicale.example.org", "/")
        installed.finish(conn, manifest.id, Added())
        installed.set_allowed(conn, manifest.id, ("family",))
    db.close()
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "isidorus-radicale.log").write_text("started <on> port 5232\n")
    env = {
        # no supervisord answers: the pages say "unknown" rather than wait or fail
        "ISIDORUS_SUPERVISOR_CONFIG": str(tmp_path / "no-supervisord.conf"),
        "ISIDORUS_SERVICE_LOG_DIR": str(logs),
    }
    with serving(run, home, env) as base:
        admin = Visit(browser, base)
        try:
            admin.login("admin", ADMIN_PW)
            page = admin.page
            page.get_by_role("link", name="Admin", exact=True).click()
            page.locator("nav.sub").get_by_role("link", name="Services").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Services")
            expect(page.get_by_role("link", name="Install Whoogle")).to_be_visible()
            admin.check()
            page.get_by_role("link", name="Radicale", exact=True).click()
            expect(page.get_by_role("button", name="Deny family")).to_be_visible()
            expect(page.get_by_label("Allow a group")).to_be_visible()
            admin.check()
            page.get_by_role("link", name="Its last lines of output").click()
            if not systemd_is_pid1():  # else the journal has the lines
                expect(page.locator("pre")).to_have_text("started <on> port 5232")
            admin.check()
            for path in ("/admin/services/radicale/remove", "/admin/services/whoogle/install"):
                admin.go(path)
                admin.check()
        finally:
            admin.close()
        alice = Visit(browser, base)
        try:
            alice.login("alice", ALICE_PW)
            tile = alice.page.get_by_role("link", name=re.compile("^Radicale"))
            expect(tile).to_have_attribute("href", "https://radicale.example.org/")
            alice.go("/")
            expect(alice.page.get_by_text("Replaces: Google Calendar")).to_be_visible()
            alice.check()
        finally:
            alice.close()
