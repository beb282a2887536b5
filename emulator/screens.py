"""The phone's screens, rendered as text from its state (what a person at the phone reads).

System Information is the screen support staff ask users to read out: model, MAC address,
serial number, current and backup image versions, the date of the last update, the update
server and the signed-in user.
"""

from __future__ import annotations

from emulator.clock import to_datetime
from emulator.core import Phone

_WIDTH = 44


def system_information(phone: Phone) -> str:
    """The System Information screen of ``phone``."""
    identity = phone.identity
    last = phone.last_update
    rows = [
        ("Model", identity.display_name),
        ("MAC address", identity.mac),
        ("Serial number", identity.serial),
        ("Current version", phone.current_version),
        ("Backup version", phone.backup_version or "None"),
        ("Last update", "Never" if last is None else _date(last)),
        ("Update server", phone.update_server or "Not known yet"),
        ("Signed-in user", phone.signed_in_user or "Not signed in"),
    ]
    staged = phone.staged_version
    if staged is not None:
        rows.append(("Pending update", f"{staged} (restarts when idle)"))
    label_width = max(len(label) for label, _ in rows) + 1
    lines = ["System Information", "=" * _WIDTH]
    lines += [f"{label + ':':<{label_width}} {value}" for label, value in rows]
    return "\n".join(lines) + "\n"


def _date(t: float) -> str:
    return to_datetime(t).strftime("%Y-%m-%d %H:%M UTC")
