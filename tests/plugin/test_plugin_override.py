"""A user's own ``lab_config`` replaces the plugin's: here a pool of one front end."""

from __future__ import annotations

import dataclasses

import pytest

from emulator.phonelog import LogCode
from lab.net.config import LabConfig
from lab.ops.harness import NEW, T0, Phones, RunningLab, idle_on


@pytest.fixture
def lab_config(lab_config: LabConfig) -> LabConfig:
    """The plugin's lab with only its first front end: pool01 of fe01 alone, and only the
    users homed there."""
    first = lab_config.pools[0]
    pool = dataclasses.replace(first, front_ends=first.front_ends[:1])
    users = tuple(user for user in lab_config.users if user.pool == pool.fqdn)
    return dataclasses.replace(lab_config, pools=(pool,), users=users)


@pytest.mark.looptime
async def test_a_lab_config_fixture_of_the_users_own_is_the_lab_that_runs(
    device_lab: RunningLab, phones: Phones
) -> None:
    assert [fe.name for fe in device_lab.config.front_ends] == ["fe01"]
    device_lab.publish("CX600", NEW)
    phone = phones.phone()
    phone.power_on()
    await phone.wait_for(idle_on(NEW), until=T0 + 3600)
    # DNS named the one front end, and it served everything.
    name = "ucupdates-r2.contoso.test"
    queries = [q for q in device_lab.lab.dns.query_log.recent() if q["qname"] == name]
    assert queries
    assert {q["answers"] for q in queries} == {1}
    lookups = [e for e in phone.phone.log.coded(LogCode.RESOLVED) if e.facts.host == name]
    assert {e.facts.address for e in lookups} == {"127.10.0.11"}
    assert {r.server for r in device_lab.audit} == {"fe01"}
