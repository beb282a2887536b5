"""What a phone writes to and reads from the update service: pure functions over bytes.

The update-check request (DESIGN.md, "Update-check body"), the check's answer, the in-band
provisioning document, and the ``X-Ms-Diagnostics`` and ``Retry-After`` headers of error
answers (docs/wire-protocol.md). Answers are parsed with defusedxml and size-limited;
anything that is not what the protocol says raises MalformedAnswerError naming the problem.
"""

from __future__ import annotations

import http
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element, ParseError, SubElement, tostring

import defusedxml
import defusedxml.ElementTree

from emulator.errors import MalformedAnswerError
from emulator.models import IMAGE_MODULE, DeviceIdentity

ANSWER_LIMIT = 64 * 1024
"""The largest answer body a phone parses, in bytes."""

MIN_CHECK_INTERVAL = 60
"""The shortest update-check interval a phone accepts from provisioning, in seconds."""

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_REASON = re.compile(r'reason="((?:[^"\\]|\\.)*)"')
_DIGITS = re.compile(r"[0-9]+")


def build_update_request(
    identity: DeviceIdentity,
    version: str,
    *,
    timestamp: datetime,
    last_signed_in_user: str | None = None,
    module: str = IMAGE_MODULE,
) -> bytes:
    """The ``DeviceUpdateRequest`` body a phone posts: its identity and installed version."""
    root = Element("DeviceUpdateRequest")
    fields = (
        ("DeviceType", identity.device_type),
        ("Vendor", identity.vendor),
        ("Model", identity.model.name),
        ("Revision", identity.revision),
        ("Locale", identity.locale),
        ("MacAddress", identity.mac),
        ("SerialNumber", identity.serial),
    )
    for tag, text in fields:
        SubElement(root, tag).text = text
    modules = SubElement(root, "Modules")
    stamp = timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    SubElement(modules, "Module", name=module, version=version, timestamp=stamp)
    if last_signed_in_user:
        SubElement(root, "LastSignedInUser").text = last_signed_in_user
    return bytes(tostring(root, encoding="utf-8", xml_declaration=True))


@dataclass(frozen=True)
class DownloadOffer:
    """One file the service offers: module name, version, size, SHA-256 and its two URLs."""

    module: str
    version: str
    size: int
    sha256: str
    base_url: str | None
    external_base_url: str | None


@dataclass(frozen=True)
class UpdateAnswer:
    """A parsed ``DeviceUpdateResponse``: no download, or the files of one version."""

    downloads: tuple[DownloadOffer, ...]

    @property
    def version(self) -> str | None:
        """The version offered, or None when there is nothing for this phone."""
        return self.downloads[0].version if self.downloads else None

    def offer(self, module: str) -> DownloadOffer | None:
        """The offer for one module (``CPE.cat``, ``CPE.nbt``), if the answer has it."""
        return next((d for d in self.downloads if d.module == module), None)


def parse_update_response(body: bytes) -> UpdateAnswer:
    """Parse a ``DeviceUpdateResponse``; MalformedAnswerError when it breaks the protocol."""
    root = _parse(body, "DeviceUpdateResponse", "update check answer")
    declared = _integer(root.get("downloads"), "the downloads attribute")
    downloads = tuple(_offer(element) for element in root.findall("Download"))
    if declared != len(downloads):
        raise MalformedAnswerError(
            f"update check answer says downloads={declared} but holds {len(downloads)}"
        )
    if len({d.version for d in downloads}) > 1:
        raise MalformedAnswerError("update check answer mixes files of several versions")
    if len({d.module for d in downloads}) != len(downloads):
        raise MalformedAnswerError("update check answer offers one module twice")
    return UpdateAnswer(downloads)


@dataclass(frozen=True)
class Provisioning:
    """In-band provisioning a pool gives a signed-in phone: update URLs and check settings."""

    internal_url: str | None
    external_url: str | None
    enabled: bool = True
    check_interval: float | None = None
    user_uri: str | None = None


_PROVISIONING_KEYS = frozenset(
    {
        "updatesServerInternalUrl",
        "updatesServerExternalUrl",
        "EnableDeviceUpdate",
        "deviceUpdateCheckInterval",
        "userUri",
    }
)


def parse_provisioning(body: bytes) -> Provisioning:
    """Parse a ``provisionGroup`` document; MalformedAnswerError when it is not usable."""
    root = _parse(body, "provisionGroup", "provisioning document")
    values: dict[str, str] = {}
    for prop in root.iterfind("propertyEntryList/property"):
        name = prop.get("name") or ""
        if name in values:
            raise MalformedAnswerError(f"provisioning document sets {name} twice")
        if name in _PROVISIONING_KEYS:
            values[name] = (prop.text or "").strip()
    enabled_text = values.get("EnableDeviceUpdate", "true").lower()
    if enabled_text not in ("true", "false"):
        raise MalformedAnswerError(
            f"provisioning EnableDeviceUpdate must be true or false, not {enabled_text!r}"
        )
    interval: float | None = None
    if "deviceUpdateCheckInterval" in values:
        interval = _integer(values["deviceUpdateCheckInterval"], "deviceUpdateCheckInterval")
        if interval < MIN_CHECK_INTERVAL:
            raise MalformedAnswerError(
                f"provisioning deviceUpdateCheckInterval {interval} s is shorter than "
                f"the {MIN_CHECK_INTERVAL} s a phone accepts"
            )
    internal = _url(values.get("updatesServerInternalUrl"), "updatesServerInternalUrl")
    external = _url(values.get("updatesServerExternalUrl"), "updatesServerExternalUrl")
    if internal is None and external is None and enabled_text == "true":
        raise MalformedAnswerError("provisioning enables device update but gives no update URL")
    return Provisioning(
        internal_url=internal,
        external_url=external,
        enabled=enabled_text == "true",
        check_interval=interval,
        user_uri=values.get("userUri") or None,
    )


@dataclass(frozen=True)
class Diagnostics:
    """The service's own reason for an error answer, from ``X-Ms-Diagnostics``."""

    code: int | None
    reason: str


def parse_diagnostics(value: str | None) -> Diagnostics | None:
    """Read ``<code>;reason="<text>"``; a header in another shape is kept whole as the reason."""
    if not value or not value.strip():
        return None
    head, _, rest = value.partition(";")
    code = int(head) if _DIGITS.fullmatch(head.strip()) else None
    match = _REASON.search(rest)
    if code is None or match is None:
        return Diagnostics(code, value.strip())
    return Diagnostics(code, re.sub(r"\\(.)", r"\1", match.group(1)))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds, or an HTTP date and now)."""
    if value is None:
        return None
    text = value.strip()
    if _DIGITS.fullmatch(text):
        return float(text)
    if now is None:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())


def describe_status(status: int, diagnostics: Diagnostics | None = None) -> str:
    """An HTTP status in plain words, with the service's reason when it gave one."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "(unknown status)"
    text = f"HTTP {status} {phrase}"
    if diagnostics is not None:
        code = f" (diagnostic {diagnostics.code})" if diagnostics.code is not None else ""
        text += f": {diagnostics.reason}{code}"
    return text


def _parse(body: bytes, root_tag: str, what: str) -> Any:
    if len(body) > ANSWER_LIMIT:
        raise MalformedAnswerError(f"{what} is {len(body)} bytes, over the {ANSWER_LIMIT} limit")
    try:
        root = defusedxml.ElementTree.fromstring(body, forbid_dtd=True)
    except (ParseError, defusedxml.DefusedXmlException) as exc:
        raise MalformedAnswerError(f"{what} is not well-formed XML: {exc}") from None
    if root.tag != root_tag:
        raise MalformedAnswerError(f"{what} must be a <{root_tag}> document, not <{root.tag}>")
    return root


def _offer(element: Any) -> DownloadOffer:
    module = element.get("module") or ""
    if not _FILE_NAME.fullmatch(module):
        raise MalformedAnswerError(f"update check answer names a module {module!r}")
    version = element.get("version") or ""
    if not _FILE_NAME.fullmatch(version):
        raise MalformedAnswerError(f"update check answer gives {module} a version {version!r}")
    sha = element.get("sha256") or ""
    if not _SHA256.fullmatch(sha):
        raise MalformedAnswerError(f"update check answer gives {module} no valid sha256")
    base = _url(element.findtext("BaseURL"), f"{module} BaseURL")
    external = _url(element.findtext("ExternalBaseURL"), f"{module} ExternalBaseURL")
    if base is None and external is None:
        raise MalformedAnswerError(f"update check answer gives {module} no URL")
    size = _integer(element.get("size"), f"the size of {module}")
    return DownloadOffer(module, version, size, sha.lower(), base, external)


def _integer(text: str | None, what: str) -> int:
    value = (text or "").strip()
    if not _DIGITS.fullmatch(value):
        raise MalformedAnswerError(f"{what} must be a whole number, not {text!r}")
    return int(value)


def _url(text: str | None, what: str) -> str | None:
    if text is None or not text.strip():
        return None
    url = text.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise MalformedAnswerError(f"{what} is not a valid URL: {url!r}") from None
    if parts.scheme != "https" or not parts.hostname or port == 0:
        raise MalformedAnswerError(f"{what} must be an https URL with a host, not {url!r}")
    return url
