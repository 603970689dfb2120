"""Tunnels: IP-in-IP, GRE (with ERSPAN I/II/III, PPTP, WCCP) and the UDP tunnels (VXLAN, VXLAN-GPE, Geneve,
GRE-in-UDP, Teredo, GTP-U, MPLS-in-UDP).

Peelers have the link-layer shape `(data, off, end) -> (kind, off, end) | Anomaly | None`
(see detector.decode.link). GRE is entered from IP protocol 47 and can be broken (an
Anomaly); a UDP tunnel is entered only from its port, so its peeler returns None
unless the bytes look like that tunnel, and the caller then keeps the packet as plain
UDP — an ordinary flow that happens to use port 4789 must not vanish.

References:
    RFC 2003 (IPv4 in IPv4, protocol 4), RFC 4213 §3 (IPv6 in IPv4, protocol 41),
    RFC 2473 (generic packet tunnelling in IPv6), RFC 4023 (MPLS in IP, protocol 137),
    RFC 3378 (EtherIP, protocol 97).
    RFC 2784 §2 (GRE header), RFC 2890 §2 (key and sequence number),
    RFC 1701 §2.1 (checksum/offset present when C or R is set; source route entries).
    RFC 2637 §4.1 (PPTP enhanced GRE: version 1, key = payload length + call id, ack).
    draft-foschiano-erspan-03 §4.1 (type II: 8-byte header, version 1), §4.2 (type III:
    12-byte header, version 2, frame type 0 Ethernet / 2 IP, O bit = 8-byte platform
    subheader); type I is bare Ethernet in GRE 0x88be without a sequence number.
    draft-wilson-wrec-wccp-v2-01 §4.12 (WCCP redirect header in GRE 0x883e).
    RFC 7348 §5 (VXLAN, I flag), draft-ietf-nvo3-vxlan-gpe-12 §3 (flags, next protocol),
    RFC 8926 §3.4 (Geneve: version 0, option length in 4-byte words, protocol type),
    RFC 8086 (GRE in UDP, port 4754), RFC 7510 (MPLS in UDP, port 6635),
    RFC 4380 §5.1.1 (Teredo authentication and origin indication), 3GPP TS 29.281 §5.1
    (GTP-U header, E/S/PN optional fields, extension header chain; G-PDU = 255).
"""

from __future__ import annotations

from struct import Struct

from detector.decode.link import (
    ETHERTYPE_KINDS,
    IP_VERSION_KINDS,
    K_ETHER,
    K_IP,
    K_IPV4,
    K_IPV6,
    K_MPLS,
    K_NSH,
    K_PPP,
    Peeler,
    Result,
    follow,
    mpls,
)
from detector.model import Anomaly

K_GRE = 32
K_ETHERIP = 33
K_WCCP = 34

# ---------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------

# How many tunnels one frame may nest. The deepest real nesting we have seen is 3
# (GRE -> ERSPAN -> VXLAN in a mirrored overlay; triple VXLAN in Zeek's tests), and
# production overlays rarely exceed 2. 8 leaves room for odd labs while stopping a
# crafted frame of nested 20-byte IP headers from costing ~3000 decode steps.
MAX_TUNNEL_DEPTH = 8
# RFC 1701 source route entries: obsolete and rare; 16 bounds the walk.
MAX_GRE_SRES = 16
# GTP-U extension headers: 3GPP defines about a dozen types, each used at most once.
MAX_GTP_EXTENSIONS = 16

# ---------------------------------------------------------------------------
# Anomalies
# ---------------------------------------------------------------------------

ANOMALIES: dict[str, str] = {
    "tunnel.too_deep": f"more than {MAX_TUNNEL_DEPTH} nested tunnels (or a layer loop) in one frame",
    "gre.truncated": "GRE header (with its optional fields) runs past the end of the packet",
    "gre.bad_version": "GRE version other than 0 (RFC 2784) or 1 (PPTP)",
    "gre.bad_pptp": "GRE version 1 without the key bit or with a protocol other than PPP",
    "gre.bad_routing": f"RFC 1701 source route entries run past the end or exceed {MAX_GRE_SRES}",
    "erspan.truncated": "ERSPAN header runs past the end of the packet",
    "erspan.bad_version": "ERSPAN header version other than 1 (type II) or 2 (type III)",
    "etherip.bad_header": "EtherIP header shorter than 2 bytes or version not 3",
}

TOO_DEEP = Anomaly("tunnel.too_deep")
GRE_TRUNCATED = Anomaly("gre.truncated")
GRE_BAD_VERSION = Anomaly("gre.bad_version")
GRE_BAD_PPTP = Anomaly("gre.bad_pptp")
GRE_BAD_ROUTING = Anomaly("gre.bad_routing")
ERSPAN_TRUNCATED = Anomaly("erspan.truncated")
ERSPAN_BAD_VERSION = Anomaly("erspan.bad_version")
ETHERIP_BAD_HEADER = Anomaly("etherip.bad_header")

# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

# IP protocol number -> next layer, for the protocols that carry another packet.
IP_PROTO_KINDS: dict[int, int] = {
    4: K_IPV4,  # IPv4 in IP (4in4, 4in6)
    41: K_IPV6,  # IPv6 in IP (6in4, 6in6)
    47: K_GRE,
    97: K_ETHERIP,
    137: K_MPLS,  # MPLS in IP
}

_ERSPAN_II_III = (0x88BE, 0x22EB)
_WCCP = 0x883E
# GRE protocol type is an EtherType; ERSPAN and WCCP need their own header handling.
GRE_PROTO_KINDS: dict[int, int] = dict(ETHERTYPE_KINDS)

# ERSPAN type III frame type -> next layer.
_ERSPAN_FRAME_KINDS: dict[int, int] = {0: K_ETHER, 2: K_IP}
# Geneve protocol type is an EtherType too; it carries Ethernet, IPv4 or IPv6.
_GENEVE_KINDS: dict[int, int] = {0x6558: K_ETHER, 0x0800: K_IPV4, 0x86DD: K_IPV6}
# VXLAN-GPE next protocol -> next layer.
_GPE_NEXT_KINDS: dict[int, int] = {1: K_IPV4, 2: K_IPV6, 3: K_ETHER, 4: K_NSH, 5: K_MPLS}

# GRE flag bits (first 16 bits of the header).
_C, _R, _K, _S, _A = 0x8000, 0x4000, 0x2000, 0x1000, 0x0080
_GRE_RESERVED0 = 0x0FF8  # recursion control, strict route, reserved: zero in RFC 2784
# Bytes of optional fields in a version-0 header, indexed by the C R K S bits
# (flags >> 12): checksum + offset (RFC 1701: present if C or R), key, sequence number.
_V0_OPTIONAL_LEN = tuple(4 * (bool(bits & 0b1100) + bool(bits & 0b0010) + bool(bits & 0b0001)) for bits in range(16))

_U16 = Struct("!H").unpack_from
_HH = Struct("!HH").unpack_from
_GTP_HDR = Struct("!BBH").unpack_from  # flags, message type, length


# ---------------------------------------------------------------------------
# GRE and what it carries
# ---------------------------------------------------------------------------


def gre(data: bytes, off: int, end: int) -> Result:
    """GRE version 0 (RFC 2784/2890, with RFC 1701 routing) or version 1 (PPTP)."""
    if end - off < 4:
        return GRE_TRUNCATED
    flags, proto = _HH(data, off)
    version = flags & 0x07
    p = off + 4
    if version == 1:
        return _pptp(data, flags, proto, p, end)
    if version != 0:
        return GRE_BAD_VERSION
    p += _V0_OPTIONAL_LEN[flags >> 12]
    if p > end:
        return GRE_TRUNCATED
    if flags & _R:
        p = _skip_sres(data, p, end)
        if p < 0:
            return GRE_BAD_ROUTING
    if proto in _ERSPAN_II_III:
        if proto == 0x88BE and not flags & _S:
            return K_ETHER, p, end  # ERSPAN type I: no ERSPAN header at all
        return erspan(data, p, end)
    if proto == _WCCP:
        return K_WCCP, p, end
    return follow(GRE_PROTO_KINDS, proto, p, end)


def _skip_sres(data: bytes, p: int, end: int) -> int:
    """Skip RFC 1701 source route entries up to the null SRE; -1 if broken."""
    for _ in range(MAX_GRE_SRES):
        if end - p < 4:
            return -1
        family, length = _U16(data, p)[0], data[p + 3]
        p += 4 + length
        if family == 0 and length == 0:
            return p
        if p > end:
            return -1
    return -1


def _pptp(data: bytes, flags: int, proto: int, p: int, end: int) -> Result:
    """PPTP enhanced GRE: key (payload length, call id), optional sequence and ack."""
    if proto != 0x880B or not flags & _K:
        return GRE_BAD_PPTP
    if end - p < 4:
        return GRE_TRUNCATED
    payload_len = _U16(data, p)[0]
    p += 4  # the key: payload length, call id
    if flags & _S:
        p += 4  # sequence number
    if flags & _A:
        p += 4  # acknowledgement number
    if p > end:
        return GRE_TRUNCATED
    if payload_len == 0:
        return None  # an acknowledgement without data
    end = min(end, p + payload_len)
    return K_PPP, p, end


def erspan(data: bytes, off: int, end: int) -> Result:
    """ERSPAN type II (version 1) or type III (version 2), whatever the GRE protocol says.

    Linux and Wireshark both go by the version field: some switches send type III
    headers under 0x88be.
    """
    if end - off < 8:
        return ERSPAN_TRUNCATED
    version = data[off] >> 4
    if version == 1:
        return K_ETHER, off + 8, end
    if version != 2:
        return ERSPAN_BAD_VERSION
    if end - off < 12:
        return ERSPAN_TRUNCATED
    hlen = 20 if data[off + 11] & 0x01 else 12  # O bit: 8-byte platform-specific subheader
    if end - off < hlen:
        return ERSPAN_TRUNCATED
    return follow(_ERSPAN_FRAME_KINDS, (data[off + 10] >> 2) & 0x1F, off + hlen, end)


def wccp(data: bytes, off: int, end: int) -> Result:
    """WCCP redirect in GRE 0x883e: v2 adds a 4-byte redirect header, v1 has none."""
    if off < end and data[off] >> 4 == 4:
        return K_IPV4, off, end
    return K_IPV4, off + 4, end


def etherip(data: bytes, off: int, end: int) -> Result:
    """EtherIP (IP protocol 97): 2-byte header with version 3, then Ethernet."""
    if end - off < 2 or data[off] >> 4 != 3:
        return ETHERIP_BAD_HEADER
    return K_ETHER, off + 2, end


# ---------------------------------------------------------------------------
# UDP tunnels: each returns None unless the bytes look like the tunnel
# ---------------------------------------------------------------------------


def vxlan(data: bytes, off: int, end: int) -> Result:
    """VXLAN: 8-byte header with the I (valid VNI) flag set, then Ethernet."""
    if end - off < 8 + 14 or not data[off] & 0x08:
        return None
    return K_ETHER, off + 8, end


def vxlan_gpe(data: bytes, off: int, end: int) -> Result:
    """VXLAN-GPE: version 0; with the P flag the next protocol byte says what follows."""
    if end - off < 8:
        return None
    flags = data[off]
    if flags & 0x30:  # version must be 0
        return None
    if not flags & 0x04:  # no next-protocol: plain VXLAN semantics
        return vxlan(data, off, end)
    return follow(_GPE_NEXT_KINDS, data[off + 3], off + 8, end)


def geneve(data: bytes, off: int, end: int) -> Result:
    """Geneve: version 0, options skipped, protocol type says Ethernet/IPv4/IPv6."""
    if end - off < 8 or data[off] >> 6 != 0:
        return None
    hlen = 8 + (data[off] & 0x3F) * 4
    if hlen > end - off:
        return None
    return follow(_GENEVE_KINDS, _U16(data, off + 2)[0], off + hlen, end)


def gre_in_udp(data: bytes, off: int, end: int) -> Result:
    """GRE-in-UDP (RFC 8086): a version-0 GRE header with clean reserved bits."""
    if end - off < 4:
        return None
    flags, proto = _HH(data, off)
    if flags & (_R | _GRE_RESERVED0 | 0x07) or proto not in GRE_PROTO_KINDS:
        return None
    result = gre(data, off, end)
    return result if result.__class__ is tuple else None


def teredo(data: bytes, off: int, end: int) -> Result:
    """Teredo: optional authentication and origin indication, then an IPv6 header."""
    if end - off >= 4 and data[off] == 0 and data[off + 1] == 1:  # authentication indicator
        off += 4 + data[off + 2] + data[off + 3] + 8 + 1  # id, auth value, nonce, confirmation
    if end - off >= 8 and data[off] == 0 and data[off + 1] == 0:  # origin indication
        off += 8
    if end - off < 40 or data[off] >> 4 != 6:
        return None
    return K_IPV6, off, end


def gtp_u(data: bytes, off: int, end: int) -> Result:
    """GTP-U version 1 G-PDU: optional fields and extension headers, then IPv4/IPv6."""
    if end - off < 8:
        return None
    flags, mtype, length = _GTP_HDR(data, off)
    if flags & 0xF0 != 0x30 or mtype != 0xFF:  # version 1, protocol type GTP, G-PDU
        return None
    p = off + 8
    end = min(end, p + length)
    if flags & 0x07:  # E, S or PN: sequence, N-PDU number, next extension type follow
        if end - p < 4:
            return None
        nxt = data[p + 3]
        p += 4
        for _ in range(MAX_GTP_EXTENSIONS):
            if not nxt:
                break
            if p >= end:
                return None
            ext_len = data[p] * 4  # in 4-byte units, including length and next-type bytes
            if ext_len == 0 or p + ext_len > end:
                return None
            nxt = data[p + ext_len - 1]
            p += ext_len
        else:
            return None
    if p >= end:
        return None
    return follow(IP_VERSION_KINDS, data[p] >> 4, p, end)


def mpls_in_udp(data: bytes, off: int, end: int) -> Result:
    """MPLS-in-UDP: a label stack that ends in IPv4/IPv6."""
    result = mpls(data, off, end)
    return result if result.__class__ is tuple else None


# Tunnel UDP ports -> peeler (net.py tries the destination port, then the source port).
UDP_TUNNELS: dict[int, Peeler] = {
    4789: vxlan,  # IANA VXLAN
    8472: vxlan,  # Linux kernel default VXLAN port
    4790: vxlan_gpe,
    6081: geneve,
    4754: gre_in_udp,
    3544: teredo,
    2152: gtp_u,
    6635: mpls_in_udp,
}

PEELERS: dict[int, Peeler] = {
    K_GRE: gre,
    K_ETHERIP: etherip,
    K_WCCP: wccp,
}
