"""The signed catalog (``CPE.cat``) of docs/firmware-format.md: writing, parsing, verifying.

The format is strict on purpose, as a phone's parser would be: keys in a fixed order, one
``file:`` line per covered file, exactly one ``signature:`` line and nothing after it. The
signature covers the exact bytes of every line before the ``signature:`` line. Problems
raise CabError with the member name given by the caller.

The phones parse the same format with their own code (emulator/firmware.py), on purpose:
a real phone and a real server share a file format, not a library, and a catalog this
side writes wrongly must fail on the phone's side as it would in the field.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lab.errors import CabError, PKIError

MAGIC = "DEVICE-UPDATE-CATALOG 1"
HEADER_KEYS = ("vendor", "model", "revision", "locale", "version")
_FILE_LINE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*) (?P<size>0|[1-9]\d*) (?P<sha>[0-9a-f]{64})$"
)
_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


class Signer(Protocol):
    """A vendor's signing key (lab.net.pki.VendorSigner has this shape)."""

    def sign(self, data: bytes) -> bytes:
        """A DER ECDSA-SHA256 signature of ``data``."""
        ...


class Verifier(Protocol):
    """Checks a signature with a vendor certificate, raising PKIError when it does not verify."""

    def __call__(self, cert_pem: bytes, data: bytes, signature: bytes, /) -> None:
        """Raise PKIError unless ``signature`` over ``data`` verifies with ``cert_pem``."""
        ...


@dataclass(frozen=True)
class CatalogFile:
    """One ``file:`` line: a file name, its size in bytes and its SHA-256 (lower-case hex)."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Catalog:
    """A parsed catalog: what it says, the bytes it signs and the signature."""

    vendor: str
    model: str
    revision: str
    locale: str
    version: str
    files: tuple[CatalogFile, ...]
    signed: bytes
    signature: bytes

    def file(self, name: str) -> CatalogFile | None:
        """The ``file:`` line for ``name``, if any."""
        return next((f for f in self.files if f.name == name), None)


def catalog_body(
    vendor: str,
    model: str,
    revision: str,
    locale: str,
    version: str,
    files: Sequence[CatalogFile],
) -> bytes:
    """The signed part of a catalog: every line before ``signature:``."""
    lines = [MAGIC]
    values = (vendor, model, revision, locale, version)
    lines += [f"{key}: {value}" for key, value in zip(HEADER_KEYS, values, strict=True)]
    lines += [f"file: {f.name} {f.size} {f.sha256}" for f in files]
    return ("\n".join(lines) + "\n").encode("utf-8")


def sign_catalog(body: bytes, signer: Signer) -> bytes:
    """A whole catalog: ``body`` followed by its signature line."""
    signature = base64.b64encode(signer.sign(body)).decode("ascii")
    return body + f"signature: {signature}\n".encode("ascii")


def parse_catalog(data: bytes, member: str) -> Catalog:
    """Parse a catalog strictly; CabError naming ``member`` and the line that is wrong."""

    def bad(problem: str) -> CabError:
        return CabError(f"member {member}: not a valid catalog: {problem}")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    if "\r" in text:
        raise bad("line endings must be LF")
    if not text.endswith("\n"):
        raise bad("the last line must end with a newline")
    lines = text[:-1].split("\n")
    if lines[0] != MAGIC:
        raise bad(f"the first line must be {MAGIC!r}")
    values: list[str] = []
    for number, key in enumerate(HEADER_KEYS, start=2):
        line = lines[number - 1] if number - 1 < len(lines) else ""
        prefix = f"{key}: "
        if not line.startswith(prefix) or not _VALUE.match(line[len(prefix) :]):
            raise bad(f"line {number} must be '{key}: <value>'")
        values.append(line[len(prefix) :])
    files: list[CatalogFile] = []
    index = len(HEADER_KEYS) + 1
    while index < len(lines) and lines[index].startswith("file: "):
        match = _FILE_LINE.match(lines[index][len("file: ") :])
        if match is None:
            raise bad(f"line {index + 1} must be 'file: <name> <size> <sha256 lower-case hex>'")
        entry = CatalogFile(match["name"], int(match["size"]), match["sha"])
        if any(f.name == entry.name for f in files):
            raise bad(f"line {index + 1} names {entry.name} a second time")
        files.append(entry)
        index += 1
    if not files:
        raise bad("no 'file:' line")
    if index >= len(lines) or not lines[index].startswith("signature: "):
        raise bad(f"line {index + 1} must be the 'signature:' line")
    if index != len(lines) - 1:
        raise bad("text after the 'signature:' line")
    encoded = lines[index][len("signature: ") :]
    try:
        if not _BASE64.match(encoded):
            raise ValueError(encoded)
        signature = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise bad("the signature is not base64") from None
    signed = "".join(line + "\n" for line in lines[:index]).encode("utf-8")
    vendor, model, revision, locale, version = values
    return Catalog(vendor, model, revision, locale, version, tuple(files), signed, signature)


def verify_catalog(
    catalog: Catalog, vendor: str, cert_pem: bytes, verify: Verifier, member: str
) -> None:
    """Check the signature with ``vendor``'s certificate; CabError naming ``member``."""
    try:
        verify(cert_pem, catalog.signed, catalog.signature)
    except PKIError:
        raise CabError(
            f"member {member}: the catalog signature does not verify with the {vendor} "
            "vendor certificate (signed with another key, or altered after signing)"
        ) from None
