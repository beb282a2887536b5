"""The service's pure parts: request XML, NTLM directory and lockout, ranges, diagnostics."""

from __future__ import annotations

import os
import socket
import struct
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import spnego
from service_helpers import check_body

from lab.net.config import Lockout, default_config
from lab.service import files
from lab.service.files import ImageFiles, if_range_holds, parse_range, read_cached
from lab.service.ntlm import (
    Authenticated,
    Challenge,
    Directory,
    NtlmSession,
    Rejected,
    TargetNames,
    Throttled,
    parse_authorization,
    read_authenticate,
    token_type,
)
from lab.service.problems import Problem, diagnostics_value
from lab.service.xmlio import (
    Download,
    XMLRequestError,
    parse_update_request,
    provisioning_document,
    update_response,
)

CONFIG = default_config()
USERS = CONFIG.users
NAMES = TargetNames.for_front_end(CONFIG, CONFIG.front_ends[0])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_answer(session: NtlmSession, user: str, password: str) -> bytes:
    """pyspnego's AUTHENTICATE for ``session``'s CHALLENGE (the session has not seen it)."""
    client = spnego.client(
        user, password, protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm
    )
    negotiate = client.step()
    assert negotiate is not None
    challenge = session.step(negotiate)
    assert isinstance(challenge, Challenge)
    answer = client.step(challenge.token)
    assert answer is not None
    return answer


def sign_in(directory: Directory, user: str, password: str, address: str = "") -> object:
    session = directory.session(NAMES, address)
    return session.step(client_answer(session, user, password))


# -- request and response XML ------------------------------------------------------------


def test_a_phone_request_is_parsed_and_normalised() -> None:
    body = check_body(mac="0004f2000001", serial=" cx6a000001 ", user="alice@contoso.test")
    request = parse_update_request(body)
    assert request.mac == "00-04-F2-00-00-01"
    assert request.serial == "CX6A000001"
    assert request.installed_version == "4.0.7577.4366"
    assert request.last_signed_in_user == "alice@contoso.test"
    assert parse_update_request(check_body()).last_signed_in_user is None


def test_every_body_is_parsed_on_its_own_and_equal_bodies_give_equal_requests() -> None:
    body = check_body(mac="00-04-F2-00-0A-01", serial="CX6A0A01")
    first = parse_update_request(body)
    again = parse_update_request(bytes(bytearray(body)))
    # Nothing rests on identity: the same body gives an equal request, not the same object.
    assert again == first
    assert again is not first
    assert first.kind.model == "CX600"
    assert first.installed_modules == "CPE.nbt:4.0.7577.4366"
    other = parse_update_request(check_body(mac="00-04-F2-00-0A-02", serial="CX6A0A02"))
    assert other != first
    assert other.mac == "00-04-F2-00-0A-02"
    bad = body.replace(b"<Model>", b"<Mode>")
    for _ in range(2):
        with pytest.raises(XMLRequestError, match="not well-formed"):
            parse_update_request(bad)


def test_bodies_over_the_limit_are_refused_before_parsing() -> None:
    with pytest.raises(XMLRequestError, match="over 65536") as caught:
        parse_update_request(b"<" * (64 * 1024 + 1))
    assert caught.value.code == "too-large"


def test_responses_escape_what_they_carry() -> None:
    empty = ET.fromstring(update_response([]))  # noqa: S314 - our own output
    assert empty.attrib == {"downloads": "0"}
    item = Download("CPE.nbt", "4.0.7577.4372", 10, "ab", "https://x/a?b&c", "https://y/<z>")
    root = ET.fromstring(update_response([item]))  # noqa: S314 - our own output
    download = root.find("Download")
    assert download is not None
    assert download.findtext("BaseURL") == "https://x/a?b&c"
    assert download.findtext("ExternalBaseURL") == "https://y/<z>"
    document = provisioning_document(
        internal_url="https://i", external_url="https://e", user_uri="a&b@contoso.test"
    )
    properties = {p.get("name"): p.text for p in ET.fromstring(document).iter("property")}  # noqa: S314
    assert properties["userUri"] == "a&b@contoso.test"


def test_a_pool_no_edge_publishes_gets_no_external_url_at_all() -> None:
    # se01.contoso.test of the default lab: the edge publishes pool01 only.
    item = Download("CPE.nbt", "4.0.7577.4372", 10, "ab", "https://se01/a", None)
    root = ET.fromstring(update_response([item]))  # noqa: S314 - our own output
    download = root.find("Download")
    assert download is not None
    assert download.findtext("BaseURL") == "https://se01/a"
    assert download.find("ExternalBaseURL") is None
    document = provisioning_document(
        internal_url="https://se01", external_url=None, user_uri="carol@contoso.test"
    )
    properties = [p.get("name") for p in ET.fromstring(document).iter("property")]  # noqa: S314
    assert properties == [
        "updatesServerInternalUrl",
        "EnableDeviceUpdate",
        "deviceUpdateCheckInterval",
        "userUri",
    ]


def test_diagnostics_values_stay_one_quoted_line() -> None:
    assert diagnostics_value(40001, 'bad "x"\nline\\two') == "40001;reason=\"bad 'x' line\\\\two\""


# -- NTLM --------------------------------------------------------------------------------


def av_pairs(challenge: bytes) -> dict[int, str]:
    length, _, offset = struct.unpack_from("<HHI", challenge, 40)
    data = challenge[offset : offset + length]
    pairs: dict[int, str] = {}
    while data:
        av_id, size = struct.unpack_from("<HH", data)
        if av_id == 0:
            break
        if av_id != 7:  # the time stamp is no text
            pairs[av_id] = data[4 : 4 + size].decode("utf-16-le")
        data = data[4 + size :]
    return pairs


def challenge_from(directory: Directory) -> Challenge:
    """The directory's CHALLENGE to a real NTLM client's NEGOTIATE."""
    client = spnego.client(
        "CONTOSO\\alice", "Passw0rd!", protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm
    )
    negotiate = client.step()
    assert negotiate is not None
    challenge = directory.session(NAMES).step(negotiate)
    assert isinstance(challenge, Challenge)
    return challenge


def test_the_challenge_describes_the_lab_not_the_host() -> None:
    challenge = challenge_from(Directory(USERS))
    assert av_pairs(challenge.token) == {
        1: "FE01",
        2: "CONTOSO",
        3: "fe01.contoso.test",
        4: "contoso.test",
        5: "contoso.test",
    }
    assert socket.gethostname().upper() not in challenge.token.decode("utf-16-le", "replace")


def test_the_challenge_carries_the_service_clock_time() -> None:
    # MsvAvTimestamp is a FILETIME: 100 ns steps since 1601-01-01 UTC.
    at = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    challenge = challenge_from(Directory(USERS, now=lambda: at))
    length, _, offset = struct.unpack_from("<HHI", challenge.token, 40)
    info = challenge.token[offset : offset + length]
    stamp = info.index(struct.pack("<HH", 7, 8))
    [filetime] = struct.unpack_from("<Q", info, stamp + 4)
    assert datetime(1601, 1, 1, tzinfo=UTC) + timedelta(microseconds=filetime // 10) == at


def test_no_credential_file_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NTLM_USER_FILE", raising=False)
    directory = Directory(USERS)
    assert isinstance(sign_in(directory, "CONTOSO\\alice", "Passw0rd!"), Authenticated)
    assert "NTLM_USER_FILE" not in os.environ


@pytest.mark.parametrize(
    "name",
    ["CONTOSO\\alice", "contoso\\ALICE", "alice", "alice@contoso.test", "ALICE@CONTOSO.TEST"],
)
def test_every_form_of_the_name_signs_in(name: str) -> None:
    outcome = sign_in(Directory(USERS), name, "Passw0rd!")
    assert isinstance(outcome, Authenticated)
    assert outcome.user.name == "alice"


def test_a_domain_in_the_user_field_counts_against_the_same_account() -> None:
    clock = Clock()
    policy = Lockout(threshold=3, window=60, duration=120)
    directory = Directory(USERS, lockout=policy, clock=clock)
    # The form that once escaped the count: the domain inside the user field, none beside it.
    for form in ("CONTOSO\\alice", "alice@contoso.test", "alice"):
        outcome = sign_in(directory, form, "wrong")
        assert isinstance(outcome, Rejected)
    assert directory.is_locked(directory.find("", "alice@contoso.test"))  # type: ignore[arg-type]
    for form in ("CONTOSO\\alice", "alice@contoso.test", "contoso\\ALICE"):
        locked = sign_in(directory, form, "Passw0rd!")
        assert isinstance(locked, Rejected)
        assert locked.locked


def test_a_wrong_password_and_an_unknown_user_look_the_same() -> None:
    directory = Directory(USERS)
    answers = {
        sign_in(directory, name, password)
        for name, password in [
            ("CONTOSO\\alice", "wrong"),
            ("CONTOSO\\nobody", "Passw0rd!"),
            ("CONTOSO\\nobody", "wrong"),
            ("nobody@contoso.test", "Passw0rd!"),
            ("OTHER\\alice", "Passw0rd!"),
        ]
    }
    assert answers == {Rejected("the user name or password is incorrect")}


def test_lockout_counts_failures_in_the_window_and_lasts_its_duration() -> None:
    clock = Clock()
    policy = Lockout(threshold=3, window=60, duration=300)
    directory = Directory(USERS, lockout=policy, clock=clock)
    first = sign_in(directory, "CONTOSO\\bob", "wrong")
    assert isinstance(first, Rejected)
    assert not first.locked
    clock.now += 61  # the first failure falls out of the window
    for _ in range(2):
        assert isinstance(sign_in(directory, "CONTOSO\\bob", "wrong"), Rejected)
    assert isinstance(sign_in(directory, "CONTOSO\\bob", "Summer2026!"), Authenticated)
    for _ in range(2):
        sign_in(directory, "CONTOSO\\bob", "wrong")
    third = sign_in(directory, "CONTOSO\\bob", "wrong")
    assert isinstance(third, Rejected)
    assert third.locked
    # Locked: the right password and a wrong one get the same answer.
    assert sign_in(directory, "CONTOSO\\bob", "Summer2026!") == third
    assert sign_in(directory, "CONTOSO\\bob", "wrong") == third
    assert directory.snapshot()["locked_accounts"] == {"bob": 300}
    clock.now += 299
    assert sign_in(directory, "CONTOSO\\bob", "Summer2026!") == third
    clock.now += 1
    assert isinstance(sign_in(directory, "CONTOSO\\bob", "Summer2026!"), Authenticated)
    for _ in range(3):
        sign_in(directory, "CONTOSO\\bob", "wrong")
    bob = directory.find("CONTOSO", "bob")
    assert bob is not None
    assert directory.is_locked(bob)
    directory.unlock(bob)  # what an administrator does
    assert isinstance(sign_in(directory, "CONTOSO\\bob", "Summer2026!"), Authenticated)


def test_one_address_is_throttled_before_it_can_lock_every_account() -> None:
    clock = Clock()
    policy = Lockout(threshold=5, window=60, duration=60, address_threshold=4, address_duration=90)
    seen: list[tuple[str, str, float]] = []
    directory = Directory(
        USERS, lockout=policy, clock=clock, on_lockout=lambda *args: seen.append(args)
    )
    for name in ("CONTOSO\\alice", "CONTOSO\\bob", "CONTOSO\\alice", "CONTOSO\\bob"):
        assert isinstance(sign_in(directory, name, "wrong", address="127.20.6.6"), Rejected)
    # Throttled: even the right password is not looked at, and nobody is locked.
    refused = sign_in(directory, "CONTOSO\\alice", "Passw0rd!", address="127.20.6.6")
    assert refused == Throttled("127.20.6.6", 90)
    assert seen == [("address", "127.20.6.6", 90)]
    assert directory.snapshot()["locked_accounts"] == {}
    assert directory.snapshot()["throttled_addresses"] == {"127.20.6.6": 90}
    # Another address signs alice in.
    assert isinstance(
        sign_in(directory, "CONTOSO\\alice", "Passw0rd!", "127.20.6.7"), Authenticated
    )
    clock.now += 90
    assert isinstance(
        sign_in(directory, "CONTOSO\\alice", "Passw0rd!", "127.20.6.6"), Authenticated
    )


def test_ntlmv1_answers_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # An initiator at compatibility level 0 sends NTLMv1 (and LM) answers.
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    session = Directory(USERS).session(NAMES)
    answer = client_answer(session, "CONTOSO\\alice", "Passw0rd!")
    assert not read_authenticate(answer).ntlmv2
    outcome = session.step(answer)
    assert isinstance(outcome, Rejected)
    assert "only NTLMv2" in outcome.reason


def test_a_tampered_message_integrity_code_is_refused() -> None:
    session = Directory(USERS).session(NAMES)
    tampered = bytearray(client_answer(session, "CONTOSO\\alice", "Passw0rd!"))
    tampered[72] ^= 0x01  # the MIC (the client announced one in its AV pairs)
    assert isinstance(session.step(bytes(tampered)), Rejected)


def test_tokens_and_headers() -> None:
    assert parse_authorization("Basic YWxhZGRpbjpvcGVuc2VzYW1l") is None
    assert parse_authorization("NTLM !!!") is None
    assert parse_authorization("NTLM TlRMTVNTUAABAAAA") == b"NTLMSSP\x00\x01\x00\x00\x00"
    assert token_type(b"NTLMSSP\x00\x01\x00\x00\x00") == 1
    assert token_type(b"NTLMSSP\x00\x09\x00\x00\x00") == 0
    assert token_type(b"garbage") == 0
    forged = b"NTLMSSP\x00" + struct.pack("<I", 3) + struct.pack("<HHI", 4000, 4000, 64) * 6
    forged += b"\x00" * (64 - len(forged))
    with pytest.raises(ValueError, match="past the message"):
        read_authenticate(forged)
    session = Directory(USERS).session(NAMES)
    assert isinstance(session.step(forged), Rejected)
    assert isinstance(session.step(b"nonsense"), Rejected)
    assert isinstance(session.step(b"NTLMSSP\x00\x01\x00\x00\x00"), Rejected)  # too short


# -- ranges and paths --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-", (0, 100)),
        ("bytes=10-19", (10, 20)),
        ("bytes=90-500", (90, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=-500", (0, 100)),
        ("bytes=5-1", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=abc", None),
        ("bytes=1-x", None),
    ],
)
def test_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(Problem) as caught:
        parse_range(header, 100)
    assert caught.value.diagnostic.status == 416
    assert caught.value.headers == {"Content-Range": "bytes */100"}


def test_if_range_needs_the_exact_strong_etag() -> None:
    date = "Sun, 22 Nov 2026 02:00:00 GMT"
    assert if_range_holds(None, '"a"', date)
    assert if_range_holds('"a"', '"a"', date)
    assert not if_range_holds('"b"', '"a"', date)
    assert not if_range_holds('W/"a"', '"a"', date)
    assert if_range_holds(date, '"a"', date)
    assert not if_range_holds("Sat, 21 Nov 2026 02:00:00 GMT", '"a"', date)


def test_resolve_stays_inside_the_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "UCPhone").mkdir(parents=True)
    (root / "UCPhone" / "CPE.nbt").write_bytes(b"image")
    (tmp_path / "secret").write_bytes(b"secret")
    (root / "UCPhone" / "inner-link").symlink_to(root / "UCPhone" / "CPE.nbt")
    (root / "UCPhone" / "outer-link").symlink_to(tmp_path / "secret")
    store = ImageFiles(root)
    assert store.resolve("UCPhone/CPE.nbt") == (root / "UCPhone" / "CPE.nbt").resolve()
    assert store.resolve("UCPhone/inner-link").read_bytes() == b"image"
    for bad, status in [
        ("UCPhone/outer-link", 404),
        ("../secret", 400),
        ("UCPhone/../../secret", 400),
        ("UCPhone\\..\\..\\secret", 400),
        ("/etc/passwd", 400),
        ("UCPhone/%2e%2e", 400),
        ("UCPhone", 404),
        ("UCPhone/missing", 404),
    ]:
        with pytest.raises(Problem) as caught:
            store.resolve(bad)
        assert caught.value.diagnostic.status == status, bad


async def test_a_kept_path_swapped_for_a_symlink_is_refused(tmp_path: Path) -> None:
    from aiohttp.test_utils import make_mocked_request

    root = tmp_path / "store"
    (root / "UCPhone").mkdir(parents=True)
    (root / "UCPhone" / "CPE.nbt").write_bytes(b"image")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "CPE.nbt").write_bytes(b"secret")
    store = ImageFiles(root)
    kept = store.resolve("UCPhone/CPE.nbt")
    assert store.resolve("UCPhone/CPE.nbt") == kept
    # The file itself becomes a symlink out of the store: refused at once.
    (root / "UCPhone" / "CPE.nbt").unlink()
    (root / "UCPhone" / "CPE.nbt").symlink_to(outside / "CPE.nbt")
    with pytest.raises(Problem) as caught:
        store.resolve("UCPhone/CPE.nbt")
    assert caught.value.diagnostic.status == 404
    # A directory on the kept path becomes a symlink out of the store: the kept path
    # still names a regular file, but the file opened lies outside, so it is not sent.
    (root / "UCPhone" / "CPE.nbt").unlink()
    (root / "UCPhone" / "CPE.nbt").write_bytes(b"image")
    kept = store.resolve("UCPhone/CPE.nbt")
    (root / "UCPhone").rename(tmp_path / "moved")
    (root / "UCPhone").symlink_to(outside)
    assert store.resolve("UCPhone/CPE.nbt") == kept
    with pytest.raises(Problem) as caught:
        await store.send(make_mocked_request("GET", "/x"), kept)
    assert caught.value.diagnostic.status == 404


@pytest.fixture
def nowait_dir(tmp_path: Path) -> Path:
    """``tmp_path``, where the system reads a cached file without waiting (``RWF_NOWAIT``).

    Asked of the system itself, not of the code under test, so that a test on it is skipped
    only where the file system cannot, never because the code returned nothing.
    """
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        pytest.skip("this system has no RWF_NOWAIT reads")
    probe = tmp_path / "probe"
    probe.write_bytes(b"probe")  # just written, so in the page cache
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(5)], 0, nowait)
    except OSError as exc:
        pytest.skip(f"this file system cannot read without waiting (RWF_NOWAIT): {exc}")
    finally:
        os.close(fd)
        probe.unlink()
    return tmp_path


def test_cached_reads_give_the_files_bytes_and_leave_the_rest_to_a_thread(
    nowait_dir: Path,
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    image = nowait_dir / "CPE.nbt"
    image.write_bytes(data)
    fd = os.open(image, os.O_RDONLY)
    try:
        # Just written, so cached: each part is read at once, the end is empty.
        got = b"".join(
            bytes(read_cached(fd, 1024 * 1024, offset) or b"")
            for offset in range(0, len(data), 1024 * 1024)
        )
        assert got == data
        end = read_cached(fd, 10, len(data))
        assert end is not None
        assert len(end) == 0
    finally:
        os.close(fd)
    reader, writer = os.pipe()
    try:
        assert read_cached(reader, 10, 0) is None  # no page cache to ask: a thread reads it
    finally:
        os.close(reader)
        os.close(writer)


def test_small_files_are_kept_in_memory_per_version_within_a_bound(
    nowait_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "CONTENT_CACHE_FILE", 1000)
    monkeypatch.setattr(files, "CONTENT_CACHE_BYTES", 2500)
    store = ImageFiles(nowait_dir)

    def content(name: str) -> memoryview | None:
        fd = os.open(nowait_dir / name, os.O_RDONLY)
        try:
            return store.content(fd, os.fstat(fd))
        finally:
            os.close(fd)

    for name in ("a", "b", "c"):
        (nowait_dir / name).write_bytes(name.encode() * 1000)
    (nowait_dir / "big").write_bytes(b"x" * 1001)
    first = content("a")
    assert first is not None
    assert bytes(first) == b"a" * 1000
    again = content("a")
    assert again is not None
    assert again.obj is first.obj  # kept: not read again
    assert content("big") is None  # over the size kept: read in chunks as it is sent
    # A new version of the file (written aside and renamed over, as the store does).
    (nowait_dir / "new").write_bytes(b"A" * 1000)
    (nowait_dir / "new").rename(nowait_dir / "a")
    newer = content("a")
    assert newer is not None
    assert bytes(newer) == b"A" * 1000
    # At most 2,500 bytes in all: the least recently sent versions go first.
    b = content("b")
    assert b is not None
    assert [bytes(v)[:1] for v in store._contents.values()] == [b"A", b"b"]
    content("c")
    assert [bytes(v)[:1] for v in store._contents.values()] == [b"b", b"c"]
    assert store._content_bytes == 2000
