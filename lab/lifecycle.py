"""What every long-running lab part shares: ``start``, ``stop`` and use as ``async with``.

As aiohttp's runners and sites do: setup apart from serving, a part either starts whole or
raises, and ``stop`` is safe to call after a failed start.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Service:
    """A lab part that starts, serves until stopped, and stops cleanly."""

    async def start(self) -> None:
        """Bind and begin serving; raise (leaving nothing bound) when that fails."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop serving and release what ``start`` took."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
