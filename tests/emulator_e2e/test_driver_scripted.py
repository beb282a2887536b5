"""The driver with scripted network adapters: what is hard to make a real lab do on cue.

The adapters answer from memory with a real signed catalog and image (made by the lab's
cab builder with the lab PKI's vendor key), so the driver's real firmware checks run.
"""

from __future__ import annotations

import asyncio
import gc
import random
from pathlib import Path
from typing import Any

import pytest

from emulator.clock import LoopClock
from emulator.core import Phone
from emulator.driver import PhoneDriver
from emulator.errors import DriverError
from emulator.lease import Lease
from emulator.models import get_model
from emulator.net.client import Answer, Download, HTTPSClient
from emulator.net.resolver import Resolver
from emulator.phonelog import LogCode
from emulator.states import PhoneState
from lab.models import phone_model
from lab.net.config import LabConfig
from lab.net.pki import LabPKI
from lab.ops.harness import BOOT, FACTORY, NEW, T0, idle_on, logged
from lab.store.cab import DeviceUpdate, make_update

LEASE = Lease("contoso.test", "pool01.contoso.test", ("127.10.0.2", 53), 10443)
URL = "https://pool01.contoso.test:10443/DeviceUpdateFiles_Int/x/"


class ScriptedResolver:
    async def resolve(self, name: str, qtype: str = "A") -> list[str]:
        return ["127.10.0.11"]


class ScriptedClient:
    """Offers one update and serves its files; calls ``before_image`` as the image arrives."""

    def __init__(self, update: DeviceUpdate, before_image: Any) -> None:
        self.update = update
        self.before_image = before_image

    async def post_xml(self, url: str, body: bytes, **options: Any) -> Answer:
        if self.update.version.encode() in body:
            return Answer(200, b'<DeviceUpdateResponse downloads="0"/>', "text/xml")
        offers = "".join(
            f'<Download module="{f.module}" version="{self.update.version}" size="{f.size}" '
            f'sha256="{f.sha256}"><BaseURL>{URL}{f.module}</BaseURL></Download>'
            for f in self.update.files
        )
        answer = f'<DeviceUpdateResponse downloads="2">{offers}</DeviceUpdateResponse>'
        return Answer(200, answer.encode(), "text/xml")

    async def download(self, url: str, path: Path, **options: Any) -> Download:
        (file,) = [f for f in self.update.files if url.endswith(f.module)]
        await asyncio.to_thread(path.write_bytes, file.data)
        if file.module == "CPE.nbt":
            asyncio.get_running_loop().call_soon(self.before_image)
        return Download(200, file.size, file.size, '"etag"')

    async def post_log(self, url: str, body: bytes, **options: Any) -> Answer:
        raise AssertionError("not used")

    def kept_address(self, host: str, port: int) -> str | None:
        return None

    async def drop_connections(self) -> None:
        pass

    async def close(self) -> None:
        pass


class ScriptedNetwork:
    def __init__(self, client: ScriptedClient, vendor_pem: bytes) -> None:
        self.client = client
        self.vendor_pem = vendor_pem

    def resolver(self, source: str) -> Resolver:
        return ScriptedResolver()

    async def open_client(self, source: str, resolver: Resolver) -> HTTPSClient:
        return self.client

    async def close_client(self, client: HTTPSClient) -> None:
        pass

    def vendor_certificate(self, vendor: str) -> bytes:
        return self.vendor_pem


@pytest.fixture
def pki(lab_config: LabConfig) -> LabPKI:
    pki = LabPKI(lab_config)
    pki.ensure()
    return pki


def scripted_start(pki: LabPKI) -> tuple[LoopClock, DeviceUpdate, bytes]:
    """Phone time starting at T0 on the running loop, the CX600's update to NEW, and the
    certificate of the vendor that signed it."""
    loop = asyncio.get_running_loop()
    signer = pki.vendor("Polycom")
    update = make_update(phone_model("CX600"), NEW, signer, 4096)
    return LoopClock(loop.time, start=T0 - loop.time()), update, signer.certificate_pem()


def scripted_driver(
    client: ScriptedClient, vendor_pem: bytes, clock: LoopClock, workdir: Path, **options: Any
) -> PhoneDriver:
    """One CX600 on the scripted network, at 127.10.1.1."""
    return PhoneDriver(
        Phone(get_model("CX600").identity(1), rng=random.Random(0)),
        lease=LEASE,
        clock=clock,
        network=ScriptedNetwork(client, vendor_pem),
        address="127.10.1.1",
        workdir=workdir,
        **options,
    )


@pytest.mark.looptime
async def test_a_result_computed_at_once_is_stamped_when_it_is_fed(
    pki: LabPKI, tmp_path: Path
) -> None:
    # The catalog is verified at once, but its answer is fed on the next turn of the loop.
    # Here the loop stalls for an hour of phone time in between and someone presses a
    # key: the answer must not carry the time from before the key press.
    clock, update, vendor_pem = scripted_start(pki)
    driver: PhoneDriver | None = None

    def stall_then_press_a_key() -> None:
        assert driver is not None
        clock.start += 3600
        driver.use()

    client = ScriptedClient(update, stall_then_press_a_key)
    driver = scripted_driver(client, vendor_pem, clock, tmp_path)
    driver.power_on()
    await driver.wait_for(idle_on(NEW), until=T0 + 2 * 3600)
    assert logged(driver, LogCode.CATALOG_VERIFIED) == [T0 + BOOT + 3600]
    assert driver.phone.backup_version == FACTORY
    await driver.aclose()


class BrokenClient(ScriptedClient):
    """An adapter with a bug: it raises what no HTTPS client may raise."""

    async def download(self, url: str, path: Path, **options: Any) -> Download:
        raise RuntimeError("a bug in the adapter")


@pytest.mark.looptime
async def test_a_broken_adapter_stops_the_driver_and_wakes_whoever_waits(
    pki: LabPKI, tmp_path: Path
) -> None:
    clock, update, vendor_pem = scripted_start(pki)
    driver = scripted_driver(BrokenClient(update, None), vendor_pem, clock, tmp_path)
    driver.power_on()
    with pytest.raises(DriverError, match="I/O failed unexpectedly: RuntimeError") as failed:
        await driver.wait_for(idle_on(NEW), until=T0 + 3600)
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert driver.settled  # a stopped phone holds no fleet up
    with pytest.raises(DriverError):
        await driver.wait_for(idle_on(NEW))  # later waits fail at once too
    await driver.aclose()


@pytest.mark.looptime
async def test_a_phone_stopped_before_its_lookup_starts_leaves_nothing_unawaited(
    pki: LabPKI, tmp_path: Path
) -> None:
    # A fleet stops its phones wherever they are; one stopped in the very turn of the loop
    # that asked for a DNS lookup has a task that never ran. No coroutine may be left
    # behind un-awaited (warnings are errors here). The observer cuts the power at once,
    # as it is told of the change: the lookup's task has not had its first step yet.
    loop = asyncio.get_running_loop()
    clock, update, vendor_pem = scripted_start(pki)
    stopped: asyncio.Future[None] = loop.create_future()

    def stop_when_checking(driver: PhoneDriver) -> None:
        if driver.phone.state is PhoneState.CHECKING and not stopped.done():
            stopped.set_result(None)
            driver.power_off()

    client = ScriptedClient(update, lambda: None)
    driver = scripted_driver(client, vendor_pem, clock, tmp_path, observer=stop_when_checking)
    driver.power_on()
    await stopped
    await driver.aclose()
    assert driver.phone.state is PhoneState.OFF
    gc.collect()
