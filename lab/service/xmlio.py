"""The XML the phones and the service exchange: pure functions, no I/O.

Everything that reads untrusted XML lives here and goes through expat with defusedxml's
refusals (DTDs, entity declarations and external references raise defusedxml's errors),
after a size check, so an entity-expansion bomb or a huge body is refused before any
parsing cost. What the phone sends is parsed into a frozen DeviceUpdateRequest; what the
service answers is built with ElementTree so every value is escaped, once per distinct
answer. The shapes follow docs/wire-protocol.md.

Every body is parsed on its own: nothing is remembered between requests here (real
phones each send their own MAC and serial, so a memory of bodies would only serve a
benchmark). What the check path derives from a request (its device kind, installed
version and the audit log's text of its modules) is computed once per parsed request.
"""

from __future__ import annotations

# Untrusted input is parsed by _parse_xml alone, which refuses what defusedxml refuses.
import re
import xml.etree.ElementTree as ET
import xml.parsers.expat as expat
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NoReturn

from defusedxml import (
    DefusedXmlException,
    DTDForbidden,
    EntitiesForbidden,
    ExternalReferenceForbidden,
)

from lab.errors import IdentityError, ServiceError
from lab.models import DeviceKind, check_kind, normalise_mac, normalise_serial, parse_version

MAX_REQUEST_BYTES = 64 * 1024
# Fields of the request that every phone must send, in document order.
REQUIRED_FIELDS = (
    "DeviceType",
    "Vendor",
    "Model",
    "Revision",
    "Locale",
    "MacAddress",
    "SerialNumber",
)
# The image module: its version is the version installed on the phone.
IMAGE_MODULE = "CPE.nbt"
# A MAC address already written as the lab writes it (normalise_mac would return it as is).
_CANONICAL_MAC = re.compile(r"[0-9A-F]{2}(?:-[0-9A-F]{2}){5}")
_CANONICAL_SERIAL = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,63}")


class XMLRequestError(ServiceError, ValueError):
    """A request body is not a valid DeviceUpdateRequest; ``code`` says which rule it broke."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Module:
    """One installed module the phone reports: name, version and timestamp."""

    name: str
    version: str
    timestamp: str = ""


@dataclass(frozen=True)
class DeviceUpdateRequest:
    """A phone's update check: its identity, installed modules and last signed-in user."""

    device_type: str
    vendor: str
    model: str
    revision: str
    locale: str
    mac: str
    serial: str
    modules: tuple[Module, ...]
    last_signed_in_user: str | None = None

    @cached_property
    def installed_version(self) -> str:
        """The version of the image module (the first module when no image is listed)."""
        for module in self.modules:
            if module.name.lower() == IMAGE_MODULE.lower():
                return module.version
        return self.modules[0].version

    @cached_property
    def kind(self) -> DeviceKind:
        """The device kind the request reports (not checked against the known models)."""
        return DeviceKind(self.device_type, self.vendor, self.model, self.revision, self.locale)

    @cached_property
    def checked_kind(self) -> DeviceKind | str:
        """The kind as the lab writes it (check_kind), or why it is no kind of the lab."""
        try:
            return check_kind(self.kind)
        except IdentityError as exc:
            return f"unknown device: {exc}"

    @cached_property
    def identity_normalised(self) -> bool:
        """Whether the MAC and serial are written as normalise_mac and normalise_serial would
        write them (always so for a parsed request)."""
        return bool(_CANONICAL_MAC.fullmatch(self.mac) and _CANONICAL_SERIAL.fullmatch(self.serial))

    @cached_property
    def installed_modules(self) -> str:
        """The modules as the audit log writes them: ``name:version`` separated by spaces."""
        return " ".join(f"{m.name}:{m.version}" for m in self.modules)

    @cached_property
    def audit_fields(self) -> tuple[str, str, str, str, str, str, str, str]:
        """What the audit record takes from the request, in its column order (device type
        to installed modules): made once per parsed request, which every check repeats."""
        return (
            self.device_type,
            self.mac,
            self.serial,
            self.vendor,
            self.model,
            self.revision,
            self.locale,
            self.installed_modules,
        )


@dataclass(frozen=True)
class Download:
    """One file of an update as the response lists it, with its internal and external URL."""

    module: str
    version: str
    size: int
    sha256: str
    base_url: str
    external_base_url: str | None  # None: no edge publishes the pool (left out)


def parse_update_request(body: bytes) -> DeviceUpdateRequest:
    """Parse and validate a DeviceUpdateRequest body; XMLRequestError says what is wrong."""
    if len(body) > MAX_REQUEST_BYTES:
        raise XMLRequestError(
            "too-large", f"the request body is {len(body)} bytes, over {MAX_REQUEST_BYTES}"
        )
    if not body.strip():
        raise XMLRequestError("empty", "the request body is empty; a DeviceUpdateRequest is needed")
    try:
        root = _parse_xml(body)
    except DefusedXmlException as exc:
        # DTDs and entities have no place in a phone's request; refusing them outright
        # is what stops expansion bombs and external references.
        raise XMLRequestError(
            "forbidden-xml", f"the request uses a forbidden XML feature: {exc}"
        ) from None
    except expat.ExpatError as exc:
        raise XMLRequestError(
            "malformed-xml", f"the request is not well-formed XML: {exc}"
        ) from None
    if root.tag != "DeviceUpdateRequest":
        # Namespaced names come from expat as "uri}name"; show them as ElementTree does.
        tag = "{" + root.tag if "}" in root.tag else root.tag
        raise XMLRequestError(
            "wrong-document", f"the root element is <{tag}>, not <DeviceUpdateRequest>"
        )
    values: dict[str, str] = {}
    for name in REQUIRED_FIELDS:
        element = root.find(name)
        text = (element.text or "").strip() if element is not None else ""
        if not text:
            raise XMLRequestError("missing-field", f"<{name}> is missing or empty")
        values[name] = text
    modules = tuple(_modules(root))
    user_element = root.find("LastSignedInUser")
    user = (user_element.text or "").strip() if user_element is not None else ""
    try:
        mac = values["MacAddress"]
        if not _CANONICAL_MAC.fullmatch(mac):
            mac = normalise_mac(mac)
        serial = normalise_serial(values["SerialNumber"])
    except IdentityError as exc:
        raise XMLRequestError("bad-identity", str(exc)) from None
    return DeviceUpdateRequest(
        device_type=values["DeviceType"],
        vendor=values["Vendor"],
        model=values["Model"],
        revision=values["Revision"],
        locale=values["Locale"],
        mac=mac,
        serial=serial,
        modules=modules,
        last_signed_in_user=user or None,
    )


def _parse_xml(body: bytes) -> ET.Element:
    """``body`` as an element tree; DTDs, entity declarations and external references raise.

    The same expat handlers as defusedxml's parser with ``forbid_dtd``, but the elements
    are made by ElementTree's C TreeBuilder called by expat directly: defusedxml's parser
    is ElementTree's pure-Python one, which cost more than the rest of a check together.
    """
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartDoctypeDeclHandler = _forbid_dtd
    parser.EntityDeclHandler = _forbid_entity
    parser.UnparsedEntityDeclHandler = _forbid_unparsed_entity
    parser.ExternalEntityRefHandler = _forbid_external_reference
    parser.buffer_text = True
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.Parse(body, True)
    return builder.close()


def _forbid_dtd(name: str, sysid: str | None, pubid: str | None, internal: bool) -> NoReturn:
    raise DTDForbidden(name, sysid, pubid)


def _forbid_entity(
    name: str,
    is_parameter_entity: bool,
    value: str | None,
    base: str | None,
    sysid: str | None,
    pubid: str | None,
    notation_name: str | None,
) -> NoReturn:
    raise EntitiesForbidden(name, value, base, sysid, pubid, notation_name)


def _forbid_unparsed_entity(
    name: str, base: str | None, sysid: str | None, pubid: str | None, notation_name: str | None
) -> NoReturn:
    raise EntitiesForbidden(name, None, base, sysid, pubid, notation_name)


def _forbid_external_reference(
    context: str, base: str | None, sysid: str | None, pubid: str | None
) -> NoReturn:
    raise ExternalReferenceForbidden(context, base, sysid, pubid)


def _modules(root: ET.Element) -> list[Module]:
    container = root.find("Modules")
    elements = container.findall("Module") if container is not None else []
    if not elements:
        raise XMLRequestError("missing-field", "<Modules> lists no <Module>")
    modules = []
    for element in elements:
        name = element.get("name", "").strip()
        version = element.get("version", "").strip()
        if not name or not version:
            raise XMLRequestError("missing-field", "a <Module> lacks its name or version")
        try:
            parse_version(version)
        except IdentityError as exc:
            raise XMLRequestError("bad-version", f"module {name!r}: {exc}") from None
        modules.append(Module(name, version, element.get("timestamp", "").strip()))
    return modules


def update_response(downloads: Sequence[Download]) -> bytes:
    """The DeviceUpdateResponse body: ``downloads="0"`` or one <Download> per file."""
    root = ET.Element("DeviceUpdateResponse", downloads=str(len(downloads)))
    for item in downloads:
        element = ET.SubElement(
            root,
            "Download",
            module=item.module,
            version=item.version,
            size=str(item.size),
            sha256=item.sha256,
        )
        ET.SubElement(element, "BaseURL").text = item.base_url
        if item.external_base_url is not None:
            ET.SubElement(element, "ExternalBaseURL").text = item.external_base_url
    return _document(root)


def provisioning_document(
    *,
    internal_url: str,
    external_url: str | None,
    user_uri: str,
    check_interval: int = 86400,
    enabled: bool = True,
) -> bytes:
    """The in-band provisioning group a signed-in phone keeps (docs/wire-protocol.md);
    without ``external_url`` (a pool no edge publishes) the property is left out."""
    root = ET.Element("provisionGroup", name="ServerConfiguration")
    entries = ET.SubElement(root, "propertyEntryList")
    external = () if external_url is None else (("updatesServerExternalUrl", external_url),)
    for name, value in (
        ("updatesServerInternalUrl", internal_url),
        *external,
        ("EnableDeviceUpdate", "true" if enabled else "false"),
        ("deviceUpdateCheckInterval", str(check_interval)),
        ("userUri", user_uri),
    ):
        ET.SubElement(entries, "property", name=name).text = value
    return _document(root)


def _document(root: ET.Element) -> bytes:
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document
