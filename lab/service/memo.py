"""Memos keyed by an object's identity: what was worked out for a request a phone repeats.

A phone repeats its check, and the parser hands back the same parsed request for the same
body (lab.service.xmlio), so what was made for it (a decision, an answer, a sighting, an
audit repeat) is found again by the request itself. An entry is kept under ``id(owner)``
and holds its owner (or is checked against it), so an id reused after the owner is gone
cannot match. A full memo is cleared rather than trimmed: a fleet's few kinds of request
fill it again at once.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def remember(memo: dict[int, T], owner: object, entry: T, limit: int) -> None:
    """Keep ``entry`` in ``memo`` under ``owner``'s id, ``limit`` entries at most."""
    if len(memo) >= limit:
        memo.clear()
    memo[id(owner)] = entry
