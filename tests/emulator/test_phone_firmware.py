"""Firmware checks: catalog format, vendor signature, device match, image size and SHA-256."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from phone_script import NEW, Vendor, image

from emulator.errors import (
    CatalogError,
    DeviceMismatchError,
    FirmwareError,
    ImageError,
    SignatureError,
    VendorCertificateError,
)
from emulator.firmware import (
    CatalogEntry,
    check_catalog_device,
    check_image,
    check_image_file,
    check_received,
    parse_catalog,
    verify_catalog,
    verify_catalog_signature,
)

DEVICE = {"vendor": "Polycom", "model": "CX600", "revision": "A", "locale": "ENU"}


@pytest.fixture(scope="module")
def polycom() -> Vendor:
    return Vendor("Polycom")


@pytest.fixture(scope="module")
def signed(polycom: Vendor) -> bytes:
    return polycom.catalog({"CPE.nbt": image(), "CPE.xml": b"<x/>"})


def test_a_signed_catalog_parses_and_verifies(polycom: Vendor, signed: bytes) -> None:
    catalog = verify_catalog(signed, polycom.cert_pem, **DEVICE, version=NEW)
    assert (catalog.vendor, catalog.model, catalog.revision, catalog.locale, catalog.version) == (
        "Polycom",
        "CX600",
        "A",
        "ENU",
        NEW,
    )
    assert catalog.entry("CPE.nbt") == CatalogEntry(
        "CPE.nbt", 4096, hashlib.sha256(image()).hexdigest()
    )
    assert [f.name for f in catalog.files] == ["CPE.nbt", "CPE.xml"]
    assert signed.startswith(catalog.signed)
    assert signed[len(catalog.signed) :].startswith(b"signature: ")


def test_the_answer_for_a_catalog_is_kept_for_the_next_phone(
    polycom: Vendor, signed: bytes
) -> None:
    first = verify_catalog(signed, polycom.cert_pem, **DEVICE, version=NEW)
    hits = verify_catalog.cache_info().hits
    # Another phone, the same bytes read from its own file: the same answer, not checked again.
    assert (
        verify_catalog(bytes(bytearray(signed)), polycom.cert_pem, **DEVICE, version=NEW) is first
    )
    assert verify_catalog.cache_info().hits == hits + 1
    # Any other device, certificate or byte is checked afresh, and refused each time.
    for _ in range(2):
        with pytest.raises(DeviceMismatchError):
            verify_catalog(signed, polycom.cert_pem, **{**DEVICE, "model": "CX700"}, version=NEW)
        with pytest.raises(SignatureError):
            verify_catalog(signed, Vendor("Polycom").cert_pem, **DEVICE, version=NEW)
        with pytest.raises(SignatureError):
            verify_catalog(signed.replace(b"CX600", b"CX700"), polycom.cert_pem, **DEVICE)


def test_a_catalog_signed_by_another_key_is_refused(signed: bytes) -> None:
    with pytest.raises(SignatureError, match="not signed by the vendor key this phone trusts"):
        verify_catalog_signature(parse_catalog(signed), Vendor("Polycom").cert_pem)


def test_a_changed_byte_breaks_the_signature(polycom: Vendor, signed: bytes) -> None:
    tampered = signed.replace(b"model: CX600", b"model: CX700")
    with pytest.raises(SignatureError):
        verify_catalog(tampered, polycom.cert_pem, **DEVICE)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("vendor", "Aastra", "for vendor 'Aastra', but this phone needs vendor 'Polycom'"),
        ("model", "CX700", "for model 'CX700'"),
        ("revision", "B", "for revision 'B'"),
        ("locale", "DEU", "for locale 'DEU'"),
        ("version", "4.0.7577.9999", "for version '4.0.7577.9999'"),
    ],
)
def test_a_catalog_for_another_device_is_refused(
    polycom: Vendor, field: str, value: str, words: str
) -> None:
    args = {"model": "CX600", "version": NEW, field: value}
    data = polycom.catalog({"CPE.nbt": image()}, **args)
    catalog = parse_catalog(data)
    verify_catalog_signature(catalog, polycom.cert_pem)
    with pytest.raises(DeviceMismatchError, match=words):
        check_catalog_device(catalog, **DEVICE, version=NEW)


def _replace_line(data: bytes, number: int, line: bytes | None) -> bytes:
    lines = data.split(b"\n")
    if line is None:
        del lines[number - 1]
    else:
        lines[number - 1] = line
    return b"\n".join(lines)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d.replace(b"\n", b"\r\n"), "LF line endings"),
        (lambda d: d[:-1], "does not end with a newline"),
        (lambda d: b"\xff" + d, "not UTF-8"),
        (lambda d: _replace_line(d, 1, b"DEVICE-UPDATE-CATALOG 2"), "line 1"),
        (lambda d: _replace_line(d, 3, None), "line 3 of the catalog must be 'model: <value>'"),
        (lambda d: _replace_line(d, 2, b"vendor: ../evil"), "line 2"),
        (lambda d: _replace_line(d, 7, b"file: CPE.nbt 12 nothex"), "line 7"),
        (lambda d: _replace_line(d, 8, b"file: CPE.nbt 1 " + b"0" * 64), "lists CPE.nbt again"),
        (lambda d: _replace_line(d, 7, b"color: blue"), "lists no file"),
        (lambda d: d + b"extra: 1\n", "text after its 'signature:' line"),
        (lambda d: d + d.split(b"\n")[-2] + b"\n", "text after its 'signature:' line"),
        (lambda d: d.replace(b"signature: ", b"signature: !!"), "not base64"),
    ],
)
def test_a_malformed_catalog_is_refused_with_the_reason(
    signed: bytes, change: object, words: str
) -> None:
    data = change(signed)  # type: ignore[operator]
    with pytest.raises(CatalogError, match=words):
        parse_catalog(data)


def test_a_vendor_certificate_without_an_ecdsa_p256_key_is_refused(signed: bytes) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa vendor")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(VendorCertificateError, match="does not hold an ECDSA P-256 key"):
        verify_catalog_signature(parse_catalog(signed), pem)
    with pytest.raises(VendorCertificateError, match="not a PEM certificate"):
        verify_catalog_signature(parse_catalog(signed), b"garbage")


def test_an_image_matching_its_entry_passes_from_bytes_a_stream_or_a_file(
    tmp_path: Path,
) -> None:
    data = image(size=3 * (1 << 20) + 5)  # several read chunks
    entry = CatalogEntry("CPE.nbt", len(data), hashlib.sha256(data).hexdigest())
    check_image(data, entry)
    check_image(io.BytesIO(data), entry)
    path = tmp_path / "CPE.nbt"
    path.write_bytes(data)
    check_image_file(path, entry)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (image()[:-1], "is 4095 bytes, not the 4096 bytes its catalog lists"),
        (image() + b"x", "is more than the 4096 bytes its catalog lists"),
        (bytes([image()[0] ^ 0xFF]) + image()[1:], "has SHA-256"),
    ],
)
def test_an_image_of_the_wrong_size_or_hash_is_refused(data: bytes, words: str) -> None:
    entry = CatalogEntry("CPE.nbt", 4096, hashlib.sha256(image()).hexdigest())
    with pytest.raises(ImageError, match=words):
        check_image(data, entry)
    with pytest.raises(ImageError, match=words):
        check_image(io.BytesIO(data), entry)
    # What was hashed while it was received is judged in the same words.
    with pytest.raises(ImageError, match=words):
        check_received(len(data), hashlib.sha256(data).hexdigest(), entry)


def test_an_image_received_whole_passes_on_its_size_and_hash() -> None:
    data = image()
    entry = CatalogEntry("CPE.nbt", len(data), hashlib.sha256(data).hexdigest())
    check_received(len(data), hashlib.sha256(data).hexdigest(), entry)


def test_a_missing_image_file_is_an_image_error(tmp_path: Path) -> None:
    entry = CatalogEntry("CPE.nbt", 1, "0" * 64)
    with pytest.raises(ImageError, match=r"cannot read CPE\.nbt"):
        check_image_file(tmp_path / "absent.nbt", entry)


def test_an_entry_the_catalog_lacks_is_named(signed: bytes) -> None:
    with pytest.raises(ImageError, match=r"does not list CPE\.bin"):
        parse_catalog(signed).entry("CPE.bin")


def test_every_firmware_error_is_one_family() -> None:
    for cls in (CatalogError, SignatureError, DeviceMismatchError, ImageError):
        assert issubclass(cls, FirmwareError)
        assert issubclass(cls, ValueError)
