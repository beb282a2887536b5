"""Fixtures of the phone-core tests: a vendor whose keys sign images, and a scripted phone."""

from __future__ import annotations

import pytest
from phone_script import Script, Vendor


@pytest.fixture(scope="module")
def vendor() -> Vendor:
    """The Polycom signer every test of a module shares (keys are slow to make)."""
    return Vendor("Polycom")


@pytest.fixture
def script(vendor: Vendor) -> Script:
    """A fresh phone driven by hand through its sans-IO core."""
    return Script.new(vendor=vendor)
