"""A thousand phones on the wall: the page shows counts over all of them and pages of cards."""

from __future__ import annotations

import pytest
from console_page import Page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_a_thousand_phones_are_counted_and_paged(page: Page) -> None:
    page.view("phones")
    page.fill("#add-count", "1000")
    page.choose("#add-model", "CX500")
    page.find("#add-plug-in").click()  # unplugged: the wall, not the phones, is the point
    page.press("Add", "form[action='/actions/phones-add']")
    page.wait_message("1000 CX500 phones added inside")
    page.wait_text("#wall-count", "1000")
    aggregates = page.text("#wall-aggregates")
    assert "1000 off" in aggregates
    assert "1000 CX500" in aggregates
    assert len(page.find_all("li.phone-card")) == 48
    assert "Phones 1 to 48 of 1000 · page 1 of 21" in page.text("nav.pager")

    # The keyboard pages through: the next page's cards, the pager keeping the focus.
    page.activate("nav.pager a[data-page='2']")
    page.wait_text("nav.pager", "Phones 49 to 96 of 1000 · page 2 of 21")
    assert page.attribute("li.phone-card", "data-label") == "CX500 #49"
    # The keyboard is still on the pager, whatever the wall redrew meanwhile.
    assert page.wait_for(
        lambda: page.driver.switch_to.active_element.get_attribute("data-page") in ("1", "3"),
        "the focus on the pager",
    )

    # The diagram counts them where they are, naming a few.
    page.view("network")
    page.wait_text("#phones-inside .count", "1000")
    assert "and 976 more" in page.text("#phones-inside")
    page.screenshot("a-thousand-phones")
