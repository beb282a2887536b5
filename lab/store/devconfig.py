"""The device-update configuration (Lync's Set-CsDeviceUpdateConfiguration) as one table.

Every setting keeps Lync's name and default; ``SETTINGS`` holds each one's allowed range,
and a value outside it is refused with that range in the message. Values are stored as
canonical text (what ``lab config show`` prints): byte counts as digits, time spans as
Lync writes a TimeSpan (``10.00:00:00``, ``00:05:00``), lists comma- or space-separated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lab.errors import SettingError

UINT32_MAX = 4_294_967_295
_DAY = 86_400


def _parse_bytes(low: int, high: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().replace("_", "").replace(",", "")
        if not value.isdigit():
            raise ValueError(f"{text!r} is not a whole number of bytes")
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range ({low}..{high} bytes)")
        return str(number)

    return parse


_SPAN = re.compile(r"^(?:(?P<days>\d{1,4})\.)?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2})$")
_SPAN_DAYS = re.compile(r"^(?P<days>\d{1,4})\.$")
_SPAN_UNIT = re.compile(r"^(?P<n>\d{1,7})(?P<unit>[smhd])$")


def span_seconds(text: str) -> int:
    """A TimeSpan as Lync writes it (``10.00:00:00``, ``00:05:00``, ``14.``) or ``5m``/``10d``."""
    value = text.strip()
    if match := _SPAN.match(value):
        hours, minutes, seconds = int(match["h"]), int(match["m"]), int(match["s"])
        if hours > 23 or minutes > 59 or seconds > 59:
            raise ValueError(f"{text!r} is not a time span (hh:mm:ss with hh < 24)")
        return int(match["days"] or 0) * _DAY + hours * 3600 + minutes * 60 + seconds
    if match := _SPAN_DAYS.match(value):
        return int(match["days"]) * _DAY
    if match := _SPAN_UNIT.match(value):
        return int(match["n"]) * {"s": 1, "m": 60, "h": 3600, "d": _DAY}[match["unit"]]
    raise ValueError(f"{text!r} is not a time span (d.hh:mm:ss, hh:mm:ss, or 10d, 5m)")


def format_span(seconds: int) -> str:
    """``seconds`` as Lync shows a TimeSpan: ``10.00:00:00`` or ``00:05:00``."""
    days, rest = divmod(seconds, _DAY)
    hours, rest = divmod(rest, 3600)
    clock = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}.{clock}" if days else clock


def _parse_span(low: int, high: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        seconds = span_seconds(text)
        if not low <= seconds <= high:
            allowed = f"{format_span(low)} to {format_span(high)}"
            raise ValueError(f"{format_span(seconds)} is out of range ({allowed})")
        return format_span(seconds)

    return parse


def _parse_list(
    item: re.Pattern[str], what: str, low: int, high: int, separator: str, fold: bool
) -> Callable[[str], str]:
    def parse(text: str) -> str:
        items = [i for i in re.split(r"[\s,;]+", text.strip()) if i]
        for entry in items:
            if not item.match(entry):
                raise ValueError(f"{entry!r} is not {what}")
        if fold:
            items = [i.lower() for i in items]
        items = list(dict.fromkeys(items))
        if not low <= len(items) <= high:
            raise ValueError(f"{len(items)} entries is out of range ({low}..{high})")
        return separator.join(items)

    return parse


def _parse_time_of_day(text: str) -> str:
    value = text.strip()
    if not value:
        return ""
    match = re.match(r"^(\d{1,2}):(\d{2})$", value)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"{text!r} is not a time of day (hh:mm, 00:00 to 23:59, or empty)")
    return f"{int(match[1]):02d}:{match[2]}"


@dataclass(frozen=True)
class Setting:
    """One device-update setting: its Set-CsDeviceUpdateConfiguration name, default, range."""

    name: str
    default: str
    allowed: str
    description: str
    parse: Callable[[str], str] = field(repr=False)


# The one table of settings, names as in Set-CsDeviceUpdateConfiguration. Documented ranges:
# LogCleanUpInterval 1 to 365 days, LogFlushInterval 1 minute to 1 hour. The byte limits
# are UInt32 there; the lab asks for at least 1 KiB so a phone's log always fits.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "MaxLogFileSize",
        "1024000",
        "1024..4294967295 bytes",
        "largest device log file accepted, in bytes",
        _parse_bytes(1024, UINT32_MAX),
    ),
    Setting(
        "MaxLogCacheLimit",
        "512000",
        "1024..4294967295 bytes",
        "log data held in memory before it is written, in bytes",
        _parse_bytes(1024, UINT32_MAX),
    ),
    Setting(
        "ValidLogFileTypes",
        "Watson,CELog",
        "1..32 type names",
        "log types phones may upload",
        _parse_list(
            re.compile(r"^[A-Za-z][A-Za-z0-9]{0,31}$"), "a log type name", 1, 32, ",", fold=False
        ),
    ),
    Setting(
        "ValidLogFileExtensions",
        ".dmp .clg .clg2 .bak .kdmp .dat .bin .cat .xml .txt .hex",
        "1..64 extensions like .clg",
        "file extensions phones may upload",
        _parse_list(
            re.compile(r"^\.[A-Za-z0-9]{1,16}$"), "an extension like .clg", 1, 64, " ", fold=True
        ),
    ),
    Setting(
        "LogCleanUpInterval",
        "10.00:00:00",
        "1.00:00:00 to 365.00:00:00",
        "how long device logs are kept",
        _parse_span(_DAY, 365 * _DAY),
    ),
    Setting(
        "LogFlushInterval",
        "00:05:00",
        "00:01:00 to 01:00:00",
        "how often cached log data is written",
        _parse_span(60, 3600),
    ),
    Setting(
        "LogCleanUpTimeOfDay",
        "",
        "hh:mm or empty",
        "when expired logs are deleted (empty: not set)",
        _parse_time_of_day,
    ),
)
_SETTINGS = {s.name.casefold(): s for s in SETTINGS}


def setting(name: str) -> Setting:
    """The setting called ``name`` (case-insensitive); SettingError naming the known ones."""
    try:
        return _SETTINGS[name.strip().casefold()]
    except KeyError:
        known = ", ".join(s.name for s in SETTINGS)
        raise SettingError(f"{name!r} is not a device-update setting (known: {known})") from None


def check_setting(name: str, text: str) -> tuple[Setting, str]:
    """The setting and the canonical form of ``text``; SettingError with the range if not."""
    entry = setting(name)
    if text.strip().casefold() == "default":
        return entry, entry.default
    try:
        return entry, entry.parse(text)
    except ValueError as exc:
        raise SettingError(f"{entry.name}: {exc}") from None


# Lync's default ValidLogFileExtensions.
_DEFAULT_EXTENSIONS = (
    ".dmp", ".clg", ".clg2", ".bak", ".kdmp", ".dat", ".bin", ".cat", ".xml", ".txt", ".hex",
)  # fmt: skip


@dataclass(frozen=True)
class DeviceUpdateConfig:
    """The device-update configuration in force (Lync's defaults unless set)."""

    max_log_file_size: int = 1_024_000
    max_log_cache_limit: int = 512_000
    valid_log_file_types: tuple[str, ...] = ("Watson", "CELog")
    valid_log_file_extensions: tuple[str, ...] = _DEFAULT_EXTENSIONS
    log_cleanup_interval: int = 10 * _DAY
    log_flush_interval: int = 300
    log_cleanup_time_of_day: str | None = None

    @classmethod
    def from_texts(cls, texts: Mapping[str, str]) -> DeviceUpdateConfig:
        """Build from canonical texts by setting name; missing settings take their default."""
        value = {s.name: texts.get(s.name, s.default) for s in SETTINGS}
        return cls(
            max_log_file_size=int(value["MaxLogFileSize"]),
            max_log_cache_limit=int(value["MaxLogCacheLimit"]),
            valid_log_file_types=tuple(value["ValidLogFileTypes"].split(",")),
            valid_log_file_extensions=tuple(value["ValidLogFileExtensions"].split()),
            log_cleanup_interval=span_seconds(value["LogCleanUpInterval"]),
            log_flush_interval=span_seconds(value["LogFlushInterval"]),
            log_cleanup_time_of_day=value["LogCleanUpTimeOfDay"] or None,
        )

    def texts(self) -> dict[str, str]:
        """Canonical text of every setting, by name."""
        return {
            "MaxLogFileSize": str(self.max_log_file_size),
            "MaxLogCacheLimit": str(self.max_log_cache_limit),
            "ValidLogFileTypes": ",".join(self.valid_log_file_types),
            "ValidLogFileExtensions": " ".join(self.valid_log_file_extensions),
            "LogCleanUpInterval": format_span(self.log_cleanup_interval),
            "LogFlushInterval": format_span(self.log_flush_interval),
            "LogCleanUpTimeOfDay": self.log_cleanup_time_of_day or "",
        }

    def accepts_log_type(self, log_type: str) -> bool:
        """Whether phones may upload logs of ``log_type`` (case-insensitive)."""
        return log_type.casefold() in {t.casefold() for t in self.valid_log_file_types}

    def accepts_log_file(self, file_name: str) -> bool:
        """Whether ``file_name``'s extension is one phones may upload (case-insensitive)."""
        _, dot, extension = file_name.rpartition(".")
        return bool(dot) and f".{extension.lower()}" in self.valid_log_file_extensions
