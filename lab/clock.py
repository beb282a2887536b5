"""The service's wall clock: what every part of a lab asks unless a test injects another.

One function for the whole lab (store, PKI, service, logs): a part takes ``now`` as a
parameter defaulting to ``utc_now``, so a test or a scaled lab clock can replace it.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)
