"""Request and answer codecs: the update-check body, its answer, provisioning, error headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from defusedxml import ElementTree
from phone_script import EXTERNAL_URL, INTERNAL_URL, NO_UPDATE, Vendor, firmware, offer_xml
from phone_script import provisioning_xml as provisioning

from emulator.codec import (
    ANSWER_LIMIT,
    Diagnostics,
    Provisioning,
    build_update_request,
    describe_status,
    parse_diagnostics,
    parse_provisioning,
    parse_retry_after,
    parse_update_response,
)
from emulator.errors import MalformedAnswerError
from emulator.models import get_model
from emulator.routes import is_address

SHA = "ab" * 32


def test_the_request_carries_identity_version_and_user() -> None:
    identity = get_model("HP4120").identity(7)
    body = build_update_request(
        identity,
        "4.0.7577.4372",
        timestamp=datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
        last_signed_in_user="bob@contoso.test",
    )
    assert body.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ElementTree.fromstring(body)
    assert [child.tag for child in root] == [
        "DeviceType",
        "Vendor",
        "Model",
        "Revision",
        "Locale",
        "MacAddress",
        "SerialNumber",
        "Modules",
        "LastSignedInUser",
    ]
    assert root.findtext("Vendor") == "HP"
    assert root.findtext("Model") == "HP4120"
    assert root.findtext("MacAddress") == identity.mac
    assert root.findtext("SerialNumber") == identity.serial
    assert root.findtext("LastSignedInUser") == "bob@contoso.test"
    module = root.find("Modules/Module")
    assert module is not None
    assert module.get("timestamp") == "2026-03-04T05:06:07Z"


def test_the_request_escapes_what_it_carries() -> None:
    identity = get_model("CX600").identity(1)
    body = build_update_request(
        identity, "1", timestamp=datetime(2026, 1, 1, tzinfo=UTC), last_signed_in_user="a<&>b"
    )
    assert ElementTree.fromstring(body).findtext("LastSignedInUser") == "a<&>b"


def test_no_user_no_element() -> None:
    identity = get_model("CX600").identity(1)
    body = build_update_request(identity, "1", timestamp=datetime(2026, 1, 1, tzinfo=UTC))
    assert ElementTree.fromstring(body).find("LastSignedInUser") is None


def test_an_answer_with_nothing_for_the_phone() -> None:
    answer = parse_update_response(NO_UPDATE)
    assert answer.downloads == ()
    assert answer.version is None


def test_an_answer_offering_a_version() -> None:
    fw = firmware(Vendor("Polycom"))
    answer = parse_update_response(offer_xml(fw))
    assert answer.version == fw.version
    assert [d.module for d in answer.downloads] == ["CPE.cat", "CPE.nbt"]
    image = answer.offer("CPE.nbt")
    assert image is not None
    assert image.size == len(fw.image)
    assert image.base_url is not None
    assert image.base_url.startswith("https://pool01.contoso.test:10443/DeviceUpdateFiles_Int/")
    assert image.external_base_url is not None
    assert "/DeviceUpdateFiles_Ext/" in image.external_base_url
    assert answer.offer("CPE.xml") is None


def _download(
    module: str = "CPE.nbt",
    version: str = "1.2",
    size: str = "10",
    sha: str = SHA,
    base: str | None = "https://a.test/x",
) -> str:
    url = f"<BaseURL>{base}</BaseURL>" if base is not None else ""
    return (
        f'<Download module="{module}" version="{version}" size="{size}" sha256="{sha}">'
        f"{url}</Download>"
    )


def _answer(*downloads: str, declared: int | None = None) -> bytes:
    count = len(downloads) if declared is None else declared
    body = "".join(downloads)
    return f'<DeviceUpdateResponse downloads="{count}">{body}</DeviceUpdateResponse>'.encode()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not xml", "not well-formed XML"),
        (b"<Other/>", "must be a <DeviceUpdateResponse> document, not <Other>"),
        (b'<DeviceUpdateResponse downloads="x"/>', "downloads attribute must be a whole number"),
        (b"<DeviceUpdateResponse/>", "downloads attribute must be a whole number"),
        (_answer(declared=1), "says downloads=1 but holds 0"),
        (_answer(_download(module="../x")), "names a module '../x'"),
        (_answer(_download(version="a/b")), "a version 'a/b'"),
        (_answer(_download(size="-1")), "size of CPE.nbt must be a whole number"),
        (_answer(_download(sha="xyz")), "no valid sha256"),
        (_answer(_download(base=None)), "gives CPE.nbt no URL"),
        (_answer(_download(base="http://a.test/x")), "must be an https URL"),
        (_answer(_download(), _download(module="CPE.cat", version="9")), "several versions"),
        (_answer(_download(), _download()), "offers one module twice"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><DeviceUpdateResponse/>', "not well-formed XML"),
        (_answer(" " * ANSWER_LIMIT), "over the 65536 limit"),
    ],
)
def test_a_malformed_answer_says_what_is_wrong(body: bytes, words: str) -> None:
    with pytest.raises(MalformedAnswerError, match=words):
        parse_update_response(body)


def test_provisioning_gives_urls_switch_interval_and_user() -> None:
    assert parse_provisioning(provisioning(interval=3600)) == Provisioning(
        internal_url=INTERNAL_URL,
        external_url=EXTERNAL_URL,
        enabled=True,
        check_interval=3600,
        user_uri="alice@contoso.test",
    )
    off = parse_provisioning(provisioning(internal=None, external=None, enabled=False))
    assert (off.enabled, off.internal_url, off.check_interval) == (False, None, None)


def test_provisioning_ignores_properties_it_does_not_use() -> None:
    body = provisioning().replace(
        b"<propertyEntryList>",
        b'<propertyEntryList><property name="voiceMailUri">sip:vm</property>',
    )
    assert parse_provisioning(body).internal_url == INTERNAL_URL


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (provisioning(interval=10), "shorter than the 60 s a phone accepts"),
        (provisioning().replace(b">true<", b">maybe<"), "must be true or false"),
        (provisioning(internal=None, external=None), "gives no update URL"),
        (provisioning(internal="ftp://x/y"), "must be an https URL"),
        (
            provisioning().replace(
                b"</propertyEntryList>",
                b'<property name="userUri">x</property></propertyEntryList>',
            ),
            "sets userUri twice",
        ),
        (b"<provisionGroup", "not well-formed XML"),
        (b"<DeviceUpdateResponse/>", "must be a <provisionGroup> document"),
    ],
)
def test_bad_provisioning_is_refused(body: bytes, words: str) -> None:
    with pytest.raises(MalformedAnswerError, match=words):
        parse_provisioning(body)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('52001;reason="In maintenance"', Diagnostics(52001, "In maintenance")),
        ('1;reason="say \\"no\\"";source="fe01"', Diagnostics(1, 'say "no"')),
        ("something odd", Diagnostics(None, "something odd")),
        ("", None),
        (None, None),
    ],
)
def test_x_ms_diagnostics(header: str | None, expected: Diagnostics | None) -> None:
    assert parse_diagnostics(header) == expected


def test_status_in_plain_words() -> None:
    diagnostics = Diagnostics(28021, "No user is signed in on this device")
    assert describe_status(403, diagnostics) == (
        "HTTP 403 Forbidden: No user is signed in on this device (diagnostic 28021)"
    )
    assert describe_status(599) == "HTTP 599 (unknown status)"


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:05:00 GMT", now) == 300.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:05:00 GMT") is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("host", "literal"),
    [
        ("127.10.0.11", True),
        ("::1", True),
        ("fe80::1%eth0", True),
        ("DEAD:beef::1", True),
        ("ucupdates-r2.contoso.test", False),
        ("face", False),
        ("1.2.3", False),
        ("01.2.3.4", False),
        ("", False),
    ],
)
def test_an_address_literal_is_told_from_a_host_name(host: str, literal: bool) -> None:
    assert is_address(host) is literal
