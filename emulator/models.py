"""The phone models the emulator can be: vendor, device kind, factory image, identity.

Every phone is one model and an index. The MAC address and serial number come from the
index alone, deterministically, in each vendor's own form: a fleet of N phones is the same
N phones on every run. MAC addresses use the vendor's real OUI; the low 24 bits hold the
model's number within its vendor (4 bits) and the index (20 bits), so two models of one
vendor never share a MAC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType

from emulator.errors import ModelError

DEVICE_TYPE = "UCPhone"
MAX_INDEX = 999_999
"""The largest phone index: every vendor's serial number holds six decimal digits."""

IMAGE_MODULE = "CPE.nbt"
CATALOG_MODULE = "CPE.cat"

FACTORY_TIMESTAMP = datetime(2012, 11, 2, 10, 0, tzinfo=UTC)
"""The build date every factory image reports in its update check."""


@dataclass(frozen=True)
class Vendor:
    """A phone vendor: its name, its IEEE OUI and how it writes serial numbers."""

    name: str
    oui: str
    serial_format: str
    """A str.format template over ``code`` (the model's code), ``revision`` and ``index``."""


VENDORS: Mapping[str, Vendor] = MappingProxyType(
    {
        "Polycom": Vendor("Polycom", "00-04-F2", "{code}{revision}{index:06d}"),
        "Aastra": Vendor("Aastra", "00-08-5D", "AA{code}{revision}{index:06d}"),
        # Real OUIs, so the MACs in a lab's audit log and inventory read like a real fleet's.
        "HP": Vendor("HP", "3C-D9-2B", "CN{code}{revision}{index:06d}"),
    }
)


@dataclass(frozen=True)
class PhoneModel:
    """One device kind: vendor, model, revision, locale, and its factory version."""

    vendor: Vendor
    name: str
    code: str
    """The short code of the model in its serial numbers (CX6 for the CX600)."""
    family: int
    """The model's number within its vendor (0-15), kept in the MAC address."""
    factory_version: str
    device_type: str = DEVICE_TYPE
    revision: str = "A"
    locale: str = "ENU"

    def __post_init__(self) -> None:
        if not 0 <= self.family <= 15:
            raise ModelError(f"model {self.name}: family must be between 0 and 15")

    def mac(self, index: int) -> str:
        """The MAC address of phone ``index`` of this model (``00-04-F2-00-00-01`` form)."""
        _check_index(index)
        low = (self.family << 20) | index
        octets = [f"{(low >> shift) & 0xFF:02X}" for shift in (16, 8, 0)]
        return "-".join([self.vendor.oui, *octets])

    def serial(self, index: int) -> str:
        """The serial number of phone ``index`` of this model, in its vendor's format."""
        _check_index(index)
        return self.vendor.serial_format.format(code=self.code, revision=self.revision, index=index)

    def identity(self, index: int) -> DeviceIdentity:
        """The identity of phone ``index`` of this model."""
        return DeviceIdentity(self, index, self.mac(index), self.serial(index))

    def layout(self, version: str) -> str:
        """The directory of a version's files in a file store (docs/firmware-format.md)."""
        parts = (self.device_type, self.vendor.name, self.name, self.revision, self.locale)
        return "/".join((*parts, version, "CPE"))


@dataclass(frozen=True)
class DeviceIdentity:
    """What a phone says about itself in every update check: model, MAC and serial number."""

    model: PhoneModel
    index: int
    mac: str
    serial: str

    @property
    def vendor(self) -> str:
        """The vendor's name (Polycom, Aastra, HP)."""
        return self.model.vendor.name

    @property
    def device_type(self) -> str:
        """The device type every Lync Phone Edition phone reports (UCPhone)."""
        return self.model.device_type

    @property
    def revision(self) -> str:
        """The hardware revision."""
        return self.model.revision

    @property
    def locale(self) -> str:
        """The locale of the image."""
        return self.model.locale

    @property
    def display_name(self) -> str:
        """Vendor and model, as the phone shows it (``Polycom CX600``)."""
        return f"{self.vendor} {self.model.name}"


def _check_index(index: int) -> None:
    if not 0 <= index <= MAX_INDEX:
        raise ModelError(f"phone index must be between 0 and {MAX_INDEX}, not {index}")


def _models() -> dict[str, PhoneModel]:
    polycom, aastra, hp = VENDORS["Polycom"], VENDORS["Aastra"], VENDORS["HP"]
    models = (
        PhoneModel(polycom, "CX500", "CX5", 1, "4.0.7577.4366"),
        PhoneModel(polycom, "CX600", "CX6", 0, "4.0.7577.4366"),
        PhoneModel(polycom, "CX3000", "CX3", 2, "4.0.7577.4366"),
        PhoneModel(polycom, "CX700", "CX7", 3, "4.0.7577.4363"),
        PhoneModel(aastra, "6721ip", "6721", 0, "4.0.7577.4366"),
        PhoneModel(aastra, "6725ip", "6725", 1, "4.0.7577.4366"),
        PhoneModel(hp, "HP4110", "4110", 0, "4.0.7577.4366"),
        PhoneModel(hp, "HP4120", "4120", 1, "4.0.7577.4366"),
    )
    return {model.name: model for model in models}


MODELS: Mapping[str, PhoneModel] = MappingProxyType(_models())


def get_model(name: str) -> PhoneModel:
    """The model called ``name`` (case does not matter); ModelError naming the known ones."""
    for model in MODELS.values():
        if model.name.lower() == name.lower():
            return model
    raise ModelError(f"unknown phone model {name!r}; known models: {', '.join(MODELS)}")
