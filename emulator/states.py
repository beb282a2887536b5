"""Everything that decides which event a phone accepts in which state lives here.

`TRANSITIONS` maps (state, event key) to the states the phone may be in afterwards. The
event key is the event's class, or for TimerFired the Timer that fired. A pair that is not
in the table is a protocol error; after every event the core checks that it landed in one
of the listed states, so the table is also the truth the diagram (`diagram()`) is drawn
from. How each event is handled is in emulator/core.py.

Reading guide: a phone is OFF until PowerOn, BOOTING until Timer.BOOT, then CHECKING. One
activity runs at a time (CHECKING, SIGNING_IN, DOWNLOADING, VERIFYING_*, FLASHING); when
it ends, the phone *settles* into the next thing owed, in this order: a deferred sign-in,
the idle wait of a staged image (AWAITING_REBOOT), a back-off (BACKING_OFF), a check that
fell due meanwhile (CHECKING), or IDLE. Calls, use of the phone and clock changes are
accepted whenever the phone is up.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from emulator.events import (
    BootFailed,
    CallEnded,
    CallStarted,
    CatalogVerified,
    ClockOffsetChanged,
    ConnectionFailed,
    DownloadFinished,
    DownloadInterrupted,
    Event,
    ImageVerified,
    PowerLost,
    PowerOn,
    ResolutionFailed,
    Resolved,
    ResponseReceived,
    SignIn,
    SignOut,
    Timer,
    TimerFired,
    UserActivity,
    VerificationFailed,
)


class PhoneState(enum.Enum):
    """What the phone is doing."""

    OFF = "off"
    BOOTING = "booting"
    IDLE = "idle"
    CHECKING = "checking for updates"
    SIGNING_IN = "signing in"
    BACKING_OFF = "waiting to retry"
    DOWNLOADING = "downloading"
    VERIFYING_CATALOG = "verifying the catalog"
    VERIFYING_IMAGE = "verifying the image"
    FLASHING = "installing"
    AWAITING_REBOOT = "waiting to restart"


EventKey = type[Event] | Timer
"""What the table is keyed on besides the state: an event class, or the Timer that fired."""


def event_key(event: Event) -> EventKey:
    """The table key of an event."""
    return event.timer if isinstance(event, TimerFired) else type(event)


def key_name(key: EventKey) -> str:
    """A readable name of a table key (``Resolved``, ``TimerFired(REBOOT)``)."""
    return f"TimerFired({key.name})" if isinstance(key, Timer) else key.__name__


S = PhoneState
POWERED = frozenset(S) - {S.OFF}
UP = POWERED - {S.BOOTING}
"""States in which the phone is running an image and can be used."""
BUSY = frozenset({S.CHECKING, S.DOWNLOADING, S.VERIFYING_CATALOG, S.VERIFYING_IMAGE, S.FLASHING})
"""States of an update pass: a sign-in waits until the pass ends."""
QUIET = frozenset({S.IDLE, S.BACKING_OFF, S.AWAITING_REBOOT})
"""States with nothing in flight: a sign-in starts at once."""
SETTLED = frozenset({S.IDLE, S.CHECKING, S.SIGNING_IN})
"""Where an activity that leaves nothing behind ends: idle, a check due, a deferred sign-in."""
AFTER_FAILURE = SETTLED | {S.BACKING_OFF}
"""Where a failed exchange ends: as SETTLED, or waiting to retry."""

_WALK_RESULTS = (Resolved, ResolutionFailed, ConnectionFailed, ResponseReceived)


Targets = PhoneState | frozenset[PhoneState]


def _table() -> dict[tuple[PhoneState, EventKey], frozenset[PhoneState]]:
    table: dict[tuple[PhoneState, EventKey], frozenset[PhoneState]] = {}

    def add(states: Targets, key: EventKey, *targets: Targets, same: bool = False) -> None:
        """Allow ``key`` in ``states``, leading to ``targets`` (and the same state if ``same``)."""
        allowed = frozenset().union(*(_as_set(t) for t in targets))
        for state in _as_set(states):
            table[state, key] = allowed | {state} if same else allowed

    # Power and boot.
    add(S.OFF, PowerOn, S.BOOTING, S.OFF)
    add(POWERED, PowerLost, S.OFF)
    add(frozenset(S), ClockOffsetChanged, same=True)
    add(S.BOOTING, Timer.BOOT, S.CHECKING, S.IDLE)
    add(S.BOOTING, BootFailed, S.BOOTING, S.OFF)

    # Use of the phone never changes what it is doing; it only moves the restart.
    for use in (CallStarted, CallEnded, UserActivity):
        add(UP, use, same=True)
    add(QUIET, SignIn, S.SIGNING_IN)
    add(BUSY, SignIn, same=True)
    # Signing out ends nothing in progress; a sign-in on the wire must end first.
    add(UP - {S.SIGNING_IN}, SignOut, same=True)

    # Checks: at power-on (above), on the periodic timer, after a back-off.
    add(S.IDLE, Timer.CHECK, S.CHECKING)
    add(S.BACKING_OFF, Timer.CHECK, S.CHECKING)
    add(S.BACKING_OFF, Timer.RETRY, S.CHECKING, S.DOWNLOADING)
    # A check falling due during another activity waits for it to end; during the idle
    # wait it waits for the restart, which checks anyway.
    add(BUSY | {S.SIGNING_IN, S.AWAITING_REBOOT}, Timer.CHECK, same=True)

    # Walking a route's addresses: the same four results drive checks, sign-ins, downloads.
    # A check's answer may start a download, or stage the backup image; a sign-in started
    # during the idle wait goes back to it.
    for key in _WALK_RESULTS:
        add(frozenset({S.CHECKING, S.DOWNLOADING}), key, AFTER_FAILURE, same=True)
        add(S.SIGNING_IN, key, AFTER_FAILURE, S.AWAITING_REBOOT, same=True)
    add(S.CHECKING, ResponseReceived, AFTER_FAILURE, S.DOWNLOADING, S.AWAITING_REBOOT, same=True)
    add(S.DOWNLOADING, DownloadInterrupted, AFTER_FAILURE, same=True)
    add(S.DOWNLOADING, DownloadFinished, S.VERIFYING_CATALOG, same=True)

    # Verification, install, restart.
    add(S.VERIFYING_CATALOG, CatalogVerified, S.VERIFYING_IMAGE, SETTLED)
    add(S.VERIFYING_CATALOG, VerificationFailed, SETTLED)
    add(S.VERIFYING_IMAGE, ImageVerified, S.FLASHING)
    add(S.VERIFYING_IMAGE, VerificationFailed, SETTLED)
    add(S.FLASHING, Timer.FLASH, S.AWAITING_REBOOT, S.SIGNING_IN)
    add(S.AWAITING_REBOOT, Timer.REBOOT, S.BOOTING)
    return table


def _as_set(targets: Targets) -> frozenset[PhoneState]:
    return targets if isinstance(targets, frozenset) else frozenset({targets})


TRANSITIONS: Mapping[tuple[PhoneState, EventKey], frozenset[PhoneState]] = MappingProxyType(
    _table()
)
"""(state, event key) → the states the phone may be in after handling the event."""


def allowed_events(state: PhoneState) -> list[str]:
    """The names of the events the table accepts in ``state``."""
    return sorted(key_name(key) for (s, key) in TRANSITIONS if s is state)


def diagram() -> str:
    """The transition table as a Mermaid state diagram (for the docs)."""
    lines = ["stateDiagram-v2", "    [*] --> OFF"]
    edges: dict[tuple[PhoneState, PhoneState], list[str]] = {}
    for (state, key), targets in TRANSITIONS.items():
        for target in targets:
            if target is not state or state is S.BOOTING:
                edges.setdefault((state, target), []).append(key_name(key))
    for (state, target), keys in sorted(edges.items(), key=lambda e: (e[0][0].name, e[0][1].name)):
        lines.append(f"    {state.name} --> {target.name}: {', '.join(sorted(keys))}")
    return "\n".join(lines) + "\n"
