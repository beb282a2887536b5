"""The lab's one clock (lab.clock): lab time, its scale, what run.json publishes of it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from lab.clock import LabClock, parse_lab_time
from lab.errors import ClockError

START = datetime(2030, 6, 1, 8, tzinfo=UTC).timestamp()


def test_lab_time_runs_scale_times_as_fast_as_its_source() -> None:
    source = [100.0]
    clock = LabClock.starting(START, 60.0, lambda: source[0])
    assert clock.time() == START
    source[0] += 2.5
    assert clock.time() == START + 150.0
    assert clock.now() == datetime(2030, 6, 1, 8, 2, 30, tzinfo=UTC)


def test_the_wall_clock_is_real_time_and_is_published() -> None:
    clock = LabClock.wall()
    assert abs(clock.time() - time.time()) < 1.0
    published = clock.as_dict()
    assert published is not None
    assert published["scale"] == 1.0
    started = LabClock.starting(START, 60.0)
    assert started.as_dict() == {
        "start": "2030-06-01T08:00:00+00:00",
        "at": started.origin,
        "scale": 60.0,
    }


def test_a_clock_on_an_event_loops_time_is_not_published() -> None:
    # No other process can follow a loop's time (fake time in tests, above all).
    loop = asyncio.new_event_loop()
    try:
        assert LabClock.starting(START, 1.0, loop.time).as_dict() is None
    finally:
        loop.close()


@pytest.mark.looptime
async def test_a_lab_sleep_lasts_the_lab_time_divided_by_the_scale() -> None:
    loop = asyncio.get_running_loop()
    clock = LabClock.starting(START, 3600.0, loop.time)
    before = loop.time()
    await clock.sleep(7200.0)  # two lab hours: two seconds of the (fake) loop time
    assert loop.time() - before == pytest.approx(2.0)
    assert clock.time() == pytest.approx(START + 7200.0)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_a_clock_needs_a_positive_scale(scale: float) -> None:
    with pytest.raises(ClockError, match="positive number"):
        LabClock.starting(START, scale)


def test_lab_times_are_read_with_their_zone() -> None:
    assert parse_lab_time("2030-06-01T08:00:00Z") == START
    assert parse_lab_time("2030-06-01T10:00:00+02:00") == START
    with pytest.raises(ClockError, match="names no time zone"):
        parse_lab_time("2030-06-01T08:00:00")
    with pytest.raises(ClockError, match="is not a date and time"):
        parse_lab_time("at eight")


def test_lab_time_jumps_forward_only() -> None:
    source = [0.0]
    clock = LabClock.starting(START, 1.0, lambda: source[0])
    clock.advance(86_400.0)
    assert clock.time() == START + 86_400.0
    with pytest.raises(ClockError, match=r"not by -1\.0 seconds"):
        clock.advance(-1.0)


def test_a_published_clock_is_read_back_as_the_same_clock() -> None:
    clock = LabClock.starting(START, 60.0)
    published = clock.as_dict()
    assert published is not None
    again = LabClock.published(published)
    assert (again.start, again.origin, again.scale) == (clock.start, clock.origin, clock.scale)
    assert again.time() == pytest.approx(clock.time(), abs=1.0)
