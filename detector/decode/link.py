"""Link layers and L2 shims: pcap link types, Ethernet/VLAN, SLL/SLL2, NFLOG, PKTAP, PPP/PPPoE, MPLS, NSH.

Each peeler takes `(data, off, end)` — the frame, where this layer starts, and where the
bytes that belong to it end (capture length or an outer length field, whichever is
smaller) — and returns either a continuation `(kind, off, end)` naming the next layer,
an `Anomaly` (this layer is broken), or None (nothing the sensor follows: ARP, LLDP,
STP, an unknown protocol). `detector.decode.net` runs the loop; peelers never recurse,
so nesting depth is bounded in one place. No peeler allocates on the success path
except the 3-tuple it returns.

References:
    IEEE 802.1Q-2018 §9.6 (C-TAG 0x8100, S-TAG 0x88a8; 0x9100 is the pre-802.1ad QinQ TPID).
    RFC 1042 (SNAP encapsulation of IP over IEEE 802 networks).
    RFC 3032 §2.1 (MPLS label stack entry, bottom-of-stack bit); RFC 4182 (explicit null).
    RFC 1661 §2 (PPP protocol field, protocol-field compression), RFC 1662 §3.1 (ff 03 header).
    RFC 2516 §4 (PPPoE: VER=1, TYPE=1, CODE=0 in session stage, LENGTH of the payload).
    RFC 8300 §2 (NSH base header: Ver, Length in 4-byte words, Next Protocol).
    https://www.tcpdump.org/linktypes.html and the per-type pages: LINKTYPE_NULL/LOOP,
    LINKTYPE_LINUX_SLL (16-byte header), LINKTYPE_LINUX_SLL2 (20-byte header),
    LINKTYPE_NFLOG (4-byte header + TLVs in host byte order, type 9 = payload),
    LINKTYPE_PKTAP (Apple: header length and inner DLT in the header), LINKTYPE_C_HDLC.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct

from detector.model import VLAN_TPIDS, Anomaly

# ---------------------------------------------------------------------------
# Layer kinds: what a continuation says comes next. Link kinds are 0..31,
# tunnel kinds (detector.decode.tunnels) start at 32.
# ---------------------------------------------------------------------------

K_IP = 0  # IPv4 or IPv6, decided by the version nibble
K_IPV4 = 1
K_IPV6 = 2
K_ETHER = 3
K_NULL = 4  # BSD loopback: 4-byte address family, either byte order
K_SLL = 5
K_SLL2 = 6
K_NFLOG = 7
K_PKTAP = 8
K_PPP = 9  # optional ff 03, then the PPP protocol field
K_PPP_DIR = 10  # one direction byte, then PPP
K_PPPOE = 11  # PPPoE session header, then PPP
K_CHDLC = 12
K_MPLS = 13
K_NSH = 14

Next = tuple[int, int, int]
Result = Next | Anomaly | None
Peeler = Callable[[bytes, int, int], Result]

# ---------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------

# 802.1ad QinQ uses 2 tags and triple tagging exists in carrier gear (captures/encap has
# one); no deployment stacks more than 4. 8 bounds the loop and still accepts odd labs.
MAX_VLAN_TAGS = 8
# RFC 3032 sets no limit; real stacks are 1-5 deep (transport + VPN + entropy-label pair).
# 16 bounds the loop with room to spare.
MAX_MPLS_LABELS = 16
# NFLOG defines ~20 TLV types and each appears once per message; 32 bounds the walk.
MAX_NFLOG_TLVS = 32

# ---------------------------------------------------------------------------
# Anomalies
# ---------------------------------------------------------------------------

ANOMALIES: dict[str, str] = {
    "eth.truncated": "frame shorter than the 14-byte Ethernet header",
    "vlan.truncated": "an 802.1Q/802.1ad tag is cut off by the end of the frame",
    "vlan.too_many_tags": f"more than {MAX_VLAN_TAGS} stacked VLAN tags",
    "mpls.truncated": "the MPLS label stack runs past the end of the frame before bottom-of-stack",
    "mpls.too_many_labels": f"more than {MAX_MPLS_LABELS} MPLS labels without bottom-of-stack",
    "ppp.truncated": "PPP frame too short for its protocol field",
    "pppoe.truncated": "PPPoE session frame shorter than its 6-byte header plus PPP protocol",
    "pppoe.bad_header": "PPPoE session header with VER/TYPE other than 1/1 or CODE other than 0",
    "nsh.truncated": "NSH header longer than the bytes that follow it",
    "nsh.bad_header": "NSH version not 0 or length below the 8-byte base + service path header",
    "null.truncated": "BSD loopback frame shorter than its 4-byte address family",
    "sll.truncated": "Linux cooked (SLL) frame shorter than its 16-byte header",
    "sll2.truncated": "Linux cooked v2 (SLL2) frame shorter than its 20-byte header",
    "chdlc.truncated": "Cisco HDLC frame shorter than its 4-byte header",
    "nflog.truncated": "NFLOG frame shorter than its header or a TLV runs past the end",
    "nflog.bad_version": "NFLOG header version is not 0",
    "nflog.bad_tlv": "NFLOG TLV length below 4 or too many TLVs",
    "pktap.bad_header_len": "PKTAP header length below 12 bytes or past the end of the frame",
}

ETH_TRUNCATED = Anomaly("eth.truncated")
VLAN_TRUNCATED = Anomaly("vlan.truncated")
VLAN_TOO_MANY_TAGS = Anomaly("vlan.too_many_tags")
MPLS_TRUNCATED = Anomaly("mpls.truncated")
MPLS_TOO_MANY_LABELS = Anomaly("mpls.too_many_labels")
PPP_TRUNCATED = Anomaly("ppp.truncated")
PPPOE_TRUNCATED = Anomaly("pppoe.truncated")
PPPOE_BAD_HEADER = Anomaly("pppoe.bad_header")
NSH_TRUNCATED = Anomaly("nsh.truncated")
NSH_BAD_HEADER = Anomaly("nsh.bad_header")
NULL_TRUNCATED = Anomaly("null.truncated")
SLL_TRUNCATED = Anomaly("sll.truncated")
SLL2_TRUNCATED = Anomaly("sll2.truncated")
CHDLC_TRUNCATED = Anomaly("chdlc.truncated")
NFLOG_TRUNCATED = Anomaly("nflog.truncated")
NFLOG_BAD_VERSION = Anomaly("nflog.bad_version")
NFLOG_BAD_TLV = Anomaly("nflog.bad_tlv")
PKTAP_BAD_HEADER_LEN = Anomaly("pktap.bad_header_len")

# ---------------------------------------------------------------------------
# Dispatch tables
# ---------------------------------------------------------------------------

# EtherType -> next layer. Also used for SLL/SLL2/C-HDLC protocol fields and, in
# tunnels.py, for the GRE and Geneve protocol type (both are EtherTypes).
ETHERTYPE_KINDS: dict[int, int] = {
    0x0800: K_IPV4,
    0x86DD: K_IPV6,
    0x8847: K_MPLS,  # MPLS unicast
    0x8848: K_MPLS,  # MPLS multicast (same label format)
    0x8864: K_PPPOE,  # PPPoE session stage; 0x8863 discovery carries no IP
    0x880B: K_PPP,  # PPP directly in an EtherType (GRE 0x880b)
    0x6558: K_ETHER,  # transparent Ethernet bridging (GRE, Geneve)
    0x894F: K_NSH,
}


# PPP protocol field (RFC 1661 / IANA PPP DLL protocol numbers) -> next layer.
PPP_KINDS: dict[int, int] = {
    0x0021: K_IPV4,
    0x0057: K_IPV6,
    0x0281: K_MPLS,
    0x0283: K_MPLS,
}

# BSD loopback address family -> next layer. AF_INET6 differs per OS:
# 24 NetBSD/OpenBSD/BSD/OS, 28 FreeBSD/DragonFly, 30 Darwin, 10 Linux.
NULL_AF_KINDS: dict[int, int] = {2: K_IPV4, 24: K_IPV6, 28: K_IPV6, 30: K_IPV6, 10: K_IPV6}

# IP version nibble -> next layer, where only the first byte tells (MPLS, GTP-U, raw links).
IP_VERSION_KINDS: dict[int, int] = {4: K_IPV4, 6: K_IPV6}

# NSH next protocol (RFC 8300 §11.2.5) -> next layer.
NSH_NEXT_KINDS: dict[int, int] = {1: K_IPV4, 2: K_IPV6, 3: K_ETHER, 5: K_MPLS}

# pcap LINKTYPE (and the DLT values some writers put in the file header) -> first layer.
LINKTYPE_KINDS: dict[int, int] = {
    0: K_NULL,  # LINKTYPE_NULL
    1: K_ETHER,  # LINKTYPE_ETHERNET
    9: K_PPP,  # LINKTYPE_PPP
    12: K_IP,  # DLT_RAW on most BSDs (= LINKTYPE_RAW)
    14: K_IP,  # DLT_RAW on OpenBSD
    50: K_PPP,  # LINKTYPE_PPP_HDLC
    51: K_PPPOE,  # LINKTYPE_PPP_ETHER: PPPoE header without Ethernet
    101: K_IP,  # LINKTYPE_RAW
    104: K_CHDLC,  # LINKTYPE_C_HDLC
    108: K_NULL,  # LINKTYPE_LOOP (network byte order; K_NULL detects the order)
    113: K_SLL,  # LINKTYPE_LINUX_SLL
    149: K_PKTAP,  # DLT_PKTAP on Darwin (USER2 elsewhere; PKTAP is what writes it in practice)
    204: K_PPP_DIR,  # LINKTYPE_PPP_WITH_DIR
    228: K_IPV4,  # LINKTYPE_IPV4
    229: K_IPV6,  # LINKTYPE_IPV6
    239: K_NFLOG,  # LINKTYPE_NFLOG
    258: K_PKTAP,  # LINKTYPE_PKTAP
    276: K_SLL2,  # LINKTYPE_LINUX_SLL2
}

_U16 = Struct("!H").unpack_from
_U32 = Struct("!I").unpack_from
_U32LE = Struct("<I").unpack_from
_HH = Struct("!HH").unpack_from
_HH_LE = Struct("<HH").unpack_from
_PKTAP_HDR = Struct("<I4xI").unpack_from  # pth_length, pth_dlt (host order; Darwin is little-endian)
_PPPOE_HDR = Struct("!BBxxH").unpack_from  # ver/type, code, (session id), length

_SNAP_IP_PREFIX = b"\xaa\xaa\x03\x00\x00\x00"  # LLC SNAP with OUI 0: an EtherType follows
_NFLOG_PAYLOAD = 9  # NFULA_PAYLOAD
_NFLOG_TYPE_MASK = 0x7FFF  # NLA_F_NESTED may be set in the type


def follow(table: dict[int, int], key: int, off: int, end: int) -> Next | None:
    """The continuation for `key` in a dispatch table, or None when the table lacks it."""
    kind = table.get(key)
    if kind is None:
        return None
    return kind, off, end


# ---------------------------------------------------------------------------
# Ethernet and EtherType dispatch
# ---------------------------------------------------------------------------


def ethernet(data: bytes, off: int, end: int) -> Result:
    """Ethernet II header (and 802.3 + SNAP), then any VLAN tags."""
    if end - off < 14:
        return ETH_TRUNCATED
    etype = data[off + 12] << 8 | data[off + 13]
    off += 14
    if etype <= 1500:  # an 802.3 length: only LLC SNAP with OUI 0 carries an EtherType
        if end - off < 8 or data[off : off + 6] != _SNAP_IP_PREFIX:
            return None
        etype = data[off + 6] << 8 | data[off + 7]
        off += 8
    return after_ethertype(data, etype, off, end)


def after_ethertype(data: bytes, etype: int, off: int, end: int) -> Result:
    """Walk VLAN tags from `etype` on, then map the final EtherType to the next layer."""
    if etype in VLAN_TPIDS:
        tags = 0
        while etype in VLAN_TPIDS:
            if tags == MAX_VLAN_TAGS:
                return VLAN_TOO_MANY_TAGS
            if end - off < 4:
                return VLAN_TRUNCATED
            etype = data[off + 2] << 8 | data[off + 3]
            off += 4
            tags += 1
    return follow(ETHERTYPE_KINDS, etype, off, end)


# ---------------------------------------------------------------------------
# Capture-specific link headers
# ---------------------------------------------------------------------------


def null_loopback(data: bytes, off: int, end: int) -> Result:
    """BSD loopback (NULL: host byte order, LOOP: network order): 4-byte address family."""
    if end - off < 4:
        return NULL_TRUNCATED
    af = _U32LE(data, off)[0]
    if af > 0xFFFF:  # families are small numbers: a big value means the other byte order
        af = _U32(data, off)[0]
    return follow(NULL_AF_KINDS, af, off + 4, end)


def sll(data: bytes, off: int, end: int) -> Result:
    """Linux cooked capture v1: 16-byte header, protocol (an EtherType) last."""
    if end - off < 16:
        return SLL_TRUNCATED
    return after_ethertype(data, data[off + 14] << 8 | data[off + 15], off + 16, end)


def sll2(data: bytes, off: int, end: int) -> Result:
    """Linux cooked capture v2: 20-byte header, protocol (an EtherType) first."""
    if end - off < 20:
        return SLL2_TRUNCATED
    return after_ethertype(data, data[off] << 8 | data[off + 1], off + 20, end)


def chdlc(data: bytes, off: int, end: int) -> Result:
    """Cisco HDLC: address, control, then an EtherType."""
    if end - off < 4:
        return CHDLC_TRUNCATED
    return after_ethertype(data, data[off + 2] << 8 | data[off + 3], off + 4, end)


def nflog(data: bytes, off: int, end: int) -> Result:
    """Linux NFLOG: family/version/resource id, then TLVs; follow the payload TLV.

    TLV lengths and types are in the capturing host's byte order, which the file does
    not record. Types are below 256, so the first TLV's type field tells the order.
    """
    if end - off < 4:
        return NFLOG_TRUNCATED
    if data[off + 1] != 0:
        return NFLOG_BAD_VERSION
    p = off + 4
    tlv = _HH_LE
    if end - p >= 4 and data[p + 2] == 0 and data[p + 3] != 0:
        tlv = _HH  # big-endian host
    for _ in range(MAX_NFLOG_TLVS):
        if p == end:
            return None  # no payload TLV: the rule logged metadata only
        if end - p < 4:
            return NFLOG_TRUNCATED
        length, ttype = tlv(data, p)
        if length < 4:
            return NFLOG_BAD_TLV
        if ttype & _NFLOG_TYPE_MASK == _NFLOG_PAYLOAD:
            if p + length > end:
                # The payload TLV is the last one: a short capture cuts it; keep what is there.
                return K_IP, p + 4, end
            return K_IP, p + 4, p + length
        p += (length + 3) & ~3  # TLVs are padded to 4 bytes
    return NFLOG_BAD_TLV


def pktap(data: bytes, off: int, end: int) -> Result:
    """Apple PKTAP: header length and the inner frame's DLT come from the header itself."""
    if end - off < 12:
        return PKTAP_BAD_HEADER_LEN
    hlen, dlt = _PKTAP_HDR(data, off)
    if hlen < 12 or hlen > end - off:
        return PKTAP_BAD_HEADER_LEN
    if LINKTYPE_KINDS.get(dlt) == K_PKTAP:
        return None  # PKTAP inside PKTAP: not something a capture writes
    return follow(LINKTYPE_KINDS, dlt, off + hlen, end)


# ---------------------------------------------------------------------------
# PPP family
# ---------------------------------------------------------------------------


def ppp(data: bytes, off: int, end: int) -> Result:
    """PPP: optional HDLC address/control (ff 03), then a 1- or 2-byte protocol field."""
    if end - off >= 2 and data[off] == 0xFF and data[off + 1] == 0x03:
        off += 2
    if end - off < 1:
        return PPP_TRUNCATED
    proto = data[off]
    if proto & 1:  # protocol-field compression: an odd first byte is the whole field
        off += 1
    else:
        if end - off < 2:
            return PPP_TRUNCATED
        proto = proto << 8 | data[off + 1]
        off += 2
    return follow(PPP_KINDS, proto, off, end)


def ppp_with_dir(data: bytes, off: int, end: int) -> Result:
    """LINKTYPE_PPP_WITH_DIR: one direction byte, then PPP."""
    if end - off < 1:
        return PPP_TRUNCATED
    return ppp(data, off + 1, end)


def pppoe_session(data: bytes, off: int, end: int) -> Result:
    """PPPoE session stage: 6-byte header whose LENGTH bounds the PPP frame."""
    if end - off < 8:
        return PPPOE_TRUNCATED
    vertype, code, length = _PPPOE_HDR(data, off)
    if vertype != 0x11 or code != 0:
        return PPPOE_BAD_HEADER
    off += 6
    end = min(end, off + length)  # drop Ethernet padding
    return ppp(data, off, end)


# ---------------------------------------------------------------------------
# Shims
# ---------------------------------------------------------------------------


def mpls(data: bytes, off: int, end: int) -> Result:
    """MPLS label stack until bottom-of-stack, then IPv4/IPv6 by the version nibble.

    Anything else after the stack (a pseudowire control word, an Ethernet pseudowire
    without one) is not followed.
    """
    for _ in range(MAX_MPLS_LABELS):
        if end - off < 4:
            return MPLS_TRUNCATED
        bos = data[off + 2] & 0x01
        off += 4
        if bos:
            if off >= end:
                return None
            return follow(IP_VERSION_KINDS, data[off] >> 4, off, end)
    return MPLS_TOO_MANY_LABELS


def nsh(data: bytes, off: int, end: int) -> Result:
    """Network Service Header: skip Length 4-byte words, follow Next Protocol."""
    if end - off < 8:
        return NSH_TRUNCATED
    length = (data[off + 1] & 0x3F) * 4
    if data[off] >> 6 != 0 or length < 8:
        return NSH_BAD_HEADER
    if length > end - off:
        return NSH_TRUNCATED
    return follow(NSH_NEXT_KINDS, data[off + 3], off + length, end)


# Peelers for the link kinds; net.py merges these with the tunnel peelers. The IP kinds
# (K_IP, K_IPV4, K_IPV6) are handled by net.py itself.
PEELERS: dict[int, Peeler] = {
    K_ETHER: ethernet,
    K_NULL: null_loopback,
    K_SLL: sll,
    K_SLL2: sll2,
    K_NFLOG: nflog,
    K_PKTAP: pktap,
    K_PPP: ppp,
    K_PPP_DIR: ppp_with_dir,
    K_PPPOE: pppoe_session,
    K_CHDLC: chdlc,
    K_MPLS: mpls,
    K_NSH: nsh,
}
