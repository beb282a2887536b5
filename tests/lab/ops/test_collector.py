"""The collector's pace for long runs: set around the lab's and the fleet's event loops only."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from emulator import cli as emulator_cli
from emulator.collector import OLDER_EVERY, YOUNG_EVERY, long_run_pace
from lab.ops.runner import run_event_loop

LONG_RUN = (YOUNG_EVERY, OLDER_EVERY, OLDER_EVERY)


@pytest.fixture(autouse=True)
def default_pace() -> object:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_pace_is_set_inside_and_restored_after() -> None:
    with long_run_pace():
        assert gc.get_threshold() == LONG_RUN
    assert gc.get_threshold() == (700, 10, 10)


def test_pace_is_restored_after_a_failure() -> None:
    with pytest.raises(RuntimeError), long_run_pace():
        raise RuntimeError("boom")
    assert gc.get_threshold() == (700, 10, 10)


def _young_collections_while_keeping(count: int) -> int:
    gc.collect()
    before: int = gc.get_stats()[0]["collections"]
    kept: list[list[int]] = [[] for _ in range(count)]  # net allocations of containers
    made: int = gc.get_stats()[0]["collections"] - before
    del kept
    return made


def test_young_collections_come_at_the_long_run_pace() -> None:
    assert _young_collections_while_keeping(YOUNG_EVERY // 2) >= 5  # the default pace
    with long_run_pace():
        assert _young_collections_while_keeping(YOUNG_EVERY // 2) == 0
        assert _young_collections_while_keeping(YOUNG_EVERY * 2) >= 1


class _Node:
    def __init__(self) -> None:
        self.me = self


def test_cycles_are_still_freed_at_the_long_run_pace() -> None:
    with long_run_pace():
        gc.collect()
        cycle = weakref.ref(_Node())  # a cycle nothing refers to: only a collection frees it
        assert cycle() is not None
        kept: list[list[int]] = [[] for _ in range(YOUNG_EVERY + 10)]
        assert cycle() is None
        del kept


async def _threshold() -> tuple[int, int, int]:
    await asyncio.sleep(0)
    return gc.get_threshold()


def test_lab_event_loop_runs_at_the_long_run_pace() -> None:
    assert run_event_loop(_threshold) == LONG_RUN
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize(
    ("argv", "runs"),
    [
        (["run", "--phones", "4", "--workers", "2"], "_run_workers"),
        (["run", "--phones", "4"], "_dispatch"),
        (["models"], "_dispatch"),
    ],
)
def test_emulator_commands_run_at_the_long_run_pace(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], runs: str
) -> None:
    """The whole command: a fleet's run, its results made into JSON, the workers' merge."""
    seen: list[tuple[int, int, int]] = []

    def record(*args: object) -> int:
        seen.append(gc.get_threshold())
        return 0

    monkeypatch.setattr(emulator_cli, runs, record)
    assert emulator_cli.main(argv) == 0
    assert seen == [LONG_RUN]
    assert gc.get_threshold() == (700, 10, 10)
