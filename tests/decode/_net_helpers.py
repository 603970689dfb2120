"""Test helpers for the link, tunnel and network decoders.

Innermost packets are annotated hex; the layers around them come from small builders
that fill in lengths, so each test reads as "this inner packet, wrapped in that".
"""

from __future__ import annotations

import struct

from _app_helpers import unhex

from detector.decode import link, net, tunnels
from detector.model import Anomaly, IPFragment, L4Packet

ALL_ANOMALIES: dict[str, str] = {**link.ANOMALIES, **tunnels.ANOMALIES, **net.ANOMALIES}

A4, B4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])  # inner IPv4 client / server
A6 = bytes.fromhex("20010db8000000000000000000000001")  # 2001:db8::1
B6 = bytes.fromhex("20010db8000000000000000000000002")  # 2001:db8::2

# The innermost packet most tests wrap: 10.0.0.1:40000 -> 10.0.0.2:443, TCP SYN, "ping".
IPV4_TCP = unhex("""
    45 00 002c              # IPv4, IHL 5, total length 44
    0001 0000               # id 1, no flags, offset 0
    40 06 0000              # TTL 64, protocol 6 (TCP), checksum (not checked)
    0a000001 0a000002       # 10.0.0.1 -> 10.0.0.2
    9c40 01bb               # TCP 40000 -> 443
    00000064 00000000       # seq 100, ack 0
    50 02 ffff 0000 0000    # data offset 5 (20 bytes), flags SYN, window, checksum, urgent
    70696e67                # "ping"
""")

# [2001:db8::1]:54321 -> [2001:db8::2]:53, UDP, "dns!".
IPV6_UDP = unhex("""
    60000000                # IPv6, traffic class 0, flow label 0
    000c 11 40              # payload length 12, next header 17 (UDP), hop limit 64
    20010db8000000000000000000000001   # 2001:db8::1
    20010db8000000000000000000000002   # 2001:db8::2
    d431 0035 000c 0000     # UDP 54321 -> 53, length 12, checksum
    646e7321                # "dns!"
""")

INNER_TCP4 = ("tcp", A4, B4, 40000, 443)
INNER_UDP6 = ("udp", A6, B6, 54321, 53)

MAC_DST, MAC_SRC = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")


def eth(payload: bytes, etype: int = 0x0800, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    """An Ethernet II frame; `tags` are (TPID, VLAN id) pairs, outermost first."""
    head = MAC_DST + MAC_SRC
    for tpid, vid in tags:
        head += struct.pack("!HH", tpid, vid)
    return head + struct.pack("!H", etype) + payload


def ipv4(
    proto: int,
    payload: bytes,
    src: bytes = bytes([192, 0, 2, 1]),
    dst: bytes = bytes([192, 0, 2, 2]),
    frag: int = 0,
    ident: int = 7,
    options: bytes = b"",
    total_len: int | None = None,
) -> bytes:
    """An IPv4 header (checksum left 0: the decoder does not check it) followed by `payload`."""
    ihl = 5 + len(options) // 4
    length = ihl * 4 + len(payload) if total_len is None else total_len
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, ident, frag, 64, proto, 0, src, dst) + options + payload


def ipv6(nh: int, payload: bytes, src: bytes = bytes(15) + b"\x01", dst: bytes = bytes(15) + b"\x02") -> bytes:
    """An IPv6 header followed by `payload` (extension headers included in it)."""
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64, src, dst) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header followed by `payload`."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def gre(proto: int, payload: bytes, flags: int = 0, optional: bytes = b"") -> bytes:
    """A GRE header; `optional` holds the checksum/key/sequence words that `flags` announce."""
    return struct.pack("!HH", flags, proto) + optional + payload


def l4(result: object) -> tuple[str, bytes, bytes, int, int] | None:
    """The (transport, src, dst, sport, dport) of an L4Packet, else None."""
    if not isinstance(result, L4Packet):
        return None
    return ("tcp" if result.proto == 6 else "udp"), result.src, result.dst, result.sport, result.dport


def check_contract(result: object) -> None:
    """A frame decoder returns an L4Packet, an IPFragment, a known Anomaly or None."""
    assert result is None or isinstance(result, (L4Packet, IPFragment, Anomaly)), result
    if isinstance(result, Anomaly):
        assert result.kind in ALL_ANOMALIES, result.kind
        assert result != net.DECODE_ERROR, "an internal bounds error escaped a peeler"


# One valid frame per supported link type, each carrying IPV4_TCP (IPV6_UDP for
# LINKTYPE_IPV6). test_link checks each decodes; the property tests mutate them.
LINK_SAMPLES: dict[int, bytes] = {
    0: unhex("02000000") + IPV4_TCP,  # NULL: AF_INET (2) in little-endian host order
    1: eth(IPV4_TCP),  # Ethernet II, EtherType 0x0800
    9: unhex("ff03 0021") + IPV4_TCP,  # PPP: address/control, protocol 0x0021 IPv4
    12: IPV4_TCP,  # DLT_RAW (BSD)
    14: IPV4_TCP,  # DLT_RAW (OpenBSD)
    50: unhex("ff03 0021") + IPV4_TCP,  # PPP in HDLC-like framing
    51: unhex("""
        11 00 0001 002e     # PPPoE: ver 1 type 1, code 0 (session), session 1, length 46
        0021                # PPP protocol IPv4
    """)
    + IPV4_TCP,
    101: IPV4_TCP,  # LINKTYPE_RAW
    104: unhex("0f 00 0800") + IPV4_TCP,  # Cisco HDLC: unicast address, control, EtherType IPv4
    108: unhex("00000002") + IPV4_TCP,  # LOOP: AF_INET in network byte order
    113: unhex("""
        0000                # packet type: sent to us
        0001                # ARPHRD_ETHER
        0006                # link-layer address length 6
        020000000001 0000   # address, padded to 8 bytes
        0800                # protocol: IPv4
    """)
    + IPV4_TCP,
    149: unhex("""
        6c000000            # PKTAP header length 108 (little-endian)
        01000000            # type next: packet
        01000000            # DLT 1: Ethernet
    """)
    + bytes(96)
    + eth(IPV4_TCP),  # rest of the PKTAP header (interface name, pid, ...)
    204: unhex("00 ff03 0021") + IPV4_TCP,  # PPP with direction: 0 = received
    228: IPV4_TCP,  # LINKTYPE_IPV4
    229: IPV6_UDP,  # LINKTYPE_IPV6
    239: unhex("""
        02 00 0000          # NFLOG: family AF_INET, version 0, resource id 0
        0800 0100           # TLV length 8, type 1 (NFULA_PACKET_HDR), little-endian host
        0800 03 00          #   hw protocol 0x0800, hook 3, pad
        3000 0900           # TLV length 48, type 9 (NFULA_PAYLOAD)
    """)
    + IPV4_TCP,
    258: unhex("6c000000 01000000 01000000") + bytes(96) + eth(IPV4_TCP),  # LINKTYPE_PKTAP
    276: unhex("""
        0800                # protocol: IPv4
        0000                # reserved
        00000002            # interface index 2
        0001                # ARPHRD_ETHER
        00                  # packet type: sent to us
        06                  # address length 6
        020000000001 0000   # address, padded to 8 bytes
    """)
    + IPV4_TCP,
}
