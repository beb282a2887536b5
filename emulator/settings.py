"""How long a phone's steps take and how often it checks and retries, in phone-time seconds.

The defaults are the real phone's where it has one (a check every 24 hours, a restart after
five minutes without a call or use); boot and flash times are plausible round numbers. A
run scales them all at once through its clock rather than by changing them here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from emulator.backoff import BackoffPolicy
from emulator.errors import SettingsError


@dataclass(frozen=True)
class PhoneSettings:
    """Intervals, waits and retry policy of one phone."""

    check_interval: float = 86_400.0
    """Seconds between update checks, unless in-band provisioning says otherwise."""
    idle_wait: float = 300.0
    """Seconds without a call or use before a staged update restarts the phone."""
    boot_time: float = 60.0
    flash_time: float = 30.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    max_retries: int = 5
    """Back-offs in a row before the phone gives up until its next scheduled check."""

    def __post_init__(self) -> None:
        for name in ("check_interval", "idle_wait", "boot_time", "flash_time"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SettingsError(f"phone setting {name} must be a time in seconds, not {value}")
        if self.check_interval <= 0:
            raise SettingsError("phone setting check_interval must be more than 0 seconds")
        if self.max_retries < 0:
            raise SettingsError("phone setting max_retries must not be negative")
