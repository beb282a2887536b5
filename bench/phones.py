"""The phones of the check benchmark: thousands of distinct phones, each sending its own check.

Rules of this module:
- Phone ``i`` is always the same phone: the mix is computed, never drawn at random, so two
  runs (and the lab and its baselines) see the same requests in the same order.
- Every phone has its own MAC address (its vendor's OUI, then three bytes of its number)
  and its own serial number (a prefix per model, then its number), so no two bodies are
  alike; a real fleet never sends one body twice in a row either.
- The models go round in ``MIX`` order; every ``CURRENT_EVERY``-th phone already runs the
  approved version (``current``: answered ``downloads="0"``), the others one version
  before it (``behind``: answered with the catalog and the image). As 4 and 3 have no
  common factor, every model has phones of both kinds. Every ``SIGNED_OUT_EVERY``-th phone
  has had no user signed in yet and leaves ``LastSignedInUser`` out.
- ``check_answers`` judges the lab's answers from its audit log, line by line: what each
  phone was given must be what its version calls for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.rig import APPROVED, INSTALLED, check_request
from lab.models import phone_model

MIX = ("CX600", "CX3000", "HP4120", "6725ip")
PHONES = 10_000
CURRENT_EVERY = 3
SIGNED_OUT_EVERY = 5
# The vendors' own prefixes, and a fourth byte of 0x10 and up so that no phone of the mix
# shares a MAC with the one phone of the same-body check (bench.rig.MAC).
_OUI = {"Polycom": "00-04-F2", "Aastra": "00-08-5D", "HP": "00-1B-78"}
_MAC_BASE = 0x100000
_SERIAL_PREFIX = {"CX600": "CX6A", "CX3000": "CX3A", "HP4120": "HP4A", "6725ip": "A67A"}


@dataclass(frozen=True)
class Phone:
    """One phone of the mix: what it reports in its check."""

    model: str
    mac: str
    serial: str
    installed: str
    user: str | None

    @property
    def behind(self) -> bool:
        """Whether it runs a version before the approved one (and is offered the update)."""
        return self.installed != APPROVED

    @property
    def body(self) -> bytes:
        """Its update check, as it sends it."""
        return check_request(
            model=self.model,
            mac=self.mac,
            serial=self.serial,
            installed=self.installed,
            user=self.user,
        )


def phone(index: int, models: Sequence[str] = MIX) -> Phone:
    """Phone number ``index`` of the mix (0 and up)."""
    model = models[index % len(models)]
    number = _MAC_BASE + index
    if number > 0xFFFFFF:
        raise ValueError(f"phone {index} is past the last MAC address of the scheme")
    tail = "-".join(f"{(number >> shift) & 0xFF:02X}" for shift in (16, 8, 0))
    return Phone(
        model=model,
        mac=f"{_OUI[phone_model(model).vendor]}-{tail}",
        serial=f"{_SERIAL_PREFIX.get(model, 'LAB')}{index:07d}",
        installed=APPROVED if index % CURRENT_EVERY == 0 else INSTALLED,
        user=None if index % SIGNED_OUT_EVERY == 0 else f"user{index:05d}@contoso.test",
    )


def fleet(count: int = PHONES, models: Sequence[str] = MIX) -> list[Phone]:
    """Phones 0 to ``count - 1`` of the mix."""
    return [phone(index, models) for index in range(count)]


def write_bodies(path: Path, phones: Iterable[Phone]) -> int:
    """Write one check body per line (bodies hold no line break), for the load client to
    read; how many were written."""
    bodies = [p.body for p in phones]
    if any(b"\n" in body for body in bodies):
        raise ValueError("a check body holds a line break")
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return len(bodies)


@dataclass(frozen=True)
class Answers:
    """What the lab's audit log says it answered the mix's phones."""

    behind: int  # checks answered with the approved version's files
    current: int  # checks answered downloads="0"
    phones: int  # distinct phones seen

    @property
    def checks(self) -> int:
        """Checks of the mix's phones, both kinds."""
        return self.behind + self.current


def check_answers(records: Iterable[dict[str, str]], phones: Sequence[Phone]) -> Answers:
    """Count the audit lines of the mix's phones; RuntimeError at the first line whose
    answer is not the one the phone's version calls for (a status other than 200, files
    offered to a current phone, not the approved version's to one behind)."""
    by_mac = {p.mac: p for p in phones}
    kinds: Counter[bool] = Counter()
    seen: set[str] = set()
    for record in records:
        found = by_mac.get(record["mac"])
        if found is None:
            continue  # not a phone of the mix (the one-body check, the first answer)
        offered = bool(record["modules_returned"]) and record["decision"] == APPROVED
        if record["status"] != "200" or offered != found.behind:
            raise RuntimeError(
                f"the lab answered {found.model} {found.mac} ({found.installed}) with status "
                f"{record['status']}, modules {record['modules_returned']!r}, decision "
                f"{record['decision']!r}"
            )
        kinds[found.behind] += 1
        seen.add(found.mac)
    return Answers(behind=kinds[True], current=kinds[False], phones=len(seen))
