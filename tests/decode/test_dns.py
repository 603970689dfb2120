"""DNS decoder: annotated messages, compression abuse, truncation, DNS over TCP, properties, real captures."""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from _app_helpers import (
    CAPTURES,
    capture_names,
    check_result,
    mutations,
    require_captures,
    segments,
    tcp_streams,
    unhex,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR

from detector.decode import dns
from detector.decode.dns import ANOMALIES, MAX_POINTER_HOPS, parse_dns, parse_dns_tcp
from detector.model import Anomaly, DnsAnswer, DnsMessage

# www.Example.COM A? (recursion desired)
QUERY = unhex("""
    1a2b                    # id 0x1a2b
    0100                    # flags: QR=0 opcode=0 RD=1
    0001 0000 0000 0001     # qd=1 an=0 ns=0 ar=1
    03 777777               # 3 "www"
    07 4578616d706c65       # 7 "Example"
    03 434f4d 00            # 3 "COM", root
    0001 0001               # qtype A, qclass IN
    00 0029 1000 00000000 0000  # OPT (additional, not decoded)
""")

def _response() -> bytes:
    """chat.openai.com CNAME cdn.example.net; cdn.example.net A, AAAA, A with a top-bit TTL."""
    return unhex("""
        1a2c 8180 0001 0004 0000 0000   # id; QR=1 RD RA rcode=0; qd=1 an=4 ns=0 ar=0
        # @12 question: chat.openai.com A IN
        04 63686174 06 6f70656e6169 03 636f6d 00   # "chat" "openai" "com" root
        0001 0001
        # @33 answer 1: owner -> @12, CNAME IN ttl=300, rdlength 17
        c00c 0005 0001 0000012c 0011
        # @45 rdata: "cdn" "example" "net" root (17 bytes)
        03 63646e 07 6578616d706c65 03 6e6574 00
        # @62 answer 2: owner -> @45 cdn.example.net, A IN ttl=60, 4 bytes
        c02d 0001 0001 0000003c 0004 68123456      # 104.18.52.86
        # answer 3: owner -> @45, AAAA IN ttl=60, 16 bytes
        c02d 001c 0001 0000003c 0010 26064700000000000000000068123456
        # answer 4: owner -> @45, A IN ttl=0x80000000 (top bit: treat as 0, RFC 2181 §8)
        c02d 0001 0001 80000000 0004 0a000001      # 10.0.0.1
    """)


RESPONSE = _response()


def test_query_gives_lower_cased_name_without_trailing_dot() -> None:
    assert parse_dns(QUERY) == DnsMessage(
        txid=0x1A2B, is_response=False, rcode=0, questions=(("www.example.com", 1),), answers=()
    )


def test_response_gives_cname_chain_addresses_and_ttls() -> None:
    msg = parse_dns(RESPONSE)
    assert isinstance(msg, DnsMessage) and msg.is_response and msg.rcode == 0
    assert msg.questions == (("chat.openai.com", 1),)
    assert msg.answers == (
        DnsAnswer("chat.openai.com", 5, 300, "cdn.example.net"),
        DnsAnswer("cdn.example.net", 1, 60, "104.18.52.86"),
        DnsAnswer("cdn.example.net", 28, 60, "2606:4700::6812:3456"),
        DnsAnswer("cdn.example.net", 1, 0, "10.0.0.1"),
    )


def test_cname_chain_of_several_hops_keeps_every_link() -> None:
    pkt = DNS(
        id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname="a.example"),
        an=[
            DNSRR(rrname="a.example", type="CNAME", ttl=10, rdata="b.example"),
            DNSRR(rrname="b.example", type="CNAME", ttl=20, rdata="c.example"),
            DNSRR(rrname="c.example", type="A", ttl=30, rdata="192.0.2.7"),
        ],
    )  # fmt: skip
    msg = parse_dns(bytes(pkt))
    assert isinstance(msg, DnsMessage)
    assert [(a.name, a.rtype, a.ttl, a.value) for a in msg.answers] == [
        ("a.example", 5, 10, "b.example"),
        ("b.example", 5, 20, "c.example"),
        ("c.example", 1, 30, "192.0.2.7"),
    ]


def test_other_record_types_and_classes_are_skipped_by_length() -> None:
    pkt = DNS(
        id=9, qr=1, qd=DNSQR(qname="example.org", qtype="MX"),
        an=[
            DNSRR(rrname="example.org", type="MX", rdata=b"\x00\x0a\x04mail\xc0\x0c"),
            DNSRR(rrname="example.org", type="TXT", rdata=[b"v=spf1 -all"]),
            DNSRR(rrname="example.org", type="A", rclass=3, rdata="192.0.2.1"),  # CHAOS class
            DNSRR(rrname="example.org", type="A", rdata="192.0.2.2"),
        ],
    )  # fmt: skip
    msg = parse_dns(bytes(pkt))
    assert isinstance(msg, DnsMessage) and msg.questions == (("example.org", 15),)
    assert msg.answers == (DnsAnswer("example.org", 1, 0, "192.0.2.2"),)


def test_mdns_cache_flush_bit_does_not_hide_an_in_record() -> None:
    pkt = DNS(qr=1, qd=DNSQR(qname="host.local"), an=DNSRR(rrname="host.local", rclass=0x8001, rdata="192.0.2.9"))
    msg = parse_dns(bytes(pkt))
    assert isinstance(msg, DnsMessage) and msg.answers[0].value == "192.0.2.9"


def test_a_record_with_wrong_rdlength_is_skipped_and_the_next_one_kept() -> None:
    msg = unhex("""
        0001 8180 0001 0002 0000 0000
        01 78 00 0001 0001                 # @12 "x" A IN
        c00c 0001 0001 00000001 0003 010203  # A with 3 bytes: broken, skipped by length
        c00c 0001 0001 00000002 0004 01020304
    """)
    result = parse_dns(msg)
    assert isinstance(result, DnsMessage)
    assert result.answers == (DnsAnswer("x", 1, 2, "1.2.3.4"),)


def test_response_cut_inside_an_answer_keeps_question_and_complete_answers() -> None:
    cut = RESPONSE[: len(RESPONSE) - 20]  # inside answer 3 (AAAA)
    msg = parse_dns(cut)
    assert isinstance(msg, DnsMessage)
    assert msg.questions == (("chat.openai.com", 1),)
    assert [a.value for a in msg.answers] == ["cdn.example.net", "104.18.52.86"]


def test_truncated_tc_response_with_only_the_question_is_a_record() -> None:
    msg = unhex("0002 8380 0001 0000 0000 0000  01 61 00 0001 0001")  # TC=1, an=0
    assert parse_dns(msg) == DnsMessage(2, True, 0, (("a", 1),), ())


def test_ancount_larger_than_the_message_stops_at_the_end() -> None:
    msg = bytearray(RESPONSE)
    msg[6:8] = b"\xff\xff"
    result = parse_dns(bytes(msg))
    assert isinstance(result, DnsMessage) and len(result.answers) == 4


def test_rcode_nxdomain_is_reported() -> None:
    msg = parse_dns(unhex("0003 8183 0001 0000 0000 0000  01 61 00 0001 0001"))
    assert isinstance(msg, DnsMessage) and msg.rcode == 3


def test_root_name_and_unsafe_label_bytes_are_rendered_unambiguously() -> None:
    msg = unhex("""
        0004 0000 0002 0000 0000 0000
        00 0002 0001                       # root "." NS?
        03 612e62 04 5c20ff41 00 0001 0001  # label "a.b", label "\\ \\xff A"
    """)
    result = parse_dns(msg)
    assert isinstance(result, DnsMessage)
    assert result.questions == (("", 2), ("a\\046b.\\092\\032\\255a", 1))


def test_idna_labels_stay_ascii() -> None:
    pkt = DNS(qd=DNSQR(qname="xn--bcher-kva.example"))
    result = parse_dns(bytes(pkt))
    assert isinstance(result, DnsMessage) and result.questions[0][0] == "xn--bcher-kva.example"


# --- compression --------------------------------------------------------------------

HEADER_2Q = "0005 0100 0002 0000 0000 0000"  # two questions


def test_backward_pointer_in_second_question_is_followed() -> None:
    msg = unhex(HEADER_2Q + " 04 74657374 02 6e6c 00 0001 0001   c00c 001c 0001")  # test.nl, then -> @12
    result = parse_dns(msg)
    assert isinstance(result, DnsMessage)
    assert result.questions == (("test.nl", 1), ("test.nl", 28))


def test_pointer_to_itself_is_refused() -> None:
    assert parse_dns(unhex("0006 0100 0001 0000 0000 0000  c00c 0001 0001")) == dns.POINTER_FORWARD


def test_forward_pointer_is_refused() -> None:
    msg = unhex("0007 0100 0001 0000 0000 0000  c012 0001 0001  01 61 00")  # @12 -> @18 (ahead)
    assert parse_dns(msg) == dns.POINTER_FORWARD


def test_two_pointers_pointing_at_each_other_are_refused() -> None:
    # @12: "a" then pointer -> @17 ; @17 (second question): pointer -> @14 (back into q1's pointer)
    msg = unhex(HEADER_2Q + " 01 61 c011 0001 0001   c00e 0001 0001")
    assert parse_dns(msg) == dns.POINTER_FORWARD


def _pointer_chain(hops: int) -> bytes:
    """A message whose last question walks a chain of `hops` compression pointers.

    q1 @12 is "a". Middle questions each hold one label whose bytes are pointers;
    pointer slot j points at slot j-1, slot 0 at @12. The last question points at
    the last slot, so reading it takes (slots + 1) hops, every one backwards.
    """
    slots_needed = hops - 1
    body = bytearray(b"\x01a\x00\x00\x01\x00\x01")
    slots: list[int] = []
    questions = 1
    while len(slots) < slots_needed:
        count = min(31, slots_needed - len(slots))
        label_at = 12 + len(body)
        body.append(count * 2)  # label length
        for i in range(count):
            slots.append(label_at + 1 + 2 * i)
            target = slots[-2] if len(slots) > 1 else 12
            body += struct.pack("!H", 0xC000 | target)
        body += b"\x00\x00\x01\x00\x01"
        questions += 1
    body += struct.pack("!HHH", 0xC000 | slots[-1], 1, 1)
    questions += 1
    return struct.pack("!HHHHHH", 8, 0x0100, questions, 0, 0, 0) + bytes(body)


def test_pointer_chain_at_the_hop_bound_decodes() -> None:
    result = parse_dns(_pointer_chain(MAX_POINTER_HOPS))
    assert isinstance(result, DnsMessage) and result.questions[-1] == ("a", 1)


def test_pointer_chain_over_the_hop_bound_is_refused() -> None:
    assert parse_dns(_pointer_chain(MAX_POINTER_HOPS + 1)) == dns.POINTER_CHAIN_TOO_LONG


def test_broken_name_in_answers_keeps_the_record_up_to_there() -> None:
    msg = unhex("""
        0009 8180 0001 0002 0000 0000
        01 61 00 0001 0001                    # @12 "a" A IN
        c00c 0001 0001 00000005 0004 c0000201 # a A 192.0.2.1
        c030 0001 0001 00000005 0004 c0000202 # owner pointer forward: stop here
    """)
    result = parse_dns(msg)
    assert isinstance(result, DnsMessage) and [a.value for a in result.answers] == ["192.0.2.1"]


# --- anomalies and "not DNS" ------------------------------------------------------------

LONG_NAME = "".join("3f" + "61" * 63 for _ in range(4)) + "00"  # 4 x 64 + 1 = 257 octets

ANOMALY_CASES = {
    "dns.short_header": "0001 0100 0001 0000 00",  # 9 bytes
    "dns.truncated_question": "0001 0100 0001 0000 0000 0000  03 777777 07 6578",  # cut in a label
    "dns.too_many_questions": "0001 0100 0041 0000 0000 0000  01 61 00 0001 0001",  # qd=65
    "dns.label_too_long": "0001 0100 0001 0000 0000 0000  40" + "61" * 64 + "00 0001 0001",
    "dns.name_too_long": "0001 0100 0001 0000 0000 0000 " + LONG_NAME + " 0001 0001",
    "dns.pointer_forward": "0006 0100 0001 0000 0000 0000  c00c 0001 0001",
}


@pytest.mark.parametrize("kind", sorted(ANOMALY_CASES))
def test_each_anomaly_is_named(kind: str) -> None:
    assert parse_dns(unhex(ANOMALY_CASES[kind])) == Anomaly(kind)


def test_every_declared_anomaly_has_a_test() -> None:
    covered = set(ANOMALY_CASES) | {"dns.pointer_chain_too_long", "dns.tcp_not_dns"}
    assert covered == set(ANOMALIES)


@pytest.mark.parametrize(
    "hexdump",
    [
        "0001 1800 0001 0000 0000 0000  01 61 00 0001 0001",  # opcode 3 (unassigned)
        "0001 7800 0001 0000 0000 0000  01 61 00 0001 0001",  # opcode 15
        "0001 0100 0000 0000 0000 0000",  # no question and no answer
    ],
)
def test_bytes_that_are_not_dns_give_none(hexdump: str) -> None:
    assert parse_dns(unhex(hexdump)) is None


def test_scapy_built_query_round_trips() -> None:
    result = parse_dns(bytes(DNS(id=77, rd=1, qd=DNSQR(qname="Gemini.Google.com.", qtype="AAAA"))))
    assert result == DnsMessage(77, False, 0, (("gemini.google.com", 28),), ())


# --- DNS over TCP -------------------------------------------------------------------------


def _framed(msg: bytes) -> bytes:
    return struct.pack("!H", len(msg)) + msg


def test_tcp_three_messages_in_one_buffer() -> None:
    stream = _framed(QUERY) + _framed(RESPONSE) + _framed(QUERY)
    messages, used = parse_dns_tcp(stream)
    assert used == len(stream)
    assert [m.questions[0][0] for m in messages if isinstance(m, DnsMessage)] == [
        "www.example.com", "chat.openai.com", "www.example.com",
    ]  # fmt: skip


def test_tcp_message_split_over_two_segments() -> None:
    stream = _framed(QUERY) + _framed(RESPONSE)
    first, rest = stream[:60], stream[60:]  # 46 bytes of framed query, then a cut inside the response
    messages, used = parse_dns_tcp(first)
    assert len(messages) == 1 and used == len(_framed(QUERY))
    messages, used = parse_dns_tcp(first[used:] + rest)
    assert used == len(_framed(RESPONSE)) and messages == [parse_dns(RESPONSE)]


def test_tcp_cut_inside_the_length_prefix_consumes_nothing() -> None:
    assert parse_dns_tcp(b"\x00") == ([], 0)


def test_tcp_framed_message_that_is_not_dns_is_named_and_skipped() -> None:
    junk = unhex("0001 0100 0000 0000 0000 0000")  # qd=0 an=0
    messages, used = parse_dns_tcp(_framed(junk) + _framed(QUERY))
    assert messages[0] == dns.TCP_NOT_DNS and isinstance(messages[1], DnsMessage)
    assert used == len(junk) + len(QUERY) + 4


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    check_result(parse_dns(data), DnsMessage, ANOMALIES)
    messages, used = parse_dns_tcp(data)
    assert 0 <= used <= len(data)
    for m in messages:
        check_result(m, DnsMessage, ANOMALIES)


@settings(max_examples=400, deadline=None)
@given(st.one_of(mutations(QUERY), mutations(RESPONSE), mutations(_pointer_chain(40))))
def test_mutated_and_truncated_messages_never_raise(data: bytes) -> None:
    check_result(parse_dns(data), DnsMessage, ANOMALIES)
    messages, _ = parse_dns_tcp(_framed(data) + _framed(data))
    for m in messages:
        check_result(m, DnsMessage, ANOMALIES)


def test_every_prefix_of_a_response_with_intact_question_is_a_record() -> None:
    question_end = 33
    for cut in range(question_end, len(RESPONSE) + 1):
        msg = parse_dns(RESPONSE[:cut])
        assert isinstance(msg, DnsMessage) and msg.questions == (("chat.openai.com", 1),)


# --- real captures --------------------------------------------------------------------------

# Ports tshark 4.0 decodes as unicast DNS in these captures (8053: tcpdump's dns_udp_8053
# test). mDNS (5353) and LLMNR (5355) are not counted in GROUND_TRUTH's `dns`.
DNS_PORTS = frozenset((53, 8053))


@pytest.mark.parametrize("name", capture_names())
def test_query_names_include_tsharks(name: str) -> None:
    truth = require_captures()
    segs = list(segments(CAPTURES / name))
    seen: set[str] = set()
    kinds: Counter[str] = Counter()
    results = [parse_dns(s[6]) for s in segs if s[0] == 17 and s[6] and (s[3] in DNS_PORTS or s[4] in DNS_PORTS)]
    for (_src, _dst, sport, dport), data in tcp_streams(segs).items():
        if 53 in (sport, dport):
            results += parse_dns_tcp(data)[0]
    for r in results:
        check_result(r, DnsMessage, ANOMALIES)
        if isinstance(r, DnsMessage) and not r.is_response:
            seen.update(q for q, _ in r.questions)
        elif isinstance(r, Anomaly):
            kinds[r.kind] += 1
    assert set(truth[name]["dns"]) <= seen
    assert not kinds, f"anomalies on real traffic: {dict(kinds)}"
