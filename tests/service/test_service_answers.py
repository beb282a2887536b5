"""The check path's snapshot and its one answer cache (lab.service.updates), on their own."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from lab.errors import StoreError
from lab.events import Event, EventBus
from lab.models import phone_model
from lab.service.updates import (
    ENTRY_OVERHEAD,
    Answer,
    AnswerCache,
    AnswerKey,
    SnapshotWatcher,
)
from lab.store.decision import Decision
from lab.store.devconfig import DeviceUpdateConfig
from lab.store.store import Snapshot, Store

CX600 = phone_model("CX600").kind()


def snapshot(generation: int) -> Snapshot:
    return Snapshot(
        generation=generation,
        rules=(),
        test_macs=frozenset(),
        test_serials=frozenset(),
        config=DeviceUpdateConfig(),
        by_pool={},
    )


def key(installed: str, pool: str = "pool01.contoso.test") -> AnswerKey:
    return AnswerKey(pool=pool, kind=CX600, installed=installed, test_device=False)


class Renderer:
    """Renders answers of a chosen body size, and counts how often it was asked."""

    def __init__(self, body_size: int) -> None:
        self.body_size = body_size
        self.calls = 0

    def __call__(self, decision: Decision) -> Answer:
        self.calls += 1
        return Answer(decision=decision, body=b"x" * self.body_size, modules="", version="none")


def test_an_answer_is_rendered_once_per_key_and_generation() -> None:
    cache = AnswerCache()
    render = Renderer(100)
    first = cache.answer(snapshot(1), key("1.0"), render)
    assert cache.answer(snapshot(1), key("1.0"), render) is first
    assert render.calls == 1
    # An equal key built anew finds it: the key is its fields, not an object.
    assert cache.answer(snapshot(1), key("1.0"), render) is first
    # Another pool has rules of its own: its answer is its own (the front ends of one pool
    # share theirs, as the key names no front end).
    cache.answer(snapshot(1), key("1.0", pool="se01.contoso.test"), render)
    assert render.calls == 2
    # A new generation starts afresh: nothing decided on the old rules is served.
    cache.answer(snapshot(2), key("1.0"), render)
    assert render.calls == 3
    assert len(cache) == 1


def test_the_cache_is_bounded_in_bytes_and_drops_the_least_recently_used() -> None:
    size = 1000 + len("none") + ENTRY_OVERHEAD
    cache = AnswerCache(limit=3 * size)
    render = Renderer(1000)
    for version in ("1", "2", "3"):
        cache.answer(snapshot(1), key(version), render)
    assert cache.bytes == 3 * size
    cache.answer(snapshot(1), key("1"), render)  # used again: now the most recent
    cache.answer(snapshot(1), key("4"), render)  # over the limit: "2" goes
    assert cache.bytes == 3 * size
    assert len(cache) == 3
    calls = render.calls
    cache.answer(snapshot(1), key("1"), render)
    assert render.calls == calls
    cache.answer(snapshot(1), key("2"), render)
    assert render.calls == calls + 1


def test_an_answer_larger_than_the_whole_cache_is_served_and_not_kept() -> None:
    cache = AnswerCache(limit=1024)
    render = Renderer(4096)
    answer = cache.answer(snapshot(1), key("1"), render)
    assert len(answer.body) == 4096
    assert len(cache) == 0
    assert cache.bytes == 0


def test_the_check_path_takes_the_snapshot_without_asking_the_store(tmp_path: Path) -> None:
    now = [0.0]
    with Store.open(tmp_path) as store, Store.open(tmp_path) as cli:
        watcher = SnapshotWatcher(store, clock=lambda: now[0], interval=0.5)
        first = watcher.current()
        cli.add_test_device(mac="00-04-F2-00-00-01")
        # No refresh was asked for: the snapshot in hand is served, whatever was committed.
        assert watcher.current() is first
        assert watcher.refresh().generation == first.generation + 1
        assert watcher.current().is_test_device("00-04-F2-00-00-01", None)


def test_a_new_snapshot_is_published_once_whoever_changed_the_store(tmp_path: Path) -> None:
    events = EventBus()
    seen: list[Event] = []
    events.subscribe(seen.append, kinds=("store.reloaded",))
    with Store.open(tmp_path) as store, Store.open(tmp_path) as cli:
        watcher = SnapshotWatcher(store, events=events)
        watcher.refresh()  # nothing committed: the same generation, nothing published
        assert seen == []
        cli.add_test_device(mac="00-04-F2-00-00-01")
        watcher.refresh()
        watcher.refresh()
        assert [e.data["generation"] for e in seen] == [2]


async def test_an_old_snapshot_wakes_the_watcher_which_takes_the_change(tmp_path: Path) -> None:
    now = [0.0]
    with Store.open(tmp_path) as store, Store.open(tmp_path) as cli:
        watcher = SnapshotWatcher(store, clock=lambda: now[0], interval=0.5)
        await watcher.start()
        try:
            cli.add_test_device(mac="00-04-F2-00-00-01")
            now[0] = 0.4
            assert watcher.current().generation == 1
            await asyncio.sleep(0)  # one turn of the loop: the watcher was not woken
            assert watcher.generation == 1
            now[0] = 0.6
            assert watcher.current().generation == 1  # served at once, the old one
            await asyncio.sleep(0)  # one turn of the loop: the woken watcher refreshes
            assert watcher.generation == 2
        finally:
            await watcher.stop()


async def test_an_unreadable_store_is_reported_once_and_the_last_snapshot_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = EventBus()
    seen: list[Event] = []
    events.subscribe(seen.append, kinds=("service.store_unreadable",))
    with Store.open(tmp_path) as store:
        watcher = SnapshotWatcher(store, events=events)
        held = watcher.current()
        store.close()  # every later read fails with StoreError
        with caplog.at_level(logging.WARNING, logger="lab.service.updates"):
            for _ in range(3):
                with pytest.raises(StoreError):
                    watcher.refresh()
        assert watcher.current() is held
        assert len(seen) == 1
        assert seen[0].data["error"]
        assert len([r for r in caplog.records if "cannot be read" in r.getMessage()]) == 1
