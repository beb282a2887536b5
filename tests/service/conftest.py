"""Fixtures of the service tests: a lab on port 0, its PKI, a store with rules, a running pool.

The default lab has two pools: pool01.contoso.test (front ends fe01 and fe02, published by
the edge and named by ucupdates-r2) and se01.contoso.test (a Standard Edition server, a
pool of one). The store is filled with the store's own API (what an import records): in
every pool, CX600 has version 4.0.7577.4372 approved (an 8 MiB image, large enough that a
slow reader's download stays in progress), and 4.0.7577.4400 pending, which only the test
device (serial CX6A0000FF) is served.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import uvloop
from service_helpers import (
    APPROVED,
    APPROVED_IMAGES,
    PENDING,
    PENDING_IMAGES,
    TEST_DEVICE_SERIAL,
    Phones,
)

from lab.events import EventBus
from lab.models import phone_model
from lab.net.config import LabConfig, Lockout, default_config
from lab.net.firewall import FirewallPolicy
from lab.net.pki import LabPKI
from lab.service import ServicePool, file_store_path
from lab.store.decision import Action, ServedFile
from lab.store.store import ImportedVersion, Selection, Store


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test here runs on asyncio's loop and on uvloop, which production uses;
    a test on fake time on asyncio's only (looptime fakes the time of asyncio's loops)."""
    if item.get_closest_marker("looptime") is not None:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def service_config(pki_dir: Path) -> LabConfig:
    """The default lab with its service on free ports (0) and the session's PKI."""
    config = default_config().with_ports(internal=0, external=0, edge=0).with_pki_dir(pki_dir)
    LabPKI(config).ensure()
    return config


@pytest.fixture(scope="session")
def pki(service_config: LabConfig) -> LabPKI:
    return LabPKI(service_config)


@pytest.fixture(scope="session")
def client_context(pki: LabPKI) -> ssl.SSLContext:
    return pki.client_context()


@pytest.fixture(scope="session")
def service_state(tmp_path_factory: pytest.TempPathFactory, service_config: LabConfig) -> Path:
    """A state directory whose store and file stores hold the CX600 rules of this module,
    imported into every pool (as `lab update import --all-pools` does)."""
    state = tmp_path_factory.mktemp("state")
    kind = phone_model("CX600").kind()
    items = []
    for pool in service_config.pools:
        root = file_store_path(state, pool.fqdn)
        for version, images in ((APPROVED, APPROVED_IMAGES), (PENDING, PENDING_IMAGES)):
            for image in images:
                path = root / image.relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(image.data)
            files = tuple(
                ServedFile(i.relative.rsplit("/", 1)[-1], i.relative, len(i.data), i.sha256)
                for i in images
            )
            items.append((pool.fqdn, version, files))
    with Store.open(state) as store:
        first = [ImportedVersion(p, kind, APPROVED, f) for p, v, f in items if v == APPROVED]
        store.record_import(str(uuid.uuid4()), "UCUpdates.cab", "0" * 64, first)
        store.change(Action.APPROVE, Selection(all_=True))
        second = [ImportedVersion(p, kind, PENDING, f) for p, v, f in items if v == PENDING]
        store.record_import(str(uuid.uuid4()), "UCUpdates2.cab", "1" * 64, second)
        store.add_test_device(serial=TEST_DEVICE_SERIAL)
    return state


@pytest.fixture
def events() -> EventBus:
    return EventBus()


@pytest.fixture
def firewall(service_config: LabConfig, events: EventBus) -> FirewallPolicy:
    return FirewallPolicy(service_config.inside, service_config.outside, events)


@pytest.fixture
async def pool(
    service_config: LabConfig, service_state: Path, firewall: FirewallPolicy, pki: LabPKI
) -> AsyncIterator[ServicePool]:
    async with ServicePool(
        service_config,
        service_state,
        firewall=firewall,
        pki=pki,
        lockout=Lockout(threshold=3, window=600, duration=600),
        retry_after=30,
        shutdown_timeout=1.0,
        # Sightings are written when the pool stops, never while a test compares the
        # state directory byte for byte (tests/test_inventory.py covers the timed flush).
        inventory_interval=3600,
    ) as running:
        yield running


@pytest.fixture
async def phones(pool: ServicePool, client_context: ssl.SSLContext) -> AsyncIterator[Phones]:
    opened = Phones(pool, client_context)
    try:
        yield opened
    finally:
        await opened.close()
