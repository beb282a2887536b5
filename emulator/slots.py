"""The phone's two image slots: the active image and the backup.

An update is written into the inactive slot, so the image the phone runs is never touched;
after the restart the slots swap roles and the previous image is the backup. A slot being
written when power is lost is left CORRUPT; an image that does not start is marked FAILED.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType


class SlotName(enum.Enum):
    """One of the phone's two image slots."""

    A = "A"
    B = "B"

    @property
    def other(self) -> SlotName:
        """The other slot."""
        return SlotName.B if self is SlotName.A else SlotName.A


class SlotStatus(enum.Enum):
    """What a slot holds."""

    EMPTY = "empty"
    VALID = "valid"
    WRITING = "being written"
    CORRUPT = "damaged"
    FAILED = "failed to start"


@dataclass(frozen=True)
class Slot:
    """The content of one slot: its status, the image version, and when it was written."""

    status: SlotStatus
    version: str | None = None
    written_at: float | None = None
    """Phone time the image was installed; None for the factory image."""

    @property
    def usable(self) -> bool:
        """Whether the phone can start this image."""
        return self.status is SlotStatus.VALID

    def describe(self) -> str:
        """The slot in words (``4.0.7577.4372``, ``empty``, ``4.0.7577.4372 (damaged)``)."""
        if self.version is None:
            return self.status.value
        if self.status is SlotStatus.VALID:
            return self.version
        return f"{self.version} ({self.status.value})"


class ImageSlots:
    """The two slots and which one runs: the only place slot contents change."""

    def __init__(self, factory_version: str) -> None:
        self._slots = {
            SlotName.A: Slot(SlotStatus.VALID, factory_version),
            SlotName.B: Slot(SlotStatus.EMPTY),
        }
        self.active = SlotName.A

    def __getitem__(self, slot: SlotName) -> Slot:
        return self._slots[slot]

    def snapshot(self) -> Mapping[SlotName, Slot]:
        """Both slots as they are now."""
        return MappingProxyType(dict(self._slots))

    @property
    def inactive(self) -> SlotName:
        """The slot updates are written to: the one not running."""
        return self.active.other

    @property
    def current_version(self) -> str:
        """The version of the active image."""
        version = self._slots[self.active].version
        assert version is not None  # the active slot always holds an image
        return version

    @property
    def backup_version(self) -> str | None:
        """The version in the inactive slot, when the phone could start it."""
        backup = self._slots[self.inactive]
        return backup.version if backup.usable else None

    def bootable(self) -> SlotName | None:
        """The slot to start at power-on: the active one, else the other, if usable."""
        for slot in (self.active, self.inactive):
            if self._slots[slot].usable:
                return slot
        return None

    def begin_write(self, version: str, now: float) -> SlotName:
        """Start writing ``version`` into the inactive slot (its old content is gone)."""
        self._slots[self.inactive] = Slot(SlotStatus.WRITING, version, now)
        return self.inactive

    def finish_write(self) -> SlotName:
        """The inactive slot now holds a complete image."""
        self._set(self.inactive, SlotStatus.VALID, SlotStatus.WRITING)
        return self.inactive

    def damage_write(self) -> Slot:
        """Power was lost while writing: the inactive slot is damaged."""
        return self._set(self.inactive, SlotStatus.CORRUPT, SlotStatus.WRITING)

    def mark_failed(self, slot: SlotName) -> Slot:
        """The image in ``slot`` did not start."""
        return self._set(slot, SlotStatus.FAILED, SlotStatus.VALID)

    def activate(self, slot: SlotName) -> None:
        """``slot`` started: it is the active image now, the other one the backup."""
        if not self._slots[slot].usable:
            raise AssertionError(f"slot {slot.value} cannot run {self._slots[slot].describe()}")
        self.active = slot

    def _set(self, slot: SlotName, status: SlotStatus, expected: SlotStatus) -> Slot:
        current = self._slots[slot]
        if current.status is not expected:
            raise AssertionError(
                f"slot {slot.value} is {current.status.value}, not {expected.value}"
            )
        self._slots[slot] = replace(current, status=status)
        return self._slots[slot]
