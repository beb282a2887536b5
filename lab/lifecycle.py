"""What every long-running lab part shares: ``start``, ``stop`` and use as ``async with``.

As aiohttp's runners and sites do: setup apart from serving, a part either starts whole or
raises, and ``stop`` is safe to call after a failed start.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class BackgroundTask(Service):
    """A lab part that is one task: ``run`` from ``start`` until ``stop`` cancels it."""

    task_name = "background task"
    _task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """The task's work; runs until cancelled."""
        raise NotImplementedError

    async def start(self) -> None:
        """Start the task (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=self.task_name)

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
