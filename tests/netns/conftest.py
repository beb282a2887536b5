"""The lab's own network (`--netns`): real namespaces, nftables, tcpdump and tshark.

These tests need what the mode needs (iproute2, nftables, util-linux) and what reads its
captures (tcpdump, tshark), all installed by .ci/run. A machine that refuses network or
user namespaces skips them with the lab's own one-line reason; anywhere else, and always
in CI, a missing piece fails them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from labprocess import LabProcess, start_lab, stop_lab

from lab.errors import NetnsUnavailable
from lab.net.netns import TOOLS, check_available


def _require_netns() -> None:
    missing = [tool for tool in (*TOOLS, "tcpdump", "tshark") if shutil.which(tool) is None]
    if missing:
        message = f"the network mode's tests need {', '.join(missing)} (see .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        check_available()
    except NetnsUnavailable as exc:
        # The one case these tests may skip, in CI too: the machine refuses namespaces.
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def netns_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabProcess]:
    """One `lab up --netns --scale 600` for a module's tests, which leave its firewall as
    they found it."""
    _require_netns()
    up = start_lab(tmp_path_factory.mktemp("netns") / "lab", up_args=("--netns", "--scale", "600"))
    try:
        yield up
    finally:
        stop_lab(up)


@pytest.fixture
def require_netns() -> None:
    """Skip (or fail in CI) as the module's lab would."""
    _require_netns()


@pytest.fixture(scope="module")
def published(netns_lab: LabProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CX600 version built, imported into pool01 and approved, once; the version."""
    from lab.ops.harness import NEW

    netns_lab.publish(NEW)
    return NEW
