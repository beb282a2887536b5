"""The phone's DNS wire format: queries it writes and the answers it accepts, byte by byte."""

from __future__ import annotations

import struct

import dnslib
import pytest

from emulator.net.resolver import _Query

NAME = "ucupdates-r2.contoso.test"


def _reply(query: _Query, *records: dnslib.RR, rcode: int = 0) -> dnslib.DNSRecord:
    request = dnslib.DNSRecord.parse(query.packet)
    reply = request.reply()
    reply.header.rcode = rcode
    for record in records:
        reply.add_answer(record)
    return reply


def test_the_query_is_what_a_dns_library_reads() -> None:
    query = _Query.make("UCUpdates-R2.Contoso.test", "A")
    parsed = dnslib.DNSRecord.parse(query.packet)
    assert parsed.header.id == query.ident
    assert parsed.header.rd == 1
    assert parsed.header.qr == 0
    assert str(parsed.q.qname).lower() == NAME + "."
    assert query.name == NAME
    assert parsed.q.qtype == dnslib.QTYPE.A


@pytest.mark.parametrize(
    ("name", "qtype"), [("a" * 64 + ".test", "A"), ("a..test", "A"), (NAME, "BOGUS")]
)
def test_what_cannot_be_asked_is_a_value_error(name: str, qtype: str) -> None:
    with pytest.raises(ValueError, match=r"label|name|record type"):
        _Query.make(name, qtype)


def test_a_records_after_a_cname_in_answer_order() -> None:
    query = _Query.make(NAME, "A")
    reply = _reply(
        query,
        dnslib.RR(NAME, dnslib.QTYPE.CNAME, rdata=dnslib.CNAME("pool01.contoso.test")),
        dnslib.RR("pool01.contoso.test", rdata=dnslib.A("127.10.0.12")),
        dnslib.RR("pool01.contoso.test", rdata=dnslib.A("127.10.0.11")),
    )
    answer = query.answer(reply.pack())
    assert answer is not None
    assert answer.records == ["127.10.0.12", "127.10.0.11"]
    assert answer.rcode == 0
    assert not answer.truncated


def test_other_types_come_back_as_text() -> None:
    query = _Query.make("_sipinternaltls._tcp.contoso.test", "SRV")
    reply = _reply(
        query,
        dnslib.RR(
            "_sipinternaltls._tcp.contoso.test",
            dnslib.QTYPE.SRV,
            rdata=dnslib.SRV(0, 0, 5061, "pool01.contoso.test"),
        ),
    )
    answer = query.answer(reply.pack())
    assert answer is not None
    assert answer.records == ["0 0 5061 pool01.contoso.test."]


def test_rcode_and_truncation_are_read() -> None:
    query = _Query.make(NAME, "A")
    reply = _reply(query, rcode=dnslib.RCODE.NXDOMAIN)
    reply.header.tc = 1
    answer = query.answer(reply.pack())
    assert answer is not None
    assert (answer.rcode, answer.truncated, answer.records) == (3, True, [])


def test_only_an_answer_to_this_question_counts() -> None:
    query = _Query.make(NAME, "A")
    good = _reply(query, dnslib.RR(NAME, rdata=dnslib.A("127.10.0.11"))).pack()
    assert query.answer(good) is not None
    other_id = bytearray(good)
    other_id[0:2] = struct.pack("!H", query.ident ^ 1)
    not_a_reply = bytearray(good)
    not_a_reply[2] &= 0x7F  # QR cleared: a query, not an answer
    other_name = _reply(_Query.make("pool01.contoso.test", "A")).pack()
    other_name = struct.pack("!H", query.ident) + other_name[2:]
    other_type = _reply(_Query.make(NAME, "AAAA")).pack()
    other_type = struct.pack("!H", query.ident) + other_type[2:]
    for bad in (bytes(other_id), bytes(not_a_reply), other_name, other_type, good[:11]):
        assert query.answer(bad) is None


def test_a_message_cut_short_or_looping_is_no_answer() -> None:
    query = _Query.make(NAME, "A")
    good = _reply(query, dnslib.RR(NAME, rdata=dnslib.A("127.10.0.11"))).pack()
    for cut in (len(good) - 1, len(good) - 4, 20):
        assert query.answer(good[:cut]) is None
    # One answer whose owner name points at itself.
    header = struct.pack("!HHHHHH", query.ident, 0x8180, 1, 1, 0, 0)
    question = query.packet[12:]
    loop_at = len(header) + len(question)
    looping = header + question + struct.pack("!H", 0xC000 | loop_at) + b"\0" * 10
    assert query.answer(looping) is None
