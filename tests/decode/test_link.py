"""Link layers: each pcap link type, Ethernet tags, MPLS, PPP/PPPoE, NSH, and one test per link anomaly."""

from __future__ import annotations

import pytest
from _app_helpers import unhex
from _net_helpers import A6, B6, INNER_TCP4, INNER_UDP6, IPV4_TCP, IPV6_UDP, LINK_SAMPLES, eth, l4
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE

from detector.decode import link
from detector.decode.net import decode_frame
from detector.model import Anomaly


def decode(linktype: int, frame: bytes) -> object:
    return decode_frame(0.0, linktype, frame)


@pytest.mark.parametrize("linktype", sorted(LINK_SAMPLES))
def test_every_supported_link_type_reaches_the_inner_packet(linktype: int) -> None:
    expected = INNER_UDP6 if linktype == 229 else INNER_TCP4
    assert l4(decode(linktype, LINK_SAMPLES[linktype])) == expected


def test_every_link_type_in_the_table_has_a_sample() -> None:
    assert set(link.LINKTYPE_KINDS) == set(LINK_SAMPLES)


# ---------------------------------------------------------------------------
# Capture headers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("af", [b"\x00\x00\x00\x18", b"\x1c\x00\x00\x00", b"\x1e\x00\x00\x00"])
def test_null_loopback_ipv6_families_in_either_byte_order(af: bytes) -> None:
    assert l4(decode(0, af + IPV6_UDP)) == INNER_UDP6  # AF_INET6: 24 BE, 28 LE (FreeBSD), 30 LE (Darwin)


def test_null_loopback_unknown_family_is_none() -> None:
    assert decode(0, unhex("07000000") + IPV4_TCP) is None  # AF_OSI


def test_raw_link_type_picks_the_ip_version_from_the_nibble() -> None:
    assert l4(decode(101, IPV6_UDP)) == INNER_UDP6


def test_sll_with_a_vlan_tag_in_the_protocol_field() -> None:
    header = unhex("""
        0000 0001 0006 020000000001 0000   # to us, ARPHRD_ETHER, address
        8100                               # protocol: 802.1Q, the tag follows
        0064 0800                          # VLAN 100, then IPv4
    """)
    assert l4(decode(113, header + IPV4_TCP)) == INNER_TCP4


def test_sll_arp_is_none() -> None:
    assert decode(113, unhex("0000 0001 0006 020000000001 0000 0806") + bytes(28)) is None


def test_sll_and_sll2_built_by_scapy() -> None:
    packet = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=443)
    assert l4(decode(113, bytes(CookedLinux() / packet))) == INNER_TCP4
    assert l4(decode(276, bytes(CookedLinuxV2() / packet))) == INNER_TCP4


def test_nflog_big_endian_host() -> None:
    frame = (
        unhex("""
        0a 00 0000          # NFLOG: family AF_INET6, version 0, resource id 0
        0008 0001           # TLV length 8, type 1 (packet header), big-endian host
        86dd 03 00          #   hw protocol, hook, pad
        0038 0009           # TLV length 56, type 9 (payload)
    """)
        + IPV6_UDP
    )
    assert l4(decode(239, frame)) == INNER_UDP6


def test_nflog_payload_tlv_bounds_the_packet_and_padding_is_skipped() -> None:
    frame = (
        unhex("""
        02 00 0000          # family AF_INET
        0500 0a00 41 000000 # TLV length 5 (prefix "A"), type 10, padded to 8
        3000 0980           # TLV length 48, type 9 with NLA_F_NESTED-style high bit
    """)
        + IPV4_TCP
        + b"\xee" * 4
    )  # bytes after the payload TLV
    result = decode(239, frame)
    assert (l4(result), result.payload) == (INNER_TCP4, b"ping")


def test_nflog_without_payload_tlv_is_none() -> None:
    assert decode(239, unhex("02 00 0000 0800 0100 0800 0300")) is None


def test_pktap_inner_raw_dlt_and_unknown_dlt() -> None:
    raw = unhex("6c000000 01000000 0c000000") + bytes(96) + IPV4_TCP  # DLT 12: raw IP
    unknown = unhex("6c000000 01000000 7f000000") + bytes(96) + IPV4_TCP  # DLT 127: radiotap
    nested = unhex("6c000000 01000000 02010000") + bytes(96) + LINK_SAMPLES[258]  # PKTAP in PKTAP
    assert l4(decode(258, raw)) == INNER_TCP4
    assert decode(258, unknown) is None
    assert decode(258, nested) is None


def test_ppp_protocol_field_compression_and_non_ip_protocols() -> None:
    assert l4(decode(9, b"\x21" + IPV4_TCP)) == INNER_TCP4  # no ff03, 1-byte protocol 0x21
    assert l4(decode(9, unhex("0057") + IPV6_UDP)) == INNER_UDP6
    assert decode(9, unhex("ff03 c021 01010004")) is None  # LCP configure-request


def test_cisco_hdlc_slarp_is_none() -> None:
    assert decode(104, unhex("8f 00 8035") + bytes(20)) is None


# ---------------------------------------------------------------------------
# Ethernet, VLAN tags, SNAP
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tags",
    [
        ((0x8100, 0),),  # 802.1Q priority tag, VLAN 0
        ((0x88A8, 10), (0x8100, 20)),  # 802.1ad QinQ
        ((0x9100, 1), (0x9100, 2), (0x8100, 3)),  # triple tag, legacy TPID
    ],
    ids=["dot1q-vlan0", "qinq-88a8", "triple-9100"],
)
def test_vlan_tags_are_walked(tags: tuple[tuple[int, int], ...]) -> None:
    assert l4(decode(1, eth(IPV4_TCP, tags=tags))) == INNER_TCP4


def test_qinq_built_by_scapy() -> None:
    frame = Ether() / Dot1AD(vlan=5) / Dot1Q(vlan=6) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=443)
    assert l4(decode(1, bytes(frame))) == INNER_TCP4


def test_ieee_802_3_with_snap_carries_an_ethertype() -> None:
    frame = (
        unhex("""
        020000000002 020000000001 0034   # 802.3: length 52
        aa aa 03 000000 0800             # LLC SNAP, OUI 0, EtherType IPv4
    """)
        + IPV4_TCP
    )
    assert l4(decode(1, frame)) == INNER_TCP4


def test_ieee_802_3_spanning_tree_is_none() -> None:
    assert decode(1, unhex("0180c2000000 020000000001 0026 424203 0000") + bytes(35)) is None


# ---------------------------------------------------------------------------
# MPLS, PPPoE, NSH
# ---------------------------------------------------------------------------


def test_mpls_label_stack_until_bottom_of_stack() -> None:
    stack = unhex("""
        00010040        # label 16, TC 0, S 0, TTL 64
        00011140        # label 17, TC 0, S 1 (bottom of stack), TTL 64
    """)
    assert l4(decode(1, eth(stack + IPV4_TCP, etype=0x8847))) == INNER_TCP4
    assert l4(decode(1, eth(unhex("00002140") + IPV6_UDP, etype=0x8847))) == INNER_UDP6  # IPv6 explicit null


def test_mpls_pseudowire_control_word_is_not_followed() -> None:
    assert decode(1, eth(unhex("00010140 00000000") + eth(IPV4_TCP), etype=0x8847)) is None


def test_mpls_in_vlan_built_by_scapy() -> None:
    frame = (
        Ether()
        / Dot1Q(vlan=7)
        / MPLS(label=100, s=1)
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / TCP(sport=40000, dport=443)
    )
    assert l4(decode(1, bytes(frame))) == INNER_TCP4


def test_pppoe_session_length_drops_ethernet_padding() -> None:
    session = unhex("11 00 beef 0003 0021") + bytes([0x45])  # length 3: protocol + 1 byte
    assert decode(1, eth(session + bytes(40), etype=0x8864)) == Anomaly("ipv4.truncated")
    frame = (
        Ether()
        / PPPoE(sessionid=1)
        / PPP(proto=0x0021)
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / TCP(sport=40000, dport=443)
    )
    assert l4(decode(1, bytes(frame) + bytes(10))) == INNER_TCP4


def test_pppoe_discovery_is_none() -> None:
    assert decode(1, eth(unhex("11 09 0000 0004 0101 0000"), etype=0x8863)) is None  # PADI


def test_nsh_over_ethernet() -> None:
    nsh = unhex("""
        00 06 01 02       # version 0, TTL 0, length 6 words (24 bytes), MD type 1, next protocol IPv6
        000001 ff         # service path 1, service index 255
    """) + bytes(16)  # MD type 1 context headers
    result = decode(1, eth(nsh + IPV6_UDP, etype=0x894F))
    assert (result.src, result.dst) == (A6, B6)


# ---------------------------------------------------------------------------
# One test per anomaly name
# ---------------------------------------------------------------------------

LINK_ANOMALY_FRAMES: dict[str, tuple[int, bytes]] = {
    "eth.truncated": (1, bytes(13)),
    "vlan.truncated": (1, eth(b"\x00\x05", etype=0x8100)),
    "vlan.too_many_tags": (1, eth(IPV4_TCP, tags=((0x8100, 1),) * (link.MAX_VLAN_TAGS + 1))),
    "mpls.truncated": (1, eth(unhex("00010040 0001"), etype=0x8847)),
    "mpls.too_many_labels": (1, eth(unhex("00010040") * (link.MAX_MPLS_LABELS + 1) + IPV4_TCP, etype=0x8847)),
    "ppp.truncated": (9, b"\xff\x03\x00"),
    "pppoe.truncated": (51, unhex("11 00 0001 0002 00")),
    "pppoe.bad_header": (51, unhex("12 00 0001 002e 0021") + IPV4_TCP),
    "nsh.truncated": (1, eth(unhex("00 06 01 01 000001ff"), etype=0x894F)),
    "nsh.bad_header": (1, eth(unhex("40 02 01 01 000001ff") + IPV4_TCP, etype=0x894F)),
    "null.truncated": (0, b"\x02\x00"),
    "sll.truncated": (113, bytes(15)),
    "sll2.truncated": (276, bytes(19)),
    "chdlc.truncated": (104, b"\x0f\x00\x08"),
    "nflog.truncated": (239, unhex("02 00 0000 3000 0900 45")[:6]),
    "nflog.bad_version": (239, unhex("02 01 0000") + LINK_SAMPLES[239][4:]),
    "nflog.bad_tlv": (239, unhex("02 00 0000 0200 0900") + IPV4_TCP),
    "pktap.bad_header_len": (258, unhex("08000000 01000000 01000000") + eth(IPV4_TCP)),
}


@pytest.mark.parametrize("name", sorted(LINK_ANOMALY_FRAMES))
def test_link_anomaly(name: str) -> None:
    linktype, frame = LINK_ANOMALY_FRAMES[name]
    assert decode(linktype, frame) == Anomaly(name)


def test_every_link_anomaly_has_a_test() -> None:
    assert set(link.ANOMALIES) == set(LINK_ANOMALY_FRAMES)
