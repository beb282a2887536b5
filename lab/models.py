"""The phones the lab knows and how a phone is named: device kind, version, MAC, serial.

Everything that decides whether two names mean the same device lives here: a device kind
(device type, vendor, model, revision, locale) matches case-insensitively, versions compare
as four numbers (``4.0.7577.4366``), MAC addresses are normalised to ``00-04-F2-00-00-01``
and serial numbers are trimmed and upper-cased. Malformed input raises IdentityError with
the offending text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from lab.errors import IdentityError

DEVICE_TYPE = "UCPhone"
DEFAULT_REVISION = "A"
DEFAULT_LOCALE = "ENU"
VENDORS = ("Polycom", "Aastra", "HP")

# A revision or locale as it appears in a path of the file store.
_TAG = re.compile(r"^[A-Za-z0-9]{1,8}$")
_VERSION = re.compile(r"^\d{1,5}(\.\d{1,5}){3}$")
_MAC_BARE = re.compile(r"^[0-9A-Fa-f]{12}$")
_MAC_SEPARATED = re.compile(r"^[0-9A-Fa-f]{2}([-:])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")
_SERIAL = re.compile(r"^[A-Z0-9][A-Z0-9._-]{0,63}$")

Version = tuple[int, int, int, int]
KindKey = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class DeviceKind:
    """What an update rule is for: device type, vendor, model, revision and locale."""

    device_type: str
    vendor: str
    model: str
    revision: str
    locale: str

    @property
    def key(self) -> KindKey:
        """The case-insensitive identity of the kind, for lookups."""
        return (
            self.device_type.casefold(),
            self.vendor.casefold(),
            self.model.casefold(),
            self.revision.casefold(),
            self.locale.casefold(),
        )

    @property
    def path(self) -> PurePosixPath:
        """``UCPhone/<Vendor>/<Model>/<Revision>/<Locale>``: the kind's folder in a file store."""
        return PurePosixPath(self.device_type, self.vendor, self.model, self.revision, self.locale)

    def __str__(self) -> str:
        return str(self.path)

    def __hash__(self) -> int:
        # A key of the check path's dictionaries on every update check: hashed once.
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.device_type, self.vendor, self.model, self.revision, self.locale))
            object.__setattr__(self, "_hash", cached)
        return cached


@dataclass(frozen=True)
class PhoneModel:
    """A phone model of the lab: its vendor and the kind it reports by default."""

    name: str
    vendor: str
    device_type: str = DEVICE_TYPE
    revision: str = DEFAULT_REVISION
    locale: str = DEFAULT_LOCALE

    def kind(self, revision: str | None = None, locale: str | None = None) -> DeviceKind:
        """The device kind of this model (its default revision and locale unless given)."""
        return DeviceKind(
            self.device_type,
            self.vendor,
            self.name,
            revision or self.revision,
            locale or self.locale,
        )


PHONE_MODELS: tuple[PhoneModel, ...] = (
    PhoneModel("CX500", "Polycom"),
    PhoneModel("CX600", "Polycom"),
    PhoneModel("CX3000", "Polycom"),
    PhoneModel("CX700", "Polycom"),
    PhoneModel("6721ip", "Aastra"),
    PhoneModel("6725ip", "Aastra"),
    PhoneModel("HP4110", "HP"),
    PhoneModel("HP4120", "HP"),
)
MODEL_NAMES: tuple[str, ...] = tuple(m.name for m in PHONE_MODELS)
_BY_NAME = {m.name.casefold(): m for m in PHONE_MODELS}


def phone_model(name: str) -> PhoneModel:
    """The model called ``name`` (case-insensitive); IdentityError naming the known ones."""
    try:
        return _BY_NAME[name.strip().casefold()]
    except KeyError:
        raise IdentityError(
            f"{name!r} is not a phone model of the lab (known: {', '.join(MODEL_NAMES)})"
        ) from None


def check_kind(kind: DeviceKind) -> DeviceKind:
    """The kind as the lab writes it, if it names a known model of its vendor (any case)
    with a sane revision and locale; IdentityError saying what is wrong otherwise."""
    if kind.device_type.casefold() != DEVICE_TYPE.casefold():
        raise IdentityError(f"device type {kind.device_type!r} is not {DEVICE_TYPE!r}")
    model = _BY_NAME.get(kind.model.casefold())
    if model is None:
        raise IdentityError(f"{kind.model!r} is not a phone model of the lab")
    if model.vendor.casefold() != kind.vendor.casefold():
        raise IdentityError(f"model {model.name} is made by {model.vendor}, not {kind.vendor!r}")
    for what, value in (("revision", kind.revision), ("locale", kind.locale)):
        if not _TAG.match(value):
            raise IdentityError(f"{what} {value!r} is not 1-8 letters or digits")
    return DeviceKind(DEVICE_TYPE, model.vendor, model.name, kind.revision, kind.locale)


def parse_version(text: str) -> Version:
    """``4.0.7577.4366`` as four numbers (each 0-65535); IdentityError otherwise."""
    if not _VERSION.match(text):
        raise IdentityError(f"{text!r} is not a version like 4.0.7577.4366")
    parts = tuple(int(p) for p in text.split("."))
    if any(p > 0xFFFF for p in parts):
        raise IdentityError(f"{text!r} has a part above 65535")
    return parts[0], parts[1], parts[2], parts[3]


def canonical_version(text: str) -> str:
    """The version written without leading zeros, as the lab stores and serves it."""
    return ".".join(str(p) for p in parse_version(text))


def same_version(a: str, b: str) -> bool:
    """Whether two version strings name the same version (a malformed one compares as text)."""
    if a == b:
        return True
    try:
        return parse_version(a) == parse_version(b)
    except IdentityError:
        return False


def normalise_mac(text: str) -> str:
    """Twelve hex digits, bare or separated by ``-`` or ``:``, as ``00-04-F2-00-00-01``."""
    value = text.strip()
    if _MAC_BARE.match(value):
        digits = value
    elif _MAC_SEPARATED.match(value):
        digits = value.replace("-", "").replace(":", "")
    else:
        raise IdentityError(
            f"{text!r} is not a MAC address (twelve hex digits, bare or separated by - or :)"
        )
    digits = digits.upper()
    return "-".join(digits[i : i + 2] for i in range(0, 12, 2))


def normalise_serial(text: str) -> str:
    """A serial number trimmed and upper-cased; letters, digits, ``.``, ``_`` and ``-``."""
    value = text.strip().upper()
    if not _SERIAL.match(value):
        raise IdentityError(
            f"{text!r} is not a serial number (1-64 letters, digits, '.', '_' or '-')"
        )
    return value
