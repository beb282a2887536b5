"""Firmware checks a phone makes before it installs anything: pure functions of their input.

The order is the phone's: parse the catalog (docs/firmware-format.md), verify its
ECDSA-SHA256 signature with the one vendor certificate the phone trusts, check that it is
for this device (vendor, model, revision, locale, and the version the service offered),
then check the image's size and SHA-256 against the catalog's ``file:`` line. Each failure
raises one FirmwareError subclass whose message a support engineer can read as is.

The lab writes and checks the same catalog format with its own code (lab/store/catalog.py),
on purpose: the phones never import the lab, as a real phone shares a file format with its
server, not a library, so a catalog the lab writes wrongly fails here as it would in the
field.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.errors import (
    CatalogError,
    DeviceMismatchError,
    ImageAlteredError,
    ImageError,
    SignatureError,
    VendorCertificateError,
)

MAGIC = "DEVICE-UPDATE-CATALOG 1"
HEADER_KEYS = ("vendor", "model", "revision", "locale", "version")
_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FILE = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*) (?P<size>0|[1-9][0-9]*) (?P<sha>[0-9a-f]{64})"
)
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CatalogEntry:
    """One ``file:`` line of a catalog: file name, size in bytes, SHA-256 in lower-case hex."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Catalog:
    """A parsed catalog: what it says, the exact bytes its signature covers, the signature."""

    vendor: str
    model: str
    revision: str
    locale: str
    version: str
    files: tuple[CatalogEntry, ...]
    signed: bytes
    signature: bytes

    def entry(self, name: str) -> CatalogEntry:
        """The ``file:`` line for ``name``; ImageError when the catalog does not cover it."""
        for entry in self.files:
            if entry.name == name:
                return entry
        raise ImageError(f"the catalog of {self.model} {self.version} does not list {name}")


def parse_catalog(data: bytes) -> Catalog:
    """Parse a catalog strictly; CatalogError names the line that is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CatalogError("the catalog is not UTF-8 text") from None
    if "\r" in text:
        raise CatalogError("the catalog must use LF line endings")
    if not text.endswith("\n"):
        raise CatalogError("the catalog's last line does not end with a newline")
    lines = text[:-1].split("\n")
    if lines[0] != MAGIC:
        raise CatalogError(f"line 1 of the catalog must be {MAGIC!r}")
    values: list[str] = []
    for number, key in enumerate(HEADER_KEYS, start=2):
        line = lines[number - 1] if number <= len(lines) else ""
        key_, sep, value = line.partition(": ")
        if key_ != key or not sep or not _VALUE.fullmatch(value):
            raise CatalogError(f"line {number} of the catalog must be '{key}: <value>'")
        values.append(value)
    files: list[CatalogEntry] = []
    index = len(HEADER_KEYS) + 1
    while index < len(lines) and lines[index].startswith("file: "):
        match = _FILE.fullmatch(lines[index].removeprefix("file: "))
        if match is None:
            raise CatalogError(
                f"line {index + 1} of the catalog must be 'file: <name> <size> <sha256>'"
            )
        if any(f.name == match["name"] for f in files):
            raise CatalogError(f"line {index + 1} of the catalog lists {match['name']} again")
        files.append(CatalogEntry(match["name"], int(match["size"]), match["sha"]))
        index += 1
    if not files:
        raise CatalogError("the catalog lists no file")
    if index >= len(lines) or not lines[index].startswith("signature: "):
        raise CatalogError(f"line {index + 1} of the catalog must be the 'signature:' line")
    if index != len(lines) - 1:
        raise CatalogError("the catalog has text after its 'signature:' line")
    encoded = lines[index].removeprefix("signature: ")
    try:
        if not _BASE64.fullmatch(encoded):
            raise ValueError(encoded)
        signature = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise CatalogError("the catalog's signature is not base64") from None
    signed = "".join(line + "\n" for line in lines[:index]).encode("utf-8")
    vendor, model, revision, locale, version = values
    return Catalog(vendor, model, revision, locale, version, tuple(files), signed, signature)


@functools.lru_cache(maxsize=32)
def load_vendor_key(cert_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The ECDSA P-256 public key of a vendor certificate; VendorCertificateError otherwise.

    Kept for the few certificates a fleet trusts: every phone checks every catalog.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise VendorCertificateError("the vendor certificate is not a PEM certificate") from None
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        subject = cert.subject.rfc4514_string()
        raise VendorCertificateError(
            f"the vendor certificate {subject} does not hold an ECDSA P-256 key"
        )
    return key


def verify_catalog_signature(catalog: Catalog, cert_pem: bytes) -> None:
    """SignatureError unless the catalog's signature verifies with the vendor certificate."""
    key = load_vendor_key(cert_pem)
    try:
        key.verify(catalog.signature, catalog.signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError(
            f"the catalog of {catalog.vendor} {catalog.model} {catalog.version} is not signed "
            "by the vendor key this phone trusts (altered, or signed by another key)"
        ) from None


def check_catalog_device(
    catalog: Catalog,
    *,
    vendor: str,
    model: str,
    revision: str,
    locale: str,
    version: str | None = None,
) -> None:
    """DeviceMismatchError unless the catalog is for this device (and version, when given)."""
    expected = {"vendor": vendor, "model": model, "revision": revision, "locale": locale}
    if version is not None:
        expected["version"] = version
    for key, want in expected.items():
        got = getattr(catalog, key)
        if got != want:
            raise DeviceMismatchError(
                f"the catalog is for {key} {got!r}, but this phone needs {key} {want!r}"
            )


@functools.lru_cache(maxsize=256)
def verify_catalog(
    data: bytes,
    cert_pem: bytes,
    *,
    vendor: str,
    model: str,
    revision: str,
    locale: str,
    version: str | None = None,
) -> Catalog:
    """Parse, verify the signature of and check the device of a catalog, in that order.

    A pure function of its arguments, so an answer is kept for the next phone asking with
    the same bytes, certificate and device (a fleet downloads a few catalogs thousands of
    times; each check is an ECDSA verification). Only answers are kept: what fails, fails
    again each time, with the same error.
    """
    catalog = parse_catalog(data)
    verify_catalog_signature(catalog, cert_pem)
    check_catalog_device(
        catalog, vendor=vendor, model=model, revision=revision, locale=locale, version=version
    )
    return catalog


def check_image(image: bytes | BinaryIO, entry: CatalogEntry) -> None:
    """ImageError unless the image (bytes or a binary stream) has the entry's size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    if isinstance(image, bytes):
        digest.update(image)
        size = len(image)
    else:
        # Streamed in chunks so a large image is never held in memory; stop as soon as it
        # is longer than the catalog allows.
        while chunk := image.read(_CHUNK):
            size += len(chunk)
            if size > entry.size:
                break
            digest.update(chunk)
    check_received(size, digest.hexdigest(), entry)


def check_received(size: int, sha256: str, entry: CatalogEntry) -> None:
    """ImageError unless an image of ``size`` bytes hashing to ``sha256`` (hex) is the one
    the catalog entry lists (what check_image says of the image itself)."""
    if size != entry.size:
        relation = "more than" if size > entry.size else f"{size} bytes, not"
        raise ImageError(
            f"{entry.name} is {relation} the {entry.size} bytes its catalog lists "
            "(incomplete or altered download)"
        )
    if sha256 != entry.sha256:
        raise ImageAlteredError(
            f"{entry.name} has SHA-256 {sha256}, but its catalog lists {entry.sha256} "
            "(altered or corrupt image)"
        )


def check_image_file(path: Path, entry: CatalogEntry) -> None:
    """`check_image` over a file, read in chunks; ImageError also when it cannot be read."""
    try:
        with path.open("rb") as stream:
            check_image(stream, entry)
    except OSError as exc:
        raise ImageError(f"cannot read {entry.name} at {path}: {exc.strerror}") from None
