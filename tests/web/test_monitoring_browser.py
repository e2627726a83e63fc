"""The Backups and Jobs pages in a real browser (Debian's Chromium, driven by Playwright)
against a real `isidorus serve`: the admin finds them from the navigation, sees the
store's snapshots and its growth chart, walks down a snapshot's folders and downloads a
file, then reads a night's steps; no page asks another host for anything or breaks the
Content-Security-Policy (no inline script or style: the chart is plain SVG)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.integration.conftest import Isidorus
from tests.integration.servers import free_port, stop, wait_for_port
from tests.integration.test_browser import Visit, browser  # noqa: F401  (fixture)
from tests.web.test_app import host  # noqa: F401  (fixture)
from tests.web.test_monitoring import ADMIN_PW, world  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(
    not os.path.exists("/usr/bin/chromium"), reason="Debian's chromium is not installed"
)


@contextlib.contextmanager
def serving(tmp_path, world) -> Iterator[str]:  # noqa: F811
    run = Isidorus(tmp_path / "serve-cache", tmp_path / "isidorus.toml")
    port = free_port()
    env = {
        name: os.environ[name]
        for name in (
            "ISIDORUS_BACKUP_STORE",
            "ISIDORUS_BACKUP_PASSPHRASE_FILE",
            "ISIDORUS_CACHE_DIR",
            "ISIDORUS_SSH_COMMAND",
        )
    }
    # no supervisord answers: the pages say "unknown" rather than wait or fail
    env["ISIDORUS_SUPERVISOR_CONFIG"] = str(tmp_path / "no-supervisord.conf")
    web = run.popen(
        "serve", "--data-dir", world.data_dir, "--listen", f"127.0.0.1:{port}", "--workers", "1",
        env=env,
    )  # fmt: skip
    try:
        wait_for_port(port, web, "isidorus serve")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop([web])
        run.reap()


def test_the_admin_takes_a_file_back_and_reads_a_night(browser, world, tmp_path):  # noqa: F811
    with serving(tmp_path, world) as base:
        admin = Visit(browser, base)
        try:
            admin.login("admin", ADMIN_PW)
            page = admin.page
            page.get_by_role("link", name="Admin", exact=True).click()
            page.locator("nav.sub").get_by_role("link", name="Backups").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Backups")
            chart = page.get_by_role("img", name="Its size over time")
            expect(chart).to_be_visible()
            assert chart.bounding_box()["height"] > 100  # drawn, not collapsed
            expect(page.get_by_text("cannot be reached")).to_be_visible()  # marc's copy
            page.screenshot(path=str(tmp_path / "backups.png"), full_page=True)
            admin.check()

            # the first snapshot, then down its folders to the file
            first = world.results[0].snapshot
            page.get_by_role("link", name=first.short_id).click()
            expect(page.get_by_role("heading", level=1)).to_have_text(f"Snapshot {first.short_id}")
            admin.check()
            for part in [p for p in str(world.src).split("/") if p] + ["srv"]:
                page.get_by_role("link", name=f"{part}/", exact=True).click()
            with page.expect_download() as waiting:
                page.get_by_role("link", name="photo album.bin").click()
            download = waiting.value
            page.screenshot(path=str(tmp_path / "folder.png"), full_page=True)
            assert download.suggested_filename == "photo album.bin"
            saved = tmp_path / "taken back.bin"
            download.save_as(saved)
            assert saved.read_bytes() == world.big.read_bytes()
            admin.check()

            page.locator("nav.sub").get_by_role("link", name="Jobs").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Jobs")
            admin.check()
            page.get_by_role("link", name=f"Run {world.night2}").click()
            expect(page.get_by_role("heading", level=1)).to_have_text(f"Run {world.night2}")
            expect(page.get_by_text("Name or service not known").first).to_be_visible()
            expect(page.locator("pre.logs")).to_contain_text("the end <of> the night")
            page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
            admin.check()
        finally:
            admin.close()
