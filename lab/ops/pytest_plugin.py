"""Fixtures for network-behaviour tests: a running lab, phones on it, and the phones' clock.

This is the pytest plugin ``device_update_lab`` (a ``pytest11`` entry point): wherever this
package is installed with its ``test`` extra, pytest offers these fixtures with no conftest
(docs/network-tests.md is the guide):

- ``lab_pki_dir`` (session): one directory for the lab PKI; the first lab of the session
  makes the certificates there and every later lab reuses them.
- ``lab_config``: the configuration ``device_lab`` runs, the default lab on free ports
  with that PKI. A fixture of the same name in a conftest or test module overrides it.
- ``device_lab``: a running lab (lab.harness.RunningLab) with a fresh state directory.
- ``phones``: a lab.ops.harness.Phones factory on that lab; its phones stop at teardown.
- ``virtual_clock``: the phones' clock.

The async fixtures are ``pytest_asyncio.fixture``s, so they work in strict mode too, and
they run on the test's own event loop: lab and phones must share it (lab.harness).

Fake time: looptime turns fake time on for the test function only, not for its fixtures,
and at that moment the loop's time drops from the real clock to near zero. A lab and phones
started by a fixture on the real clock would then sit in another time frame than the test
(the phones' clock off by the machine's uptime, timers set at start-up far in the future).
So for a test on fake time ``device_lab`` turns fake time on before it starts the lab and
keeps it on until the lab has stopped, handing it to looptime for the test call itself:
setup (your own fixtures built on these included), test and teardown read one clock, and
the phones' clock reads exactly ``lab.ops.harness.T0`` when ``phones`` is set up.

Two guards, so that a mistake costs a line and not a run:

- Without the ``test`` extra (pytest-asyncio, looptime) the plugin stays loaded but off:
  pytest starts, its header says which package is missing, and a test that asks for
  ``device_lab``, ``phones`` or ``virtual_clock`` fails at once saying the same. pytest
  loads this module wherever the package is installed, so it must never fail to import.
- A test on ``phones`` with no looptime mark (and no --looptime/--no-looptime) fails at
  setup, telling to add the mark: unmarked, its phones would wait out every boot and every
  five-minute idle wait on the real clock until the test's timeout. A test that means the
  real clock says so with ``@pytest.mark.looptime(False)``. (``device_lab`` alone may run
  unmarked: phones in another process, on a clock of their own, use it so.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

try:
    import pytest_asyncio
    from looptime import LoopTimeEventLoop
except ImportError as exc:  # only without the test extra
    # Named as it is installed (pytest-asyncio), not as it is imported (pytest_asyncio).
    MISSING: str | None = (exc.name or str(exc)).replace("_", "-")
else:
    MISSING = None
"""The test-extra package that could not be imported, or None when the fixtures are on."""

# The lab and the emulator are imported when a fixture is first used, not here: pytest
# loads this plugin in every run wherever the package is installed, lab or no lab.
if TYPE_CHECKING:
    from emulator import Clock
    from lab.net.config import LabConfig
    from lab.ops.harness import Phones, RunningLab


@pytest.fixture(scope="session")
def lab_pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's lab PKI directory: certificates are made once, by the first lab."""
    return tmp_path_factory.mktemp("lab-pki")


@pytest.fixture
def lab_config(lab_pki_dir: Path) -> LabConfig:
    """The lab ``device_lab`` runs: the default lab on free ports (0) with the session's PKI.

    Override it with a fixture of the same name (which may request this one) to test another lab.
    """
    from lab.net.config import default_config

    return (
        default_config()
        .with_ports(dns=0, internal=0, external=0, edge=0, admin=0)
        .with_pki_dir(lab_pki_dir)
    )


def _off() -> str:
    """Why the lab fixtures are off, in one line."""
    return (
        f"device-update-lab: lab fixtures off, {MISSING} is not installed "
        "(install device-update-lab[test])"
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say in pytest's header that the lab fixtures are off, and why."""
    return None if MISSING is None else _off()


def _async_fixture(function: Any) -> Any:
    """pytest-asyncio's fixture; without it, a fixture of that name failing with ``_off()``."""
    if MISSING is None:
        return pytest_asyncio.fixture(function)

    def unavailable() -> NoReturn:
        pytest.fail(_off(), pytrace=False)

    unavailable.__doc__ = function.__doc__
    return pytest.fixture(unavailable, name=function.__name__)


@_async_fixture
async def device_lab(
    lab_config: LabConfig, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[RunningLab]:
    """A running lab of ``lab_config``: DNS, front ends, edge and admin API on loopback.

    Each test gets its own, with empty state in ``tmp_path/lab``; it stops at teardown.
    """
    from lab.ops.harness import running_lab

    with _fake_time_held(request):
        async with running_lab(lab_config, tmp_path / "lab") as running:
            yield running


@_async_fixture
async def phones(
    device_lab: RunningLab, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Phones]:
    """Makes emulator phones on ``device_lab``'s lease (``phones.phone(model, ...)``).

    They run on the loop's time (mark the test ``@pytest.mark.looptime``), keep their files
    in ``tmp_path/phones``, and are stopped at teardown.
    """
    from lab.ops.harness import phones_on

    # Only loops looptime patched have fake time (uvloop has not): only there is it a choice.
    if isinstance(asyncio.get_running_loop(), LoopTimeEventLoop) and _on_fake_time(request) is None:
        pytest.fail(
            f"{request.node.name} has no looptime mark, so its phones would run on the real "
            "clock and wait out every boot and idle wait until the test's timeout: mark it "
            "@pytest.mark.looptime (fake time), or @pytest.mark.looptime(False) to mean the "
            "real clock",
            pytrace=False,
        )
    async with phones_on(device_lab, tmp_path / "phones") as made:
        yield made


@pytest.fixture
def virtual_clock(phones: Phones) -> Clock:
    """The phones' clock: phone time, ``lab.ops.harness.T0`` when ``phones`` was set up."""
    return phones.clock


class _FakeTime:
    """The running loop's fake time, held on between a test's setup and its teardown."""

    def __init__(self, loop: LoopTimeEventLoop) -> None:
        self._loop = loop
        self._on: contextlib.AbstractContextManager[None] | None = None

    def resume(self) -> None:
        """Turn fake time on (again)."""
        if self._on is None:
            self._on = self._loop.looptime_enabled()
            self._on.__enter__()

    def pause(self) -> None:
        """Turn fake time off, as looptime expects to find the loop outside a test call."""
        if self._on is not None:
            on, self._on = self._on, None
            on.__exit__(None, None, None)


_HELD = pytest.StashKey[_FakeTime]()


@contextlib.contextmanager
def _fake_time_held(request: pytest.FixtureRequest) -> Iterator[None]:
    """Hold the loop's fake time on from here to the end of the block, if the test runs on it."""
    loop = asyncio.get_running_loop()
    # Only loops looptime patched can (uvloop cannot); one already on fake time stays so.
    if not (
        isinstance(loop, LoopTimeEventLoop) and not loop.looptime_on and _on_fake_time(request)
    ):
        yield
        return
    held = request.node.stash[_HELD] = _FakeTime(loop)
    held.resume()
    try:
        yield
    finally:
        held.pause()
        del request.node.stash[_HELD]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Hand a held fake time to looptime for the test call, and take it back for teardown."""
    held = item.stash.get(_HELD, None)
    if held is None:
        return (yield)
    # looptime refuses to turn on a loop already on fake time (and restores "off" after).
    held.pause()
    try:
        return (yield)
    finally:
        held.resume()


def _on_fake_time(request: pytest.FixtureRequest) -> bool | None:
    """Whether looptime runs the test on fake time: its marks and --looptime/--no-looptime.

    The same decision looptime's own plugin makes (which it does not export): the nearest
    mark with an argument wins, and a bare mark or --looptime turns it on. None when
    neither a mark nor an option says anything (looptime then runs it on the real clock).
    """
    flag = request.config.getoption("looptime", None)
    marks = list(request.node.iter_markers("looptime"))
    if not marks and flag is None:
        return None
    enabled = bool((marks or flag is True) and flag is not False)
    for mark in reversed(marks):
        if mark.args:
            enabled = bool(mark.args[0])
    return enabled
