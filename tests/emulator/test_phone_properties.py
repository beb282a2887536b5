"""Random event sequences: the images are never corrupted, and refused events change nothing."""

from __future__ import annotations

import random
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phone_script import (
    ALICE,
    EDGE,
    FACTORY,
    FRONT_ENDS,
    LEASE,
    NEW,
    NO_UPDATE,
    T0,
    Vendor,
    firmware,
    offer_xml,
    provisioning_xml,
)

from emulator.core import Phone
from emulator.errors import ProtocolError
from emulator.events import (
    Action,
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
    Purpose,
    ResolutionFailed,
    Resolve,
    Resolved,
    ResponseReceived,
    SendRequest,
    SignIn,
    StartDownload,
    Timer,
    TimerFired,
    UserActivity,
    VerificationFailed,
    VerifyCatalog,
    VerifyImage,
)
from emulator.firmware import CatalogEntry
from emulator.models import get_model
from emulator.settings import PhoneSettings
from emulator.slots import SlotStatus
from emulator.states import UP, PhoneState

S = PhoneState
VENDOR = Vendor("Polycom")
OTHER = "4.0.7577.4400"
OFFERS = {v: offer_xml(firmware(VENDOR, v)) for v in (NEW, FACTORY, OTHER)}
IMAGE_ENTRY = CatalogEntry("CPE.nbt", 4096, "0" * 64)

EventMaker = Callable[[float], Event]
IO_ACTIONS = (Resolve, SendRequest, StartDownload, VerifyCatalog, VerifyImage)


def candidates(phone: Phone, pending: Action | None) -> tuple[list[EventMaker], ...]:
    """Events the world could deliver now: progress, use of the phone, faults."""
    state = phone.state
    progress: list[EventMaker] = []
    use: list[EventMaker] = [lambda t: ClockOffsetChanged(t, -86_400.0)]
    faults: list[EventMaker] = []
    if state is S.OFF:
        return [lambda t: PowerOn(t, LEASE)], use, faults
    faults.append(lambda t: PowerLost(t))
    if state is S.BOOTING:
        faults.append(lambda t: BootFailed(t, "crashed"))
    if state in UP:
        use += [lambda t: CallStarted(t), lambda t: UserActivity(t), lambda t: SignIn(t, ALICE)]
        if phone.calls_in_progress:
            use += [lambda t: CallEnded(t)] * 3
    if isinstance(pending, Resolve):
        host = pending.host
        progress += [
            lambda t: Resolved(t, host, FRONT_ENDS),
            lambda t: Resolved(t, host, FRONT_ENDS),
            lambda t: Resolved(t, host, EDGE),
            lambda t: Resolved(t, host, ()),
            lambda t: ResolutionFailed(t, host, "NXDOMAIN"),
        ]
    elif isinstance(pending, SendRequest) and pending.purpose is Purpose.CHECK:
        offers = [lambda t, body=body: ResponseReceived(t, 200, body) for body in OFFERS.values()]
        progress += offers * 2
        progress += [
            lambda t: ResponseReceived(t, 200, NO_UPDATE),
            lambda t: ResponseReceived(t, 200, b"<junk"),
            lambda t: ResponseReceived(t, 403, diagnostics='1;reason="no"'),
            lambda t: ResponseReceived(t, 503, retry_after=120),
            lambda t: ResponseReceived(t, 500),
            lambda t: ConnectionFailed(t, "refused"),
        ]
    elif isinstance(pending, SendRequest):
        progress += [
            lambda t: ResponseReceived(t, 200, provisioning_xml()),
            lambda t: ResponseReceived(t, 200, provisioning_xml(enabled=False)),
            lambda t: ResponseReceived(t, 401),
            lambda t: ConnectionFailed(t, "refused"),
        ]
    elif isinstance(pending, StartDownload):
        progress += [
            lambda t: DownloadFinished(t, 4096, '"e"'),
            lambda t: DownloadFinished(t, 4096, '"e"'),
            lambda t: DownloadFinished(t, 4096, '"e"'),
            lambda t: DownloadInterrupted(t, 100, '"e"', "reset"),
            lambda t: ResponseReceived(t, 404),
            lambda t: ResponseReceived(t, 503),
            lambda t: ConnectionFailed(t, "reset"),
        ]
    elif isinstance(pending, VerifyCatalog):
        progress += [
            lambda t: CatalogVerified(t, (IMAGE_ENTRY,)),
            lambda t: CatalogVerified(t, (IMAGE_ENTRY,)),
            lambda t: CatalogVerified(t, ()),
            lambda t: VerificationFailed(t, "bad signature"),
        ]
    elif isinstance(pending, VerifyImage):
        progress += [lambda t: ImageVerified(t)] * 3 + [
            lambda t: VerificationFailed(t, "hash mismatch")
        ]
    progress += [_fire(timer, at) for timer, at in phone.timers.items()]
    return progress, use, faults


def _fire(timer: Timer, at: float | None = None) -> EventMaker:
    """A timer firing: at its time when given, else whenever (possibly too early)."""
    return lambda t: TimerFired(t if at is None else max(t, at), timer)


# Events thrown in regardless of state: most of the time the table refuses them.
STRAYS: list[EventMaker] = [
    lambda t: PowerOn(t, LEASE),
    lambda t: ImageVerified(t),
    lambda t: CatalogVerified(t, (IMAGE_ENTRY,)),
    lambda t: DownloadFinished(t, 1, None),
    lambda t: Resolved(t, "elsewhere.test", FRONT_ENDS),
    lambda t: ResponseReceived(t, 200, NO_UPDATE),
    lambda t: BootFailed(t, "stray"),
    lambda t: CallEnded(t),
    *(_fire(timer) for timer in Timer),
]


def snapshot(phone: Phone) -> tuple[object, ...]:
    return (
        phone.state,
        dict(phone.slots),
        phone.active_slot,
        dict(phone.timers),
        phone.calls_in_progress,
        phone.staged_version,
        phone.provisioning,
        len(phone.log),
    )


def check_invariants(phone: Phone, versions_seen: set[str]) -> None:
    state, slots, timers = phone.state, phone.slots, phone.timers
    statuses = [slot.status for slot in slots.values()]
    # The running image is never touched: writes only go to the other slot.
    if state in UP:
        assert slots[phone.active_slot].status is SlotStatus.VALID
    if state is not S.OFF:
        assert SlotStatus.VALID in statuses
    assert (SlotStatus.WRITING in statuses) == (state is S.FLASHING)
    if state is S.FLASHING:
        assert slots[phone.active_slot.other].status is SlotStatus.WRITING
    assert phone.current_version in versions_seen | {FACTORY}
    # Each timer only runs in the states that own it.
    assert (Timer.BOOT in timers) == (state is S.BOOTING)
    assert (Timer.FLASH in timers) == (state is S.FLASHING)
    assert (Timer.RETRY in timers) == (state is S.BACKING_OFF)
    if Timer.REBOOT in timers:
        assert state is S.AWAITING_REBOOT
        assert phone.calls_in_progress == 0
    if state is S.AWAITING_REBOOT:
        assert phone.staged_version is not None
        assert slots[phone.active_slot.other].status is SlotStatus.VALID
    if state is S.OFF:
        assert not timers


@settings(
    max_examples=60,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.data(), st.integers(min_value=0, max_value=2**32 - 1))
def test_random_event_sequences_never_corrupt_the_slots(data: st.DataObject, seed: int) -> None:
    phone = Phone(
        get_model("CX600").identity(1),
        rng=random.Random(seed),
        settings=PhoneSettings(check_interval=3_600, max_retries=2),
    )
    now = T0
    pending: Action | None = None
    seen = {FACTORY, NEW, OTHER}
    for _ in range(data.draw(st.integers(min_value=20, max_value=120), label="steps")):
        progress, use, faults = candidates(phone, pending)
        kind = data.draw(st.integers(min_value=0, max_value=19), label="kind")
        if kind < 14 and progress:
            pool = progress
        elif kind < 17 or not faults:
            pool = use
        elif kind < 18:
            pool = faults
        else:
            pool = STRAYS
        maker = data.draw(st.sampled_from(pool), label="event")
        now += data.draw(st.sampled_from([0.0, 1.0, 30.0, 400.0]), label="delay")
        event = maker(now)
        before = snapshot(phone)
        try:
            actions = phone.handle(event)
        except ProtocolError:
            # A refused event changes nothing, not even the log.
            assert snapshot(phone) == before
            continue
        now = max(now, event.now)
        for action in actions:
            if isinstance(action, IO_ACTIONS):
                pending = action
        if phone.state is S.OFF or (isinstance(event, TimerFired) and event.timer is Timer.REBOOT):
            pending = None
        check_invariants(phone, seen)
