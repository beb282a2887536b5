"""Phone models and identities, the lease, clocks (scaled and fake loop time), back-off."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from phone_script import ALICE

from emulator.backoff import BackoffPolicy
from emulator.cli import DEFAULT_SCALE, UsageError, phone_time
from emulator.clock import LoopClock, ScaledClock, from_datetime, to_datetime
from emulator.errors import (
    ClockError,
    CredentialsError,
    EmulatorError,
    LeaseError,
    ModelError,
    SettingsError,
)
from emulator.events import Credentials
from emulator.lease import load_lease, parse_lease
from emulator.models import MAX_INDEX, MODELS, VENDORS, get_model
from emulator.settings import PhoneSettings

# --- Models ---------------------------------------------------------------------------------


def test_every_model_of_the_design_exists_with_its_vendor() -> None:
    assert {name: model.vendor.name for name, model in MODELS.items()} == {
        "CX500": "Polycom",
        "CX600": "Polycom",
        "CX3000": "Polycom",
        "CX700": "Polycom",
        "6721ip": "Aastra",
        "6725ip": "Aastra",
        "HP4110": "HP",
        "HP4120": "HP",
    }
    for model in MODELS.values():
        assert (model.device_type, model.revision, model.locale) == ("UCPhone", "A", "ENU")
        assert re.fullmatch(r"4\.0\.7577\.\d{4}", model.factory_version)


def test_macs_use_each_vendors_oui() -> None:
    assert VENDORS["Polycom"].oui == "00-04-F2"
    assert VENDORS["Aastra"].oui == "00-08-5D"
    assert get_model("CX600").mac(1) == "00-04-F2-00-00-01"
    assert get_model("6725ip").mac(1).startswith("00-08-5D-")
    assert get_model("HP4110").mac(1).startswith("3C-D9-2B-")
    for model in MODELS.values():
        assert re.fullmatch(r"([0-9A-F]{2}-){5}[0-9A-F]{2}", model.mac(MAX_INDEX))


def test_serial_numbers_follow_each_vendors_format() -> None:
    assert get_model("CX600").serial(1) == "CX6A000001"
    assert get_model("CX3000").serial(42) == "CX3A000042"
    assert get_model("6721ip").serial(1) == "AA6721A000001"
    assert get_model("HP4120").serial(123_456) == "CN4120A123456"


def test_identities_are_deterministic_and_unique_across_models() -> None:
    identities = [model.identity(i) for model in MODELS.values() for i in (0, 1, 2, MAX_INDEX)]
    assert len({i.mac for i in identities}) == len(identities)
    assert len({i.serial for i in identities}) == len(identities)
    again = get_model("CX600").identity(5)
    assert again == get_model("CX600").identity(5)
    assert again.display_name == "Polycom CX600"


def test_model_lookup_and_bad_indexes() -> None:
    assert get_model("hp4120") is MODELS["HP4120"]
    with pytest.raises(ModelError, match="unknown phone model 'CX9'; known models: CX500"):
        get_model("CX9")
    with pytest.raises(ModelError, match="between 0 and 999999"):
        get_model("CX600").identity(MAX_INDEX + 1)
    with pytest.raises(ModelError):
        get_model("CX600").mac(-1)


def test_image_layout() -> None:
    assert get_model("CX600").layout("4.0.7577.4372") == (
        "UCPhone/Polycom/CX600/A/ENU/4.0.7577.4372/CPE"
    )


# --- Lease ----------------------------------------------------------------------------------

LEASE_JSON = {
    "domain": "contoso.test",
    "sip_domain": "contoso.test",
    "sip_server": "pool01.contoso.test",
    "dns": ["127.10.0.2", 10053],
    "https_port": 10443,
    "segments": {"inside": "127.10.0.0/16", "outside": "127.20.0.0/16"},
    "ca_cert": "/certs/ca.pem",
    "vendor_certs": {"Polycom": "/certs/vendors/Polycom.pem"},
}


def test_a_lease_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    path.write_text(json.dumps(LEASE_JSON))
    lease = load_lease(path)
    assert lease.domain == "contoso.test"
    assert lease.dns == ("127.10.0.2", 10053)
    assert lease.ca_cert == Path("/certs/ca.pem")
    assert lease.vendor_certs["Polycom"] == Path("/certs/vendors/Polycom.pem")
    assert lease.discovery_host == "ucupdates-r2.contoso.test"
    assert lease.discovery_url == (
        "https://ucupdates-r2.contoso.test:10443/RequestHandler/ucdevice.upx"
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"domain": ""}, "'domain' must be a DNS name"),
        ({"sip_server": None}, "'sip_server' must be a DNS name"),
        ({"dns": "127.10.0.2"}, "'dns' must be"),
        ({"dns": ["127.10.0.2", 70000]}, "'dns' must hold a port"),
        ({"https_port": True}, "'https_port' must hold a port"),
        ({"vendor_certs": ["x"]}, "'vendor_certs' must map"),
        ({"clock": "fast"}, "'clock' must be"),
        ({"clock": {"start": "2030-06-01T08:00:00", "at": 0, "scale": 1}}, "'clock' must be"),
        ({"clock": {"start": "2030-06-01T08:00:00Z", "at": 0, "scale": 0}}, "'clock' must be"),
        ({"clock": {"start": "soon", "at": 0, "scale": 1}}, "'soon' is no ISO time"),
        ({"netns": "/proc/1/ns/net"}, "'netns' must be"),
        ({"netns": {"user": 3, "segments": {}}}, "'netns' must be"),
        ({"netns": {"segments": {"dmz": "/proc/1/ns/net"}}}, "'dmz' is no segment"),
    ],
)
def test_a_bad_lease_says_what_is_wrong(change: dict[str, object], words: str) -> None:
    with pytest.raises(LeaseError, match=words):
        parse_lease({**LEASE_JSON, **change})


def test_a_lease_carries_the_labs_clock_which_phones_follow() -> None:
    lease = parse_lease(
        {**LEASE_JSON, "clock": {"start": "2030-06-01T08:00:00+00:00", "at": 1000.0, "scale": 60}}
    )
    assert lease.clock is not None
    start = datetime(2030, 6, 1, 8, tzinfo=UTC).timestamp()
    assert lease.clock.at_wall(1000.0) == start
    assert lease.clock.at_wall(1010.0) == start + 600.0
    assert parse_lease(LEASE_JSON).clock is None


def test_a_lease_names_the_namespaces_of_a_lab_in_its_own_network() -> None:
    lease = parse_lease(
        {
            **LEASE_JSON,
            "segments": {"inside": "198.18.0.0/16", "outside": "198.19.0.0/16"},
            "netns": {
                "user": "/proc/7/ns/user",
                "home": "/proc/7/ns/net",
                "segments": {"inside": "/proc/8/ns/net", "outside": "/proc/9/ns/net"},
            },
        }
    )
    assert lease.netns is not None
    assert (lease.netns.user, lease.netns.home) == ("/proc/7/ns/user", "/proc/7/ns/net")
    # A phone's socket is made in the namespace of the segment its address is in.
    assert lease.netns.namespace_of("198.18.1.5") == "/proc/8/ns/net"
    assert lease.netns.namespace_of("198.19.1.5") == "/proc/9/ns/net"
    assert lease.netns.namespace_of("127.0.0.1") is None
    assert lease.netns.namespace_of("not an address") is None
    assert parse_lease(LEASE_JSON).netns is None


def test_unreadable_leases(tmp_path: Path) -> None:
    with pytest.raises(LeaseError, match="cannot read the lease"):
        load_lease(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LeaseError, match=r"bad\.json: the lease is not valid JSON"):
        load_lease(tmp_path / "bad.json")
    with pytest.raises(LeaseError, match="must be a JSON object"):
        parse_lease("[]")


# --- Clocks ---------------------------------------------------------------------------------


def test_a_scaled_clock_runs_scale_times_faster_from_its_start() -> None:
    loop_now = [1000.0]
    start = from_datetime(datetime(2026, 1, 1, tzinfo=UTC))
    clock = ScaledClock(lambda: loop_now[0], start=start, scale=1440)
    assert clock.now() == start
    loop_now[0] += 60  # one minute of loop time is a day of phone time
    assert clock.now() == start + 86_400
    assert clock.datetime() == datetime(2026, 1, 2, tzinfo=UTC)
    assert clock.loop_time(start + 2 * 86_400) == 1120.0
    with pytest.raises(ClockError, match="positive"):
        ScaledClock(lambda: 0.0, start=0, scale=0)


def test_dates_and_phone_time() -> None:
    when = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert to_datetime(from_datetime(when)) == when
    with pytest.raises(ClockError, match="no time zone"):
        from_datetime(datetime(2026, 1, 1))


@pytest.mark.looptime
async def test_a_loop_clock_timer_fires_at_the_exact_phone_time() -> None:
    loop = asyncio.get_running_loop()
    start = from_datetime(datetime(2026, 1, 1, tzinfo=UTC))
    clock = LoopClock(loop.time, start=start - loop.time())
    assert clock.now() == start
    fired: asyncio.Future[float] = loop.create_future()
    # What a driver does with StartTimer(CHECK, now + 24 h): no real waiting under looptime.
    loop.call_at(clock.loop_time(start + 86_400), lambda: fired.set_result(clock.now()))
    assert await fired == start + 86_400
    assert clock.datetime() == datetime(2026, 1, 2, tzinfo=UTC)


@pytest.mark.looptime
async def test_a_scaled_clock_on_fake_loop_time() -> None:
    loop = asyncio.get_running_loop()
    clock = ScaledClock(loop.time, start=0.0, scale=100)
    fired: asyncio.Future[float] = loop.create_future()
    loop.call_at(clock.loop_time(300.0), lambda: fired.set_result(clock.now()))
    assert await fired == pytest.approx(300.0)
    assert loop.time() == pytest.approx(clock.loop_time(0.0) + 3.0)


# --- Back-off, settings, credentials --------------------------------------------------------


def test_back_off_is_exponential_capped_and_jittered_within_bounds() -> None:
    policy = BackoffPolicy(base=10, factor=2, cap=100, jitter=0.25)
    assert [policy.nominal(n) for n in range(6)] == [10, 20, 40, 80, 100, 100]
    assert policy.nominal(10_000) == 100
    rng = random.Random(3)
    for attempt in range(8):
        low, high = policy.bounds(attempt)
        for _ in range(50):
            assert low <= policy.delay(attempt, rng) <= high
    a = [policy.delay(n, random.Random(9)) for n in range(4)]
    assert a == [policy.delay(n, random.Random(9)) for n in range(4)]


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0}, {"factor": 0.5}, {"cap": 1, "base": 2}, {"jitter": 1.0}, {"jitter": -0.1}],
)
def test_nonsense_back_off_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(SettingsError):
        BackoffPolicy(**kwargs)


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(SettingsError, match="idle_wait"):
        PhoneSettings(idle_wait=-1)
    with pytest.raises(SettingsError, match="check_interval"):
        PhoneSettings(check_interval=0)
    with pytest.raises(SettingsError, match="max_retries"):
        PhoneSettings(max_retries=-1)


def test_credentials_take_a_password_or_an_nt_hash_and_hide_both() -> None:
    assert ALICE.account == "CONTOSO\\alice"
    assert ALICE.ntlm_secret == "aad3b435b51404eeaad3b435b51404ee:fc525c9683e8fe067095ba2ddc971889"
    assert "fc525c" not in repr(ALICE)
    typed = Credentials("bob", "CONTOSO", password="Summer2026!")
    assert typed.ntlm_secret == "Summer2026!"
    assert "Summer" not in repr(typed)
    with pytest.raises(CredentialsError, match="either a password or an NT hash"):
        Credentials("bob", "CONTOSO")
    with pytest.raises(CredentialsError, match="32 hexadecimal digits"):
        Credentials("bob", "CONTOSO", nt_hash="xyz")
    assert issubclass(CredentialsError, EmulatorError)


def test_phones_take_the_labs_clock_and_refuse_one_of_their_own() -> None:
    at = time.time()
    lease = parse_lease(
        {**LEASE_JSON, "clock": {"start": "2030-06-01T08:00:00+00:00", "at": at, "scale": 60}}
    )
    start, scale = phone_time(lease, argparse.Namespace(start=None, scale=None))
    assert scale == 60
    assert 0 <= start - datetime(2030, 6, 1, 8, tzinfo=UTC).timestamp() < 600
    assert phone_time(lease, argparse.Namespace(start=None, scale=60.0))[1] == 60
    with pytest.raises(UsageError, match="the lab runs its clock at 60 times real time"):
        phone_time(lease, argparse.Namespace(start=None, scale=500.0))
    with pytest.raises(UsageError, match="leave out --start"):
        phone_time(lease, argparse.Namespace(start=0.0, scale=None))
    # A lab on no clock of its own: the phones' own start and scale, or now and the default.
    plain = parse_lease(LEASE_JSON)
    assert phone_time(plain, argparse.Namespace(start=5.0, scale=2.0)) == (5.0, 2.0)
    assert phone_time(plain, argparse.Namespace(start=None, scale=None))[1] == DEFAULT_SCALE
