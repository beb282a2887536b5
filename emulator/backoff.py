"""Retry delays: exponential back-off with jitter drawn from the phone's own seeded random source.

Attempt n waits ``min(cap, base * factor**n)`` scaled by a factor drawn uniformly from
``[1 - jitter, 1 + jitter]``, so a fleet that failed together does not retry together, and
a run with the same seed retries at the same virtual times. With ``jitter < (factor - 1) /
(factor + 1)`` (1/3 for a factor of 2) every delay is longer than the one before, until the cap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from emulator.errors import SettingsError


@dataclass(frozen=True)
class BackoffPolicy:
    """How long a phone waits before retrying after failed attempt ``n`` (counting from 0)."""

    base: float = 30.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.factor >= 1 and self.cap >= self.base):
            raise SettingsError("back-off needs base > 0, factor >= 1 and cap >= base")
        if not 0 <= self.jitter < 1:
            raise SettingsError("back-off jitter must be at least 0 and below 1")

    def nominal(self, attempt: int) -> float:
        """The delay before jitter: exponential in the attempt, at most the cap."""
        if attempt < 0:
            raise SettingsError(f"attempt must not be negative, not {attempt}")
        # Compare exponents, not products, so a large attempt number cannot overflow.
        if attempt >= 64 or self.base * self.factor**attempt >= self.cap:
            return self.cap
        return float(self.base * self.factor**attempt)

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The shortest and longest delay attempt ``attempt`` can draw."""
        nominal = self.nominal(attempt)
        return nominal * (1 - self.jitter), nominal * (1 + self.jitter)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay for ``attempt``, jittered with a draw from ``rng``."""
        low, high = self.bounds(attempt)
        return rng.uniform(low, high)
