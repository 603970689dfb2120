"""Tunnels: IP-in-IP, GRE (ERSPAN I/II/III, PPTP, WCCP), the UDP tunnels, nesting depth, one test per anomaly."""

from __future__ import annotations

import pytest
from _app_helpers import mutations, unhex
from _net_helpers import (
    INNER_TCP4,
    INNER_UDP6,
    IPV4_TCP,
    IPV6_UDP,
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
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from detector.decode import tunnels
from detector.decode.net import decode_frame
from detector.model import Anomaly

INNER = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=443)
OUTER = Ether() / IP(src="192.0.2.1", dst="192.0.2.2")


def decode(frame: bytes) -> object:
    return decode_frame(0.0, 1, frame)


def over_ipv4(proto: int, payload: bytes) -> bytes:
    return eth(ipv4(proto, payload))


def over_udp(sport: int, dport: int, payload: bytes) -> bytes:
    return eth(ipv4(17, udp(sport, dport, payload)))


# ---------------------------------------------------------------------------
# IP in IP
# ---------------------------------------------------------------------------


def test_ipv4_in_ipv4_reports_the_inner_addresses_and_length() -> None:
    result = decode(over_ipv4(4, IPV4_TCP))
    assert (l4(result), result.ip_len, result.payload) == (INNER_TCP4, 44, b"ping")


def test_ipv6_in_ipv4() -> None:
    assert l4(decode(over_ipv4(41, IPV6_UDP))) == INNER_UDP6


def test_ipv4_in_ipv6_and_ipv6_in_ipv6() -> None:
    assert l4(decode(eth(ipv6(4, IPV4_TCP), etype=0x86DD))) == INNER_TCP4
    assert l4(decode(eth(ipv6(41, IPV6_UDP), etype=0x86DD))) == INNER_UDP6


def test_mpls_in_ip_and_etherip() -> None:
    assert l4(decode(over_ipv4(137, unhex("00010140") + IPV4_TCP))) == INNER_TCP4
    assert l4(decode(over_ipv4(97, unhex("3000") + eth(IPV4_TCP)))) == INNER_TCP4  # EtherIP version 3


# ---------------------------------------------------------------------------
# GRE
# ---------------------------------------------------------------------------


def test_gre_plain_ipv4_and_ipv6() -> None:
    assert l4(decode(over_ipv4(47, gre(0x0800, IPV4_TCP)))) == INNER_TCP4
    assert l4(decode(over_ipv4(47, gre(0x86DD, IPV6_UDP)))) == INNER_UDP6


def test_gre_with_checksum_key_and_sequence() -> None:
    optional = unhex("""
        abcd 0000       # checksum, reserved1
        0000002a        # key 42
        00000007        # sequence number 7
    """)
    assert l4(decode(over_ipv4(47, gre(0x0800, IPV4_TCP, flags=0xB000, optional=optional)))) == INNER_TCP4


def test_gre_transparent_ethernet_bridging_and_ppp() -> None:
    assert l4(decode(over_ipv4(47, gre(0x6558, eth(IPV4_TCP))))) == INNER_TCP4
    assert l4(decode(over_ipv4(47, gre(0x880B, unhex("ff03 0021") + IPV4_TCP)))) == INNER_TCP4


def test_gre_rfc1701_source_route_entries_are_skipped() -> None:
    routing = unhex("""
        0000 0000               # checksum + offset (present because R is set)
        0800 00 04 c0000201     # SRE: address family IPv4, offset 0, length 4, one address
        0000 00 00              # null SRE ends the list
    """)
    assert l4(decode(over_ipv4(47, gre(0x0800, IPV4_TCP, flags=0x4000, optional=routing)))) == INNER_TCP4


def test_gre_unknown_protocol_is_none() -> None:
    assert decode(over_ipv4(47, gre(0x9000, bytes(40)))) is None  # loopback test protocol


def test_erspan_type_i_has_no_header_without_the_sequence_bit() -> None:
    assert l4(decode(over_ipv4(47, gre(0x88BE, eth(IPV4_TCP))))) == INNER_TCP4


def test_erspan_type_ii() -> None:
    header = unhex("""
        1064            # version 1 (type II), VLAN 100
        0001            # COS 0, En 0, T 0, session id 1
        00000005        # reserved, index 5
    """)
    frame = over_ipv4(47, gre(0x88BE, header + eth(IPV4_TCP), flags=0x1000, optional=unhex("00000001")))
    assert l4(decode(frame)) == INNER_TCP4


def test_erspan_type_ii_and_iii_built_by_scapy() -> None:
    type_ii = OUTER / GRE(seqnum_present=1, proto=0x88BE) / ERSPAN_II(session_id=1) / Ether() / INNER
    type_iii = OUTER / GRE(seqnum_present=1, proto=0x22EB) / ERSPAN_III(session_id=1) / Ether() / INNER
    assert l4(decode(bytes(type_ii))) == INNER_TCP4
    assert l4(decode(bytes(type_iii))) == INNER_TCP4


def test_erspan_type_iii_ip_frame_with_platform_subheader() -> None:
    header = unhex("""
        2064 0001       # version 2 (type III), VLAN 100, session 1
        12345678        # timestamp
        0000            # security group tag
        08 01           # P 0, frame type 2 (IP), hw id 0, D 0, Gra 0, O 1
        1c00000000000000  # platform-specific subheader (platform id 0x7)
    """)
    frame = over_ipv4(47, gre(0x22EB, header + IPV4_TCP, flags=0x1000, optional=unhex("00000001")))
    assert l4(decode(frame)) == INNER_TCP4


def test_erspan_type_iii_unknown_frame_type_is_none() -> None:
    header = unhex("2001 0065 34760b01 0000 1e00")  # frame type 7, as in tcpdump's erspan-type-iii-ft-7
    assert decode(over_ipv4(47, gre(0x22EB, header + bytes(64), flags=0x1000, optional=bytes(4)))) is None


def test_pptp_enhanced_gre_carries_ppp() -> None:
    pptp = unhex("""
        3081 880b       # K, S, A set, version 1; protocol PPP
        0030 0011       # payload length 48, call id 17
        00000003        # sequence number
        00000002        # acknowledgement number
        ff03 0021       # PPP: address/control, IPv4
    """)
    assert l4(decode(over_ipv4(47, pptp + IPV4_TCP + b"\x00" * 4))) == INNER_TCP4


def test_pptp_acknowledgement_without_payload_is_none() -> None:
    assert decode(over_ipv4(47, unhex("2081 880b 0000 0011 00000002"))) is None


def test_wccp_redirect_with_and_without_redirect_header() -> None:
    assert l4(decode(over_ipv4(47, gre(0x883E, unhex("00000000") + IPV4_TCP)))) == INNER_TCP4  # WCCPv2
    assert l4(decode(over_ipv4(47, gre(0x883E, IPV4_TCP)))) == INNER_TCP4  # WCCPv1


# ---------------------------------------------------------------------------
# UDP tunnels
# ---------------------------------------------------------------------------

VXLAN_HEADER = unhex("08 000000 000064 00")  # flags: I (valid VNI); VNI 100


@pytest.mark.parametrize("port", [4789, 8472])
def test_vxlan_on_the_iana_and_linux_ports(port: int) -> None:
    result = decode(over_udp(51000, port, VXLAN_HEADER + eth(IPV4_TCP)))
    assert (l4(result), result.ip_len) == (INNER_TCP4, 44)


def test_vxlan_built_by_scapy() -> None:
    frame = OUTER / UDP(sport=51000, dport=4789) / VXLAN(vni=100) / Ether() / INNER
    assert l4(decode(bytes(frame))) == INNER_TCP4


def test_vxlan_port_without_the_i_flag_stays_plain_udp() -> None:
    result = decode(over_udp(51000, 4789, unhex("00 000000 000064 00") + eth(IPV4_TCP)))
    assert (result.sport, result.dport, result.src) == (51000, 4789, bytes([192, 0, 2, 1]))


def test_vxlan_gpe_next_protocol_ipv4_and_nsh() -> None:
    gpe_ipv4 = unhex("0c 0000 01 000064 00")  # flags I+P, version 0, next protocol 1 (IPv4), VNI 100
    gpe_nsh = unhex("0c 0000 04 000064 00")  # next protocol 4 (NSH)
    nsh = unhex("0002 0101 000001ff")  # NSH: version 0, length 2 words, MD type 1, next protocol 1 (IPv4)
    assert l4(decode(over_udp(1, 4790, gpe_ipv4 + IPV4_TCP))) == INNER_TCP4
    assert l4(decode(over_udp(1, 4790, gpe_nsh + nsh + IPV4_TCP))) == INNER_TCP4


def test_geneve_skips_options() -> None:
    geneve = unhex("""
        02 00 6558          # version 0, option length 2 words, protocol: Ethernet
        000064 00           # VNI 100
        0102 03 01 aabbccdd # one option: class 0x0102, type 3, length 1 word, data
    """)
    assert l4(decode(over_udp(1, 6081, geneve + eth(IPV4_TCP)))) == INNER_TCP4


def test_geneve_built_by_scapy_carrying_ipv4() -> None:
    frame = OUTER / UDP(sport=47101, dport=6081) / GENEVE(proto=0x0800, vni=5) / INNER
    assert l4(decode(bytes(frame))) == INNER_TCP4


def test_geneve_with_a_nonzero_version_stays_plain_udp() -> None:
    assert decode(over_udp(1, 6081, unhex("40 00 6558 00006400") + eth(IPV4_TCP))).dport == 6081


def test_gre_in_udp() -> None:
    assert l4(decode(over_udp(1234, 4754, gre(0x0800, IPV4_TCP)))) == INNER_TCP4


def test_teredo_from_the_server_port_with_origin_and_authentication() -> None:
    auth = unhex("""
        0001 00 00          # authentication indicator, no client id, no auth value
        0102030405060708    # nonce
        00                  # confirmation
    """)
    origin = unhex("0000 f227 3fff fdfe")  # origin indication: obfuscated port and address
    assert l4(decode(over_udp(3544, 50000, IPV6_UDP))) == INNER_UDP6
    assert l4(decode(over_udp(50000, 3544, origin + IPV6_UDP))) == INNER_UDP6
    assert l4(decode(over_udp(3544, 50000, auth + origin + IPV6_UDP))) == INNER_UDP6


def test_teredo_bubble_is_none_and_non_ipv6_stays_plain_udp() -> None:
    assert decode(over_udp(50000, 3544, ipv6(59, b""))) is None  # bubble: no next header
    assert decode(over_udp(50000, 3544, b"\x10" * 48)).dport == 3544  # version nibble 1


def test_gtp_u_with_an_extension_header() -> None:
    gtp = unhex("""
        34 ff 003c          # version 1, PT 1, E set; G-PDU; length 60
        00000001            # TEID 1
        0000 00 85          # sequence, N-PDU, next extension: PDU session container
        01 0009 00          # extension: length 1 word, content, next type 0 (none)
    """)
    assert l4(decode(over_udp(2152, 2152, gtp + IPV6_UDP))) == INNER_UDP6


def test_gtp_u_built_by_scapy_and_echo_request_stays_plain_udp() -> None:
    frame = OUTER / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=1) / INNER
    assert l4(decode(bytes(frame))) == INNER_TCP4
    echo = unhex("32 01 0004 00000000 0001 00 00")  # echo request with sequence number
    assert decode(over_udp(2152, 2152, echo)).dport == 2152


def test_mpls_in_udp() -> None:
    assert l4(decode(over_udp(1, 6635, unhex("00010140") + IPV4_TCP))) == INNER_TCP4


# ---------------------------------------------------------------------------
# Nesting
# ---------------------------------------------------------------------------


def test_gre_erspan_vxlan_nesting_reports_the_innermost_packet() -> None:
    vxlan_frame = eth(ipv4(17, udp(51000, 4789, VXLAN_HEADER + eth(IPV4_TCP))))
    erspan = unhex("1064 0001 00000005")
    frame = over_ipv4(47, gre(0x88BE, erspan + vxlan_frame, flags=0x1000, optional=bytes(4)))
    result = decode(frame)
    assert (l4(result), result.ip_len, result.payload) == (INNER_TCP4, 44, b"ping")


def nested_ip_in_ip(tunnels_count: int) -> bytes:
    packet = IPV4_TCP
    for _ in range(tunnels_count):
        packet = ipv4(4, packet)
    return eth(packet)


def test_nesting_up_to_the_bound_is_decoded() -> None:
    assert l4(decode(nested_ip_in_ip(tunnels.MAX_TUNNEL_DEPTH))) == INNER_TCP4


# ---------------------------------------------------------------------------
# One test per anomaly name
# ---------------------------------------------------------------------------

TUNNEL_ANOMALY_FRAMES: dict[str, bytes] = {
    "tunnel.too_deep": nested_ip_in_ip(tunnels.MAX_TUNNEL_DEPTH + 1),
    "gre.truncated": over_ipv4(47, unhex("b000 0800 0000")),  # C, K, S announce 12 more bytes
    "gre.bad_version": over_ipv4(47, gre(0x0800, IPV4_TCP, flags=0x0002)),
    "gre.bad_pptp": over_ipv4(47, gre(0x0800, IPV4_TCP, flags=0x0001)),  # version 1 without key, not PPP
    "gre.bad_routing": over_ipv4(47, gre(0x0800, unhex("0000 0000 0800 00 40 c0000201"), flags=0x4000)),
    "erspan.truncated": over_ipv4(47, gre(0x88BE, unhex("1064 0001"), flags=0x1000, optional=bytes(4))),
    "erspan.bad_version": over_ipv4(
        47, gre(0x22EB, unhex("3064 0001 00000005") + bytes(8), flags=0x1000, optional=bytes(4))
    ),
    "etherip.bad_header": over_ipv4(97, unhex("1000") + eth(IPV4_TCP)),
}


@pytest.mark.parametrize("name", sorted(TUNNEL_ANOMALY_FRAMES))
def test_tunnel_anomaly(name: str) -> None:
    assert decode(TUNNEL_ANOMALY_FRAMES[name]) == Anomaly(name)


def test_every_tunnel_anomaly_has_a_test() -> None:
    assert set(tunnels.ANOMALIES) == set(TUNNEL_ANOMALY_FRAMES)


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

TUNNEL_SAMPLES = [
    over_ipv4(47, gre(0x0800, IPV4_TCP, flags=0xB000, optional=bytes(12))),
    over_ipv4(47, gre(0x88BE, unhex("1064 0001 00000005") + eth(IPV4_TCP), flags=0x1000, optional=bytes(4))),
    over_ipv4(
        47, gre(0x22EB, unhex("2064 0001 12345678 0000 0801") + bytes(8) + IPV4_TCP, flags=0x1000, optional=bytes(4))
    ),
    over_ipv4(47, unhex("3081 880b 0030 0011 00000003 00000002 ff03 0021") + IPV4_TCP),
    over_ipv4(47, gre(0x0800, IPV4_TCP, flags=0x4000, optional=unhex("00000000 0800 00 04 c0000201 0000 00 00"))),
    over_udp(51000, 4789, VXLAN_HEADER + eth(IPV4_TCP)),
    over_udp(1, 4790, unhex("0c 0000 04 000064 00 0002 0101 000001ff") + IPV4_TCP),
    over_udp(1, 6081, unhex("02 00 6558 000064 00 0102 03 01 aabbccdd") + eth(IPV4_TCP)),
    over_udp(3544, 1, unhex("0001 00 00 0102030405060708 00 0000 f227 3fff fdfe") + IPV6_UDP),
    over_udp(2152, 2152, unhex("34 ff 003c 00000001 0000 00 85 01 0009 00") + IPV6_UDP),
    over_udp(1, 6635, unhex("00010140") + IPV4_TCP),
    over_udp(1, 4754, gre(0x0800, IPV4_TCP)),
]


def test_every_tunnel_sample_decodes_to_the_inner_packet() -> None:
    assert all(l4(decode(frame)) in (INNER_TCP4, INNER_UDP6) for frame in TUNNEL_SAMPLES)


@settings(max_examples=400, deadline=None)
@given(frame=st.sampled_from(TUNNEL_SAMPLES).flatmap(mutations))
def test_mutated_tunnel_frames_never_raise(frame: bytes) -> None:
    check_contract(decode(frame))
