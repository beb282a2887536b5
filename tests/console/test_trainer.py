"""What a trainer does at the console, in a real browser against a real `lab console`.

One console (with its own lab at 60x real time) and one browser for the module, in the
order a session goes: open the page, import and approve a cab, plug phones in and watch
them update, move a phone outside and see its check refused, run a scenario, step the
demo. Every wait is for what the page shows; screenshots go to each test's tmp_path.

``LAB_CONSOLE_SCREENSHOT=docs/console.png`` also saves the README's screenshot (phones
updating on the wall) there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from console_page import ConsoleProcess, Page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

NEW = "4.0.7577.4372"
FACTORY = "4.0.7577.4366"
UPDATING = {"downloading", "verifying_catalog", "verifying_image", "flashing", "awaiting_reboot"}


def card_of(page: Page, label: str) -> str:
    """A selector for the wall card of the phone labelled ``label`` (``CX600 #1``), by its
    MAC (the card is swapped as the phone changes; its id stays)."""
    mac = page.attribute(f"li.phone-card[data-label='{label}']", "data-mac")
    return f"[id='card-{mac}']"


def test_the_login_link_opens_the_network_diagram(page: Page) -> None:
    page.view("network")
    page.wait_text("#server-fe01", "production")
    diagram = page.text("#diagram")
    assert "pool01.contoso.test" in diagram
    assert "se01.contoso.test" in diagram
    assert "webext.contoso.test → pool01.contoso.test" in page.text("#node-edge")
    assert "Firewall" in diagram
    # The lab's clock runs at the console's scale and the page says so.
    assert "60× real time" in page.text("header.top")
    page.screenshot("network")


def test_import_and_approve_a_cab(page: Page, console: ConsoleProcess, tmp_path: Path) -> None:
    cab = tmp_path / "UCUpdates.cab"
    built = console.lab("cab", "build", "--model", "CX600", "--version", NEW, "-o", str(cab))
    assert built.returncode == 0, built.stderr

    page.view("admin")
    page.find("#import-cab").send_keys(str(cab))
    page.choose("#import-pool", "pool01.contoso.test")
    page.press("Import", "form[action='/actions/rules-import']")
    assert "imported UCUpdates.cab into pool01.contoso.test" in page.wait_message("imported")

    row = "tr[data-model='CX600']"
    page.wait_text(f"{row} td.version", NEW)
    assert "status-pending" in str(page.attribute(f"{row} td.version span", "class"))
    page.screenshot("pending")

    page.press("Approve", row)
    page.wait_message("approve: CX600 now approved 4.0.7577.4372")
    page.wait_for(
        lambda: (
            page.find_all(f"{row} .status-approved") and not page.find_all(f"{row} .status-pending")
        ),
        "the rule approved, nothing pending",
    )
    page.screenshot("approved")


def test_plugged_in_phones_update_on_the_wall(page: Page) -> None:
    # The builder's form: a cab for the CX3000, imported into pool01 and approved at once.
    page.view("admin")
    page.find("#build-model-CX600").click()  # ticked by default: untick it
    page.find("#build-model-CX3000").click()
    page.fill("#build-version", NEW)
    page.choose("#build-pool", "pool01.contoso.test")
    page.find("#build-approve").click()
    page.press("Build and import")
    page.wait_message("1 rule(s) approved")

    page.view("phones")
    page.fill("#add-count", "4")
    page.choose("#add-model", "CX3000")
    page.press("Add", "form[action='/actions/phones-add']")
    page.wait_message("4 CX3000 phones added inside")
    # The first one's own screens beside the wall, as it goes.
    page.activate(f"{card_of(page, 'CX3000 #1')} a.details")
    page.wait_text("#phone-detail-title", "CX3000 #1")

    def cx3000() -> list[dict[str, str]]:
        return [
            {
                "state": str(card.get_attribute("data-state")),
                "version": str(card.get_attribute("data-version")),
                "text": card.text,
            }
            for card in page.find_all("li.phone-card[data-label^='CX3000']")
        ]

    # Phones updating, seen on the wall: the README's screenshot is taken here.
    page.wait_for(lambda: any(c["state"] in UPDATING for c in cx3000()), "a CX3000 to be updating")
    shot = page.screenshot("phones-updating")
    readme = os.environ.get("LAB_CONSOLE_SCREENSHOT")
    if readme:
        shutil.copyfile(shot, readme)

    page.wait_for(
        lambda: (
            (cards := cx3000())
            and len(cards) == 4
            and all(c["state"] == "idle" and c["version"] == NEW for c in cards)
        ),
        "every CX3000 idle on the new version",
    )
    assert page.wait_for(lambda: all(f"backup\n{FACTORY}" in c["text"] for c in cx3000()), "")
    assert page.text("#wall-count") == "4"
    assert "4 idle" in page.text("#wall-aggregates")

    # The phone's own screens: System Information, and its log beside the audit lines.
    page.wait_text("#system-information", f"Current version: {NEW}")
    assert f"Backup version:  {FACTORY}" in page.text("#system-information")
    # Its log and the audit lines of its requests, interleaved on the one clock.
    page.wait_for(lambda: page.find_all("#phone-timeline td.audit"), "the phone's audit lines")
    lines = [row.text for row in page.find_all("#phone-timeline tbody tr")]
    assert any(" 200 /RequestHandler/ucdevice.upx" in line for line in lines)
    assert any("installed in slot B" in line for line in lines)
    page.screenshot("phone-detail")


def test_a_phone_moved_outside_has_its_check_refused(page: Page) -> None:
    page.view("phones")
    page.fill("#add-count", "1")
    page.choose("#add-model", "HP4120")
    page.find("#add-plug-in").click()  # ticked by default: add it unplugged
    page.press("Add", "form[action='/actions/phones-add']")
    page.wait_message("1 HP4120 phone added inside")
    card = card_of(page, "HP4120 #1")
    page.find("#add-plug-in").click()  # as it was, for whoever adds phones next

    page.press("Move outside", card)
    page.wait_message("is now outside the firewall")
    page.wait_for(lambda: page.attribute(card, "data-zone") == "outside", "the move")

    page.press("Plug in", card)
    page.wait_message("plugged in at")
    page.wait_text(f"{card} .lastlog", "denied the update check")
    assert "403" in str(page.attribute(f"{card} .lastlog", "title"))

    page.activate(f"{card} a.details")
    page.wait_for(
        lambda: " 403 " in page.text("#phone-timeline"),
        "the external site's 403 in the audit lines",
    )
    page.screenshot("refused-outside")

    # The diagram puts it outside the firewall.
    page.view("network")
    page.wait_text("#phones-outside", "HP4120 #1")


def test_a_scenario_runs_on_a_fresh_lab_and_reports(page: Page) -> None:
    page.view("scenarios")
    page.choose("#scenario-name", "update-pending")
    page.press("Run it")
    page.wait_message("running scenario update-pending")
    page.wait_text("#scenario-result", "as expected")
    assert page.text("#scenario-state") == "done"
    assert "approve the rule" in page.text("#scenario-fix")
    assert "Pending" in page.text("#scenario-cause")
    assert page.find_all("#scenario-timeline li")
    assert page.text("#scenario-observed")
    page.screenshot("scenario-report")


def test_the_demo_steps_through_its_chapters(page: Page) -> None:
    page.view("demo")
    page.press("Start the demo")
    page.wait_text("#demo-chapter-1-title", "Chapter 1")
    for number in range(2, 6):
        page.press(f"Next: chapter {number}", "#demo-controls")
        page.wait_text(f"#demo-chapter-{number}-title", f"Chapter {number}")
    page.wait_text("#demo-outcome", "Every phone ended as it should.")
    # The run is done once its lab has stopped and its directory is gone, a moment after
    # the outcome is told: the page shows that too, live.
    page.wait_text("#demo-state", "done")
    assert page.text("#demo-state") == "done"
    page.screenshot("demo-done")
