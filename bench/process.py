"""The servers the benchmarks start as subprocesses: how each is stopped, and ``with``.

Every server here has ``start()`` and ``stop()``; ``Started`` makes it a context manager
that stops whatever a failed start left running. ``end_process`` is the one way a server
process ends: asked (a signal, or its stdin closed), killed when it does not stop in time,
its pipes closed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from types import TracebackType
from typing import Self


class Started:
    """A context manager over ``start()`` and ``stop()``; ``stop`` must be safe to repeat."""

    def start(self) -> None:
        """Start the server; on failure ``stop`` is called before the error goes on."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop whatever was started (nothing when nothing was)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def end_process(process: subprocess.Popen[bytes], ask: Callable[[], None], timeout: float) -> None:
    """End ``process``: ``ask`` it to stop if it still runs, kill it when it has not after
    ``timeout`` seconds, and close its pipes."""
    if process.poll() is None:
        ask()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()
