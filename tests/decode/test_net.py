"""IPv4/IPv6/TCP/UDP decoding, decode_frame's result contract, and property tests for every link type."""

from __future__ import annotations

import struct

import pytest
from _app_helpers import mutations, unhex
from _net_helpers import (
    A4,
    A6,
    B4,
    B6,
    INNER_TCP4,
    INNER_UDP6,
    IPV4_TCP,
    IPV6_UDP,
    LINK_SAMPLES,
    check_contract,
    eth,
    gre,
    ipv4,
    ipv6,
    l4,
    udp,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.decode import net
from detector.decode.link import K_ETHER, LINKTYPE_KINDS
from detector.model import Anomaly, IPFragment, L4Packet

# ---------------------------------------------------------------------------
# IPv4 and the fast path
# ---------------------------------------------------------------------------


def test_ethernet_ipv4_tcp_gives_every_field() -> None:
    frame = (
        unhex("""
        020000000002 020000000001 0800   # Ethernet: dst, src, EtherType IPv4
    """)
        + IPV4_TCP
    )
    assert net.decode_frame(1.5, 1, frame) == L4Packet(
        ts=1.5, src=A4, dst=B4, proto=6, sport=40000, dport=443, ip_len=44, flags=0x02, seq=100, payload=b"ping"
    )


def test_ethernet_ipv4_udp_gives_every_field() -> None:
    frame = eth(ipv4(17, udp(5353, 53, b"query-bytes"), src=A4, dst=B4))
    assert net.decode_frame(2.0, 1, frame) == L4Packet(2.0, A4, B4, 17, 5353, 53, 39, 0, 0, b"query-bytes")


def test_ethernet_padding_never_reaches_the_payload() -> None:
    tcp = net.decode_frame(0.0, 1, eth(IPV4_TCP) + b"\x00" * 6)  # padded to the 64-byte minimum
    short_udp = net.decode_frame(0.0, 1, eth(ipv4(17, udp(1, 2, b"x"))) + b"\xee" * 17)
    assert (tcp.payload, tcp.ip_len) == (b"ping", 44)
    assert (short_udp.payload, short_udp.ip_len) == (b"x", 29)


def test_udp_length_bounds_the_payload_inside_the_ip_packet() -> None:
    datagram = struct.pack("!HHHH", 1000, 53, 8 + 3, 0) + b"abcTRAILER"  # UDP says 3 bytes of payload
    assert net.decode_frame(0.0, 1, eth(ipv4(17, datagram))).payload == b"abc"


def test_short_capture_keeps_ip_len_from_the_header() -> None:
    result = net.decode_frame(0.0, 1, eth(IPV4_TCP)[:-2])  # snaplen cut two payload bytes
    assert (result.payload, result.ip_len) == (b"pi", 44)


def test_tcp_options_are_skipped() -> None:
    options = unhex("020405b4 01030307")  # MSS 1460, NOP, window scale 7
    segment = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 0x70, 0x12, 0, 0, 0) + options + b"data"
    result = net.decode_frame(0.0, 1, eth(ipv4(6, segment)))
    assert (result.flags, result.payload) == (0x12, b"data")


def test_ipv4_options_take_the_generic_path_with_the_same_result() -> None:
    router_alert = unhex("94040000")  # IPv4 option 148 (router alert), length 4
    result = net.decode_frame(0.0, 1, eth(ipv4(17, udp(9, 10, b"opt"), options=router_alert)))
    assert (l4(result)[3:], result.payload, result.ip_len) == ((9, 10), b"opt", 35)


def test_zero_total_length_from_segmentation_offload_uses_the_capture() -> None:
    frame = eth(ipv4(6, IPV4_TCP[20:], total_len=0))
    result = net.decode_frame(0.0, 1, frame)
    assert (result.ip_len, result.payload) == (44, b"ping")


def test_ipv4_first_fragment_is_an_ipfragment_for_reassembly() -> None:
    frame = eth(ipv4(17, udp(1, 2, b"0123456789"), frag=0x2000, ident=0x1234))  # MF set, offset 0
    assert net.decode_frame(3.0, 1, frame) == IPFragment(
        3.0, bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]), 17, 0x1234, 0, True, udp(1, 2, b"0123456789")
    )


def test_ipv4_last_fragment_reports_its_byte_offset() -> None:
    result = net.decode_frame(0.0, 1, eth(ipv4(17, b"tail", frag=185)))  # offset 185 * 8, MF clear
    assert (result.offset, result.more, result.data) == (1480, False, b"tail")


def test_icmp_arp_and_unknown_link_types_are_none() -> None:
    assert net.decode_frame(0.0, 1, eth(ipv4(1, unhex("0800f7ff00000000")))) is None  # ICMP echo request
    assert net.decode_frame(0.0, 1, eth(bytes(28), etype=0x0806)) is None  # ARP
    assert net.decode_frame(0.0, 147, IPV4_TCP) is None  # LINKTYPE_USER0


# ---------------------------------------------------------------------------
# IPv6
# ---------------------------------------------------------------------------


def test_ethernet_ipv6_udp() -> None:
    result = net.decode_frame(0.0, 1, eth(IPV6_UDP, etype=0x86DD))
    assert (l4(result), result.ip_len, result.payload) == (INNER_UDP6, 52, b"dns!")


def test_ipv6_extension_headers_are_walked_to_the_transport() -> None:
    chain = unhex("""
        3c 00 0104 00000000     # hop-by-hop: next 60, length 0 (8 bytes), PadN
        2b 00 0104 00000000     # destination options: next 43, 8 bytes
        33 00 00 00 00000000    # routing: next 51 (AH), length 0, type 0, segments left 0
        11 01 0000 00000001 00000002  # AH: next 17 (UDP), payload length 1 -> 12 bytes
    """)
    result = net.decode_frame(0.0, 1, eth(ipv6(0, chain + udp(1, 2, b"x"), A6, B6), etype=0x86DD))
    assert (l4(result), result.payload, result.ip_len) == (("udp", A6, B6, 1, 2), b"x", 40 + 36 + 9)


def test_ipv6_atomic_fragment_is_decoded_as_a_whole_packet() -> None:
    atomic = unhex("11 00 0000 0000abcd")  # fragment header: next UDP, offset 0, M clear, id
    result = net.decode_frame(0.0, 229, ipv6(44, atomic + udp(7, 8, b"whole")))
    assert (l4(result)[3:], result.payload) == ((7, 8), b"whole")


def test_ipv6_fragment_is_an_ipfragment() -> None:
    first = unhex("11 00 0001 00000009")  # next UDP, offset 0, M set, id 9
    later = unhex("11 00 00b8 00000009")  # offset 23 (184 bytes), M clear
    r1 = net.decode_frame(0.0, 229, ipv6(44, first + udp(7, 8, b"part"), A6, B6))
    r2 = net.decode_frame(0.0, 229, ipv6(44, later + b"rest", A6, B6))
    assert r1 == IPFragment(0.0, A6, B6, 17, 9, 0, True, udp(7, 8, b"part"))
    assert (r2.offset, r2.more, r2.data) == (184, False, b"rest")


def test_ipv6_esp_and_no_next_header_are_none() -> None:
    assert net.decode_frame(0.0, 229, ipv6(50, bytes(24))) is None
    assert net.decode_frame(0.0, 229, ipv6(59, b"")) is None


def test_ipv6_zero_payload_length_uses_the_capture() -> None:
    frame = ipv6(17, udp(1, 2, b"jumbo"))
    frame = frame[:4] + b"\x00\x00" + frame[6:]  # payload length 0 (jumbogram / offload)
    result = net.decode_frame(0.0, 229, frame)
    assert (result.ip_len, result.payload) == (53, b"jumbo")


# ---------------------------------------------------------------------------
# decode_l4 (after reassembly in flows)
# ---------------------------------------------------------------------------


def test_decode_l4_on_a_reassembled_udp_datagram() -> None:
    payload = udp(5353, 53, b"x" * 3000)
    assert net.decode_l4(4.0, A4, B4, 17, payload, 3028) == L4Packet(4.0, A4, B4, 17, 5353, 53, 3028, 0, 0, b"x" * 3000)


def test_decode_l4_follows_a_tunnel_in_a_reassembled_datagram() -> None:
    result = net.decode_l4(0.0, A4, B4, 47, gre(0x0800, IPV4_TCP), 68)
    assert (l4(result), result.ip_len) == (INNER_TCP4, 44)


def test_decode_l4_ignores_other_protocols() -> None:
    assert net.decode_l4(0.0, A4, B4, 1, b"\x08\x00\x00\x00", 24) is None


# ---------------------------------------------------------------------------
# One test per anomaly name
# ---------------------------------------------------------------------------

NET_ANOMALY_FRAMES: dict[str, tuple[int, bytes]] = {
    "ip.truncated": (101, b""),
    "ip.bad_version": (101, b"\x50" + bytes(39)),
    "ipv4.truncated": (1, eth(IPV4_TCP[:19])),
    "ipv4.bad_version": (1, eth(b"\x65" + IPV4_TCP[1:])),
    "ipv4.bad_ihl": (1, eth(b"\x44" + IPV4_TCP[1:])),
    "ipv4.bad_total_len": (1, eth(IPV4_TCP[:2] + b"\x00\x10" + IPV4_TCP[4:])),  # 16 < 20
    "ipv6.truncated": (1, eth(IPV6_UDP[:39], etype=0x86DD)),
    "ipv6.bad_version": (1, eth(b"\x40" + IPV6_UDP[1:], etype=0x86DD)),
    "ipv6.ext_truncated": (229, ipv6(0, unhex("11 05 000000000000"))),  # hop-by-hop claims 48 bytes
    "ipv6.too_many_ext": (229, ipv6(60, unhex("3c 00 0000 00000000") * 17 + udp(1, 2, b""))),
    "tcp.truncated": (228, ipv4(6, IPV4_TCP[20:39])),
    "tcp.bad_offset": (228, ipv4(6, IPV4_TCP[20:32] + b"\x40" + IPV4_TCP[33:])),  # data offset 4
    "udp.truncated": (228, ipv4(17, b"\x00\x01\x00\x02")),
    "udp.bad_len": (228, ipv4(17, struct.pack("!HHHH", 1, 2, 4, 0))),  # length below 8
}


@pytest.mark.parametrize("name", sorted(NET_ANOMALY_FRAMES))
def test_net_anomaly(name: str) -> None:
    linktype, frame = NET_ANOMALY_FRAMES[name]
    assert net.decode_frame(0.0, linktype, frame) == Anomaly(name)


def test_udp_length_past_the_ip_payload_is_bad_len() -> None:
    assert net.decode_frame(0.0, 228, ipv4(17, struct.pack("!HHHH", 1, 2, 99, 0) + b"ab")) == net.UDP_BAD_LEN


def test_tcp_header_longer_than_the_ip_payload_is_bad_offset() -> None:
    segment = IPV4_TCP[20:32] + b"\xf0" + IPV4_TCP[33:]  # data offset 15 = 60 bytes, only 24 there
    assert net.decode_frame(0.0, 228, ipv4(6, segment)) == net.TCP_BAD_OFFSET


def test_frame_decode_error_is_returned_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_peeler(data: bytes, off: int, end: int) -> None:
        raise IndexError("a bug in a peeler")

    peelers = list(net._PEELERS)
    peelers[K_ETHER] = broken_peeler
    monkeypatch.setattr(net, "_PEELERS", tuple(peelers))
    assert net.decode_frame(0.0, 1, eth(IPV4_TCP, etype=0x86DD)) == Anomaly("frame.decode_error")


def test_every_net_anomaly_has_a_test() -> None:
    assert set(net.ANOMALIES) == set(NET_ANOMALY_FRAMES) | {"frame.decode_error"}


# ---------------------------------------------------------------------------
# Properties: never raise, whatever the bytes, for every link type
# ---------------------------------------------------------------------------

LINKTYPES = sorted(LINKTYPE_KINDS) + [147, 65535]  # every supported type and two unknown ones


@settings(max_examples=300, deadline=None)
@given(linktype=st.sampled_from(LINKTYPES), data=st.binary(max_size=200))
def test_random_bytes_never_raise(linktype: int, data: bytes) -> None:
    check_contract(net.decode_frame(0.0, linktype, data))
    assert isinstance(net.outer_fragment(linktype, data), bool)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(LINK_SAMPLES)).flatmap(lambda lt: st.tuples(st.just(lt), mutations(LINK_SAMPLES[lt]))))
def test_mutated_valid_frames_never_raise(case: tuple[int, bytes]) -> None:
    linktype, frame = case
    check_contract(net.decode_frame(0.0, linktype, frame))
    assert isinstance(net.outer_fragment(linktype, frame), bool)


@settings(max_examples=300, deadline=None)
@given(
    mutations(eth(IPV4_TCP))
    | mutations(eth(ipv4(17, udp(1, 53, b"q" * 12))))
    | mutations(eth(IPV4_TCP, tags=((0x8100, 5),)))
    | mutations(eth(ipv4(17, udp(1, 53, b"q" * 12)), tags=((0x8100, 5),)))
)
def test_fast_path_agrees_with_the_generic_walk(frame: bytes) -> None:
    assert net.decode_frame(0.0, 1, frame) == net._walk(0.0, frame, K_ETHER, 0, len(frame))


@settings(max_examples=200, deadline=None)
@given(proto=st.sampled_from([4, 6, 17, 41, 47, 97, 137, 1]), payload=st.binary(max_size=120))
def test_decode_l4_never_raises(proto: int, payload: bytes) -> None:
    check_contract(net.decode_l4(0.0, A4, B4, proto, payload, len(payload) + 20))
