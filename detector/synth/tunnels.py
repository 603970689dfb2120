"""Encapsulations a mirror port delivers: 802.1Q / QinQ tags, and remote-mirroring tunnels
(GRE, ERSPAN type II and III, VXLAN, GENEVE) that wrap a whole captured frame.

Each tunnel is a small callable object `frame -> frame` (it keeps a sequence number and
the outer IP ID), usable as `Path.wrap`.

References: IEEE 802.1Q-2018 §9.6 (tags), 802.1ad (S-tag TPID 0x88a8); RFC 2784 + RFC 2890
(GRE, sequence number); draft-foschiano-erspan-03 §4.1 (ERSPAN type II, GRE 0x88be) and
§4.3 (type III, GRE 0x22eb); RFC 7348 §5 (VXLAN, UDP 4789); RFC 8926 §3.4 (GENEVE, UDP 6081).
"""

from __future__ import annotations

import struct
import zlib

from detector.synth import builders as b

ETH_TEB = 0x6558  # Transparent Ethernet Bridging (RFC 1701 protocol type)
GRE_ERSPAN2 = 0x88BE
GRE_ERSPAN3 = 0x22EB
VXLAN_PORT = 4789
GENEVE_PORT = 6081
MIRROR_SRC = "192.0.2.1"  # the switch or hypervisor that mirrors (TEST-NET-1, RFC 5737)
MIRROR_DST = "192.0.2.100"  # the sensor's collector address
_OUTER_SRC_MAC = b.mac_bytes("00:1b:21:0f:00:01")
_OUTER_DST_MAC = b.mac_bytes("00:1b:21:0f:00:64")


def _inner_ethertype_offset(frame: bytes) -> int:
    """Offset of the ethertype after any VLAN tags of an Ethernet frame."""
    at = 12
    while frame[at:at + 2] in (b"\x81\x00", b"\x88\xa8"):
        at += 4
    return at


def add_vlan(frame: bytes, vid: int, *, pcp: int = 0) -> bytes:
    """Insert one 802.1Q tag after the MAC addresses."""
    return frame[:12] + struct.pack("!HH", b.ETH_VLAN, (pcp << 13) | vid) + frame[12:]


def add_qinq(frame: bytes, outer_vid: int, inner_vid: int) -> bytes:
    """Insert an 802.1ad service tag and an 802.1Q customer tag (QinQ)."""
    return frame[:12] + struct.pack("!HHHH", b.ETH_QINQ, outer_vid, b.ETH_VLAN, inner_vid) + frame[12:]


class Vlan:
    """Path.wrap adding an 802.1Q tag, or two (QinQ) when `inner` is given."""

    def __init__(self, vid: int, inner: int | None = None) -> None:
        self.vid = vid
        self.inner = inner

    def __call__(self, frame: bytes) -> bytes:
        return add_vlan(frame, self.vid) if self.inner is None else add_qinq(frame, self.vid, self.inner)


class _Outer:
    """An outer Ethernet + IPv4 header from the mirroring device to the collector.

    tag: the mirror session id (ERSPAN) or the VXLAN/GENEVE network identifier.
    """

    default_tag = 0

    def __init__(self, tag: int | None = None, *, src: str = MIRROR_SRC, dst: str = MIRROR_DST) -> None:
        self.src = b.ip_bytes(src)
        self.dst = b.ip_bytes(dst)
        self.tag = self.default_tag if tag is None else tag
        self.ident = 0
        self.seq = 0

    def _ip(self, proto: int, payload: bytes) -> bytes:
        self.ident = (self.ident + 1) & 0xFFFF
        return b.ethernet(_OUTER_DST_MAC, _OUTER_SRC_MAC, b.ETH_IPV4,
                          b.ipv4(self.src, self.dst, proto, payload, ident=self.ident, ttl=64, df=False))

    def _header(self) -> bytes:
        """The tunnel header that precedes the mirrored frame."""
        raise NotImplementedError


class Gre(_Outer):
    """Plain GRE (RFC 2784) carrying the frame's IP packet (the Ethernet header is dropped)."""

    def __call__(self, frame: bytes) -> bytes:
        at = _inner_ethertype_offset(frame)
        proto = int.from_bytes(frame[at:at + 2], "big")
        return self._ip(b.GRE_PROTO, struct.pack("!HH", 0, proto) + frame[at + 2:])


class _Erspan(_Outer):
    """GRE with a sequence number (RFC 2890) carrying an ERSPAN header and the whole frame."""

    gre_proto = 0

    def __call__(self, frame: bytes) -> bytes:
        self.seq += 1
        gre = struct.pack("!HHI", 0x1000, self.gre_proto, self.seq)
        return self._ip(b.GRE_PROTO, gre + self._header() + frame)


class Erspan2(_Erspan):
    """ERSPAN type II: 8-byte header (Ver=1, VLAN 0, COS/En/T 0, session, index 0)."""

    gre_proto = GRE_ERSPAN2
    default_tag = 100

    def _header(self) -> bytes:
        return struct.pack("!HHI", 1 << 12, self.tag & 0x3FF, 0)


class Erspan3(_Erspan):
    """ERSPAN type III: 12-byte header (Ver=2, session, a timestamp, frame type 0 = Ethernet,
    granularity 01 = 100 microseconds)."""

    gre_proto = GRE_ERSPAN3
    default_tag = 200

    def _header(self) -> bytes:
        return struct.pack("!HHIHH", 2 << 12, self.tag & 0x3FF, self.seq * 10, 0, 0b01 << 1)


class _UdpTunnel(_Outer):
    """A UDP overlay: an 8-byte header with a 24-bit VNI, then the whole frame. RFC 7348 §5:
    the UDP source port is a hash of the inner headers, for ECMP entropy."""

    port = 0

    def __call__(self, frame: bytes) -> bytes:
        sport = 49152 + zlib.crc32(frame[:64]) % 16384
        return self._ip(b.UDP_PROTO, b.udp(self.src, self.dst, sport, self.port, self._header() + frame))


class Vxlan(_UdpTunnel):
    """VXLAN (RFC 7348): UDP 4789, flags with the I bit, VNI."""

    port = VXLAN_PORT
    default_tag = 5001

    def _header(self) -> bytes:
        return struct.pack("!II", 0x08000000, self.tag << 8)


class Geneve(_UdpTunnel):
    """GENEVE (RFC 8926): UDP 6081, no options, protocol Transparent Ethernet Bridging."""

    port = GENEVE_PORT
    default_tag = 7001

    def _header(self) -> bytes:
        return struct.pack("!HHI", 0, ETH_TEB, self.tag << 8)


TUNNELS = {"gre": Gre, "erspan2": Erspan2, "erspan3": Erspan3, "vxlan": Vxlan, "geneve": Geneve}
