"""The DNS data of the lab (views, lookup) and the parts around it with no sockets:
the fault table and the query log."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from dnslib import NS, QTYPE, RCODE, SOA, SRV, A

from lab.errors import DNSError
from lab.events import Event, EventBus
from lab.net.config import LabConfig, default_config, default_text, parse_toml
from lab.net.dns.faults import FaultKind, FaultTable
from lab.net.dns.querylog import Counters, Outcome, QueryLog
from lab.net.dns.zones import RRSet, View, ViewRecords, build_views, zone_of
from lab.net.firewall import Zone


def two_zone_config() -> LabConfig:
    """The default lab with a SIP domain apart from the DHCP domain, and an edge outside both."""
    text = (
        default_text()
        .replace('sip = "contoso.test"', 'sip = "corp.example"')
        .replace('fqdn = "edge01.contoso.test"', 'fqdn = "edge01.perimeter.net"')
    )
    return parse_toml(text, "two-zones.toml")


def addresses(rrset: RRSet | None) -> list[str]:
    assert rrset is not None
    return [str(rd) for rd in rrset.rdatas]


@pytest.fixture
def views() -> dict[View, ViewRecords]:
    return build_views(default_config())


def test_view_follows_the_firewall_zone() -> None:
    assert View.of(Zone.INSIDE) is View.INTERNAL
    assert View.of(Zone.OUTSIDE) is View.EXTERNAL


def test_internal_view_holds_every_lab_record(views: dict[View, ViewRecords]) -> None:
    internal = views[View.INTERNAL]
    ucupdates = internal.get("ucupdates-r2.contoso.test", QTYPE.A)
    assert ucupdates is not None
    assert ucupdates.rotate
    assert addresses(ucupdates) == ["127.10.0.11", "127.10.0.12"]
    assert addresses(internal.get("pool01.contoso.test", QTYPE.A)) == [
        "127.10.0.11",
        "127.10.0.12",
    ]
    assert addresses(internal.get("fe01.contoso.test", QTYPE.A)) == ["127.10.0.11"]
    assert addresses(internal.get("fe02.contoso.test", QTYPE.A)) == ["127.10.0.12"]
    # The Standard Edition server: its pool's name and its own are one.
    assert addresses(internal.get("se01.contoso.test", QTYPE.A)) == ["127.10.0.21"]
    assert addresses(internal.get("edge01.contoso.test", QTYPE.A)) == ["127.20.0.10"]
    assert addresses(internal.get("webext.contoso.test", QTYPE.A)) == ["127.20.0.10"]
    assert addresses(internal.get("ns.contoso.test", QTYPE.A)) == ["127.10.0.2"]
    assert addresses(internal.get("ntp.contoso.test", QTYPE.A)) == ["127.10.0.2"]
    sip = internal.get("_sipinternaltls._tcp.contoso.test", QTYPE.SRV)
    assert sip is not None
    assert sip.rdatas == (SRV(0, 0, 5061, "pool01.contoso.test"),)
    ntp = internal.get("_ntp._udp.contoso.test", QTYPE.SRV)
    assert ntp is not None
    assert ntp.rdatas == (SRV(0, 0, 123, "ntp.contoso.test"),)
    soa = internal.get("contoso.test", QTYPE.SOA)
    assert soa is not None
    assert soa.rdatas == (
        SOA("ns.contoso.test", "hostmaster.contoso.test", (1, 3600, 600, 86400, 60)),
    )
    ns = internal.get("contoso.test", QTYPE.NS)
    assert ns is not None
    assert ns.rdatas == (NS("ns.contoso.test"),)


def test_external_view_publishes_only_the_edge(views: dict[View, ViewRecords]) -> None:
    external = views[View.EXTERNAL]
    assert external.names() == [
        "contoso.test",
        "edge01.contoso.test",
        "ns.contoso.test",
        "ucupdates-r2.contoso.test",
        "webext.contoso.test",
    ]
    assert addresses(external.get("ucupdates-r2.contoso.test", QTYPE.A)) == ["127.20.0.10"]
    assert {rrset.type_name for rrset in external.rrsets() if rrset.name == "contoso.test"} == {
        "SOA",
        "NS",
    }


def test_two_zones_each_get_apex_records_and_their_own_names() -> None:
    config = two_zone_config()
    assert config.zones == ("contoso.test", "corp.example")
    views = build_views(config)
    internal, external = views[View.INTERNAL], views[View.EXTERNAL]
    for records in (internal, external):
        for zone in config.zones:
            assert records.get(zone, QTYPE.SOA) is not None
            assert addresses(records.get(f"ns.{zone}", QTYPE.A)) == ["127.10.0.2"]
    assert addresses(internal.get("ucupdates-r2.corp.example", QTYPE.A)) == [
        "127.10.0.11",
        "127.10.0.12",
    ]
    assert addresses(external.get("ucupdates-r2.corp.example", QTYPE.A)) == ["127.20.0.10"]
    assert internal.get("fe01.corp.example", QTYPE.A) is not None
    assert internal.get("_sipinternaltls._tcp.corp.example", QTYPE.SRV) is not None
    assert internal.get("_ntp._udp.contoso.test", QTYPE.SRV) is not None
    # The edge's name is in no lab zone: it cannot be answered, so it is left out.
    assert "edge01.perimeter.net" not in internal
    assert internal.lookup("edge01.perimeter.net", QTYPE.A).rcode == RCODE.REFUSED


def test_lookup_answer_nodata_nxdomain_refused(views: dict[View, ViewRecords]) -> None:
    internal = views[View.INTERNAL]

    found = internal.lookup("FE01.Contoso.Test.", QTYPE.A)
    assert (found.rcode, found.zone) == (RCODE.NOERROR, "contoso.test")
    assert [addresses(rrset) for rrset in found.answer] == [["127.10.0.11"]]
    assert found.authority == ()

    nodata = internal.lookup("fe01.contoso.test", QTYPE.AAAA)
    assert (nodata.rcode, nodata.answer) == (RCODE.NOERROR, ())
    assert [rrset.type_name for rrset in nodata.authority] == ["SOA"]

    missing = internal.lookup("nothing-here.contoso.test", QTYPE.A)
    assert (missing.rcode, missing.answer) == (RCODE.NXDOMAIN, ())
    assert [rrset.name for rrset in missing.authority] == ["contoso.test"]

    refused = internal.lookup("www.example.com", QTYPE.A)
    assert (refused.rcode, refused.zone, refused.authority) == (RCODE.REFUSED, None, ())


def test_pool_and_front_ends_do_not_exist_outside(views: dict[View, ViewRecords]) -> None:
    external = views[View.EXTERNAL]
    for name in (
        "pool01.contoso.test",
        "fe01.contoso.test",
        "se01.contoso.test",
        "_sipinternaltls._tcp.contoso.test",
    ):
        assert external.lookup(name, QTYPE.A).rcode == RCODE.NXDOMAIN


def test_each_pool_names_its_own_front_ends_and_ucupdates_only_the_discovery_pool(
    views: dict[View, ViewRecords],
) -> None:
    internal = views[View.INTERNAL]
    pool01 = internal.get("pool01.contoso.test", QTYPE.A)
    assert pool01 is not None
    assert pool01.rotate
    assert addresses(pool01) == ["127.10.0.11", "127.10.0.12"]
    se01 = internal.get("se01.contoso.test", QTYPE.A)
    assert se01 is not None
    assert not se01.rotate  # one address: nothing to rotate
    assert addresses(se01) == ["127.10.0.21"]
    # Phones without provisioning find pool01, the discovery pool, and never se01.
    assert addresses(internal.get("ucupdates-r2.contoso.test", QTYPE.A)) == [
        "127.10.0.11",
        "127.10.0.12",
    ]
    found = internal.lookup("SE01.contoso.test.", QTYPE.A)
    assert [addresses(rrset) for rrset in found.answer] == [["127.10.0.21"]]


def test_ucupdates_and_sip_follow_the_discovery_pool() -> None:
    text = default_text().replace(
        'ucupdates = "pool01.contoso.test"', 'ucupdates = "se01.contoso.test"'
    )
    config = parse_toml(text, "se01-discovery.toml")
    assert config.ucupdates_pool == "se01.contoso.test"
    internal = build_views(config)[View.INTERNAL]
    ucupdates = internal.get("ucupdates-r2.contoso.test", QTYPE.A)
    assert ucupdates is not None
    assert addresses(ucupdates) == ["127.10.0.21"]
    sip = internal.get("_sipinternaltls._tcp.contoso.test", QTYPE.SRV)
    assert sip is not None
    assert sip.rdatas == (SRV(0, 0, 5061, "se01.contoso.test"),)
    # Each pool keeps its own name.
    assert addresses(internal.get("pool01.contoso.test", QTYPE.A)) == [
        "127.10.0.11",
        "127.10.0.12",
    ]


def test_parents_of_names_are_empty_non_terminals(views: dict[View, ViewRecords]) -> None:
    internal = views[View.INTERNAL]
    ent = internal.lookup("_tcp.contoso.test", QTYPE.SRV)
    assert (ent.rcode, ent.answer) == (RCODE.NOERROR, ())
    assert internal.lookup("_tcp.contoso.test", QTYPE.SRV).authority
    # Outside there is no SRV record, so its parent does not exist either.
    assert views[View.EXTERNAL].lookup("_tcp.contoso.test", QTYPE.SRV).rcode == RCODE.NXDOMAIN


def test_any_returns_every_rrset_of_the_name(views: dict[View, ViewRecords]) -> None:
    apex = views[View.INTERNAL].lookup("contoso.test", QTYPE.ANY)
    assert sorted(rrset.type_name for rrset in apex.answer) == ["NS", "SOA"]


def test_missing_makes_any_zone_name_nxdomain(views: dict[View, ViewRecords]) -> None:
    gone = views[View.INTERNAL].missing("ucupdates-r2.contoso.test")
    assert gone.rcode == RCODE.NXDOMAIN
    assert gone.authority
    assert views[View.INTERNAL].missing("elsewhere.example").rcode == RCODE.REFUSED


def test_rotation_starts_each_order_at_the_next_record() -> None:
    rrset = RRSet(
        "x.contoso.test", QTYPE.A, (A("1.1.1.1"), A("2.2.2.2"), A("3.3.3.3")), rotate=True
    )
    assert rrset.rotations == 3
    assert [str(rd) for rd in rrset.rotated(1)] == ["2.2.2.2", "3.3.3.3", "1.1.1.1"]
    assert [str(rd) for rd in rrset.rotated(5)] == ["3.3.3.3", "1.1.1.1", "2.2.2.2"]
    assert RRSet("y.contoso.test", QTYPE.A, (A("1.1.1.1"), A("2.2.2.2"))).rotations == 1


def test_adding_the_same_name_twice_merges_without_duplicates() -> None:
    records = ViewRecords(View.INTERNAL, ["contoso.test"])
    assert records.add("a.contoso.test", QTYPE.A, [A("1.1.1.1")])
    assert records.add("A.contoso.test.", QTYPE.A, [A("1.1.1.1"), A("2.2.2.2")], rotate=True)
    assert not records.add("a.example.com", QTYPE.A, [A("1.1.1.1")])
    merged = records.get("a.contoso.test", QTYPE.A)
    assert merged is not None
    assert merged.rotate
    assert addresses(merged) == ["1.1.1.1", "2.2.2.2"]


def test_zone_of_picks_the_most_specific_zone() -> None:
    zones = ("contoso.test", "sip.contoso.test")
    assert zone_of("a.sip.contoso.test", zones) == "sip.contoso.test"
    assert zone_of("sip.contoso.test", zones) == "sip.contoso.test"
    assert zone_of("a.contoso.test", zones) == "contoso.test"
    assert zone_of("notcontoso.test", zones) is None


# -- faults -------------------------------------------------------------------------------


@pytest.fixture
def published() -> list[Event]:
    return []


@pytest.fixture
def faults(published: list[Event]) -> FaultTable:
    bus = EventBus()
    bus.subscribe(published.append)
    return FaultTable(default_config().zones, bus)


def test_fault_set_and_clear_are_published(faults: FaultTable, published: list[Event]) -> None:
    fault = faults.set("UCUpdates-R2.contoso.test.", "delay", 2.5)
    assert (fault.name, fault.kind, fault.delay) == (
        "ucupdates-r2.contoso.test",
        FaultKind.DELAY,
        2.5,
    )
    faults.set("pool01.contoso.test", FaultKind.DROP)
    assert faults.snapshot() == {
        "pool01.contoso.test": {"kind": "drop", "delay": 0.0},
        "ucupdates-r2.contoso.test": {"kind": "delay", "delay": 2.5},
    }
    assert list(faults.snapshot()) == ["pool01.contoso.test", "ucupdates-r2.contoso.test"]
    faults.clear("ucupdates-r2.contoso.test")
    assert faults.get("ucupdates-r2.contoso.test") is None
    faults.clear_all()
    assert len(faults) == 0
    assert [(e.kind, e.data["action"]) for e in published] == [
        ("dns.faults.changed", "set"),
        ("dns.faults.changed", "set"),
        ("dns.faults.changed", "clear"),
        ("dns.faults.changed", "reset"),
    ]
    assert published[0].data == {
        "action": "set",
        "name": "ucupdates-r2.contoso.test",
        "fault": "delay",
        "delay": 2.5,
    }


def test_a_fault_change_calls_the_change_hook() -> None:
    calls: list[int] = []
    table = FaultTable(["contoso.test"], on_change=lambda: calls.append(1))
    table.set("a.contoso.test", "servfail")
    table.clear_all()
    assert calls == [1, 1]


@pytest.mark.parametrize(
    ("name", "kind", "delay", "problem"),
    [
        ("a.contoso.test", "explode", 0, "unknown DNS fault kind 'explode'"),
        ("a.contoso.test", "delay", -1, "must be a finite number >= 0"),
        ("a.contoso.test", "delay", math.nan, "must be a finite number >= 0"),
        ("a.contoso.test", "delay", math.inf, "must be a finite number >= 0"),
        ("a.contoso.test", "delay", 1e6, "longer than 3600 s"),
        ("a.contoso.test", "drop", 1, "only applies to the 'delay' fault"),
        ("www.example.com", "drop", 0, "not in a lab zone (contoso.test)"),
        ("", "drop", 0, "not in a lab zone"),
    ],
)
def test_bad_faults_are_refused(
    faults: FaultTable, published: list[Event], name: str, kind: str, delay: float, problem: str
) -> None:
    with pytest.raises(DNSError, match=re.escape(problem)):
        faults.set(name, kind, delay)
    assert published == []
    assert len(faults) == 0


def test_clearing_a_name_without_fault_says_so(faults: FaultTable) -> None:
    with pytest.raises(DNSError, match=re.escape("no DNS fault on 'fe01.contoso.test'")):
        faults.clear("fe01.contoso.test")


# -- query log and counters ---------------------------------------------------------------

ANSWERED = Outcome("fe01.contoso.test", "A", "internal", "NOERROR", 1, None, False)
DROPPED = Outcome("fe01.contoso.test", "A", "external", None, 0, "drop", False)
TRUNCATED = Outcome("pool01.contoso.test", "A", "internal", "NOERROR", 0, None, True)


def test_query_log_keeps_only_the_last_entries() -> None:
    log = QueryLog(size=3)
    for port in range(1, 6):
        log.record(float(port), ("127.10.0.50", port), "udp", ANSWERED)
    assert len(log) == 3
    assert [entry["port"] for entry in log.recent()] == [3, 4, 5]
    assert [entry["port"] for entry in log.recent(2)] == [4, 5]
    assert log.recent(0) == []
    assert log.recent(1)[0] == {
        "time": 5.0,
        "client": "127.10.0.50",
        "port": 5,
        "transport": "udp",
        "qname": "fe01.contoso.test",
        "qtype": "A",
        "view": "internal",
        "rcode": "NOERROR",
        "answers": 1,
        "fault": None,
        "truncated": False,
    }


def test_query_log_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "dns.jsonl"
    log = QueryLog(size=1, path=path)
    log.open()
    log.record(1.0, ("127.20.0.50", 4000), "tcp", DROPPED)
    log.record(2.0, ("127.10.0.50", 4001), "udp", ANSWERED)
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["port"] for line in lines] == [4000, 4001]
    assert lines[0]["fault"] == "drop"
    assert lines[0]["rcode"] is None
    assert lines[1] == log.recent()[0]


def test_query_log_file_that_cannot_be_opened(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DNSError, match="cannot open the DNS query log"):
        QueryLog(path=blocker / "dns.jsonl").open()


def test_counters_count_what_queries_got() -> None:
    counters = Counters()
    counters.count("udp", ANSWERED)
    counters.count("tcp", DROPPED)
    counters.count("udp", TRUNCATED)
    counters.count_malformed("short", replied=False)
    counters.count_malformed("opcode", replied=True)
    stats = counters.as_dict()
    assert stats["queries"] == {"udp": 2, "tcp": 1}
    assert stats["queries_total"] == 3
    assert stats["rcodes"] == {"NOERROR": 2}
    assert stats["views"] == {"internal": 2, "external": 1}
    assert stats["faults"] == {"drop": 1}
    assert stats["truncated"] == 1
    assert stats["malformed"] == 2
    assert stats["malformed_reasons"] == {"short": 1, "opcode": 1}
    assert stats["dropped"] == 2  # the drop fault and the short packet
    assert stats["errors"] == 0
    json.dumps(stats)
