"""Network and transport layers, and the frame walk: link -> tunnels -> innermost IPv4/IPv6 -> TCP/UDP.

`decode_frame` is the sensor's hottest function. A plain Ethernet (untagged or one
802.1Q tag) + IPv4 (no options, not fragmented) + TCP/UDP frame takes a fast path of
one `unpack_from` call; all other frames go through `_walk`, a loop over layer peelers
(detector.decode.link and detector.decode.tunnels) keyed by a small integer kind. Offsets index the original
frame; no layer slices it except for the final payload, and each layer narrows `end`
to its own length field so Ethernet padding and trailers never reach the payload.

References:
    RFC 791 §3.1 (IPv4 header: IHL, total length, flags/fragment offset).
    RFC 8200 §4 (IPv6 extension headers: hop-by-hop, routing, fragment, destination
    options; header extension length in 8-octet units), §4.5 (fragment header),
    RFC 6946 (atomic fragments are processed as whole packets).
    RFC 4302 §2.2 (AH payload length in 4-octet units, minus 2), RFC 4303 (ESP: opaque).
    RFC 2675 §4 (jumbograms: IPv6 payload length 0, UDP length 0).
    RFC 9293 §3.1 (TCP header, data offset), RFC 768 (UDP header).
"""

from __future__ import annotations

from struct import Struct
from struct import error as _StructError

from detector.decode import link, tunnels
from detector.decode.link import IP_VERSION_KINDS, K_IP, K_IPV4, K_IPV6, Next, follow
from detector.decode.tunnels import IP_PROTO_KINDS, MAX_TUNNEL_DEPTH, TOO_DEEP, UDP_TUNNELS
from detector.model import IPV4_OFFSETS, TCP, UDP, Anomaly, IPFragment, L4Packet

# ---------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------

# RFC 8200 §4.1 allows each extension header once (destination options twice), so a
# legitimate chain has at most ~8. 16 bounds the walk with margin.
MAX_IPV6_EXT_HEADERS = 16
# Peeling steps per frame of any kind (link headers, shims, IP layers). Every layer
# cycle passes through IP, which MAX_TUNNEL_DEPTH bounds; this is the backstop should a
# new peeler ever form a cycle without IP. ~6 layers per tunnel level is generous.
MAX_LAYERS = 6 * (MAX_TUNNEL_DEPTH + 1)

# ---------------------------------------------------------------------------
# Anomalies
# ---------------------------------------------------------------------------

ANOMALIES: dict[str, str] = {
    "ip.truncated": "no byte left where an IP header (version by nibble) should start",
    "ip.bad_version": "IP version nibble is neither 4 nor 6 where an IP packet must start",
    "ipv4.truncated": "IPv4 header (20 bytes or IHL*4 with options) cut off by the end of the frame",
    "ipv4.bad_version": "EtherType/protocol says IPv4 but the version nibble is not 4",
    "ipv4.bad_ihl": "IPv4 IHL below 5 (header shorter than 20 bytes)",
    "ipv4.bad_total_len": "IPv4 total length non-zero but below the header length",
    "ipv6.truncated": "IPv6 packet shorter than its 40-byte fixed header",
    "ipv6.bad_version": "EtherType/protocol says IPv6 but the version nibble is not 6",
    "ipv6.ext_truncated": "an IPv6 extension header runs past the end of the packet",
    "ipv6.too_many_ext": f"more than {MAX_IPV6_EXT_HEADERS} IPv6 extension headers",
    "tcp.truncated": "fewer than the 20 bytes of a TCP header were captured",
    "tcp.bad_offset": "TCP data offset below 5 or past the end of the IP payload",
    "udp.truncated": "fewer than the 8 bytes of a UDP header were captured",
    "udp.bad_len": "UDP length non-zero and below 8, or longer than the IP payload",
    "frame.decode_error": "an unexpected bounds error inside the decoder (a bug, caught at the edge)",
}

IP_TRUNCATED = Anomaly("ip.truncated")
IP_BAD_VERSION = Anomaly("ip.bad_version")
IPV4_TRUNCATED = Anomaly("ipv4.truncated")
IPV4_BAD_VERSION = Anomaly("ipv4.bad_version")
IPV4_BAD_IHL = Anomaly("ipv4.bad_ihl")
IPV4_BAD_TOTAL_LEN = Anomaly("ipv4.bad_total_len")
IPV6_TRUNCATED = Anomaly("ipv6.truncated")
IPV6_BAD_VERSION = Anomaly("ipv6.bad_version")
IPV6_EXT_TRUNCATED = Anomaly("ipv6.ext_truncated")
IPV6_TOO_MANY_EXT = Anomaly("ipv6.too_many_ext")
TCP_TRUNCATED = Anomaly("tcp.truncated")
TCP_BAD_OFFSET = Anomaly("tcp.bad_offset")
UDP_TRUNCATED = Anomaly("udp.truncated")
UDP_BAD_LEN = Anomaly("udp.bad_len")
DECODE_ERROR = Anomaly("frame.decode_error")

# ---------------------------------------------------------------------------
# Structs and tables
# ---------------------------------------------------------------------------

# Fast path: EtherType, IPv4 header and the first 14 bytes of TCP (or UDP) in one call:
# ethertype, ver/ihl, total len, flags/frag, proto, src, dst, sport, dport, seq, data offset, flags.
_ETH_IPV4_L4 = Struct("!12xHBxHxxHxB2x4s4sHHI4xBB").unpack_from
_FAST_MIN = 14 + 20 + 20  # Ethernet + IPv4 + TCP header (shorter UDP frames take the slow path)
_IPV4 = Struct("!BxHHHxB2x4s4s")  # ver/ihl, total len, id, flags/frag, proto, src, dst
_IPV6 = Struct("!B3xHBx16s16s")  # ver/tc, payload len, next header, src, dst
_TCP = Struct("!HHI4xBB")  # sport, dport, seq, data offset, flags
_UDP = Struct("!HHH")  # sport, dport, length
_IPV6_FRAG = Struct("!BxHI")  # next header, offset/M, identification

# IPv6 extension headers walked to reach the transport: hop-by-hop (0), routing (43),
# destination options (60) — length (n + 1) * 8 — fragment (44) and AH (51, (n + 2) * 4).
# ESP (50), no next header (59) and mobility (135) end the walk: nothing to count after.
_IPV6_EXT = frozenset((0, 43, 60, 44, 51))
_IPV6_FRAGMENT = 44
_IPV6_AH = 51

# What an IP-level step returns: a terminal result, or the next layer of a tunnel.
Step = L4Packet | IPFragment | Anomaly | Next | None

# kind -> peeler, indexed by kind (a tuple index is cheaper than a dict lookup); the IP
# kinds stay None: _walk handles them itself.
_BY_KIND = {**link.PEELERS, **tunnels.PEELERS}
_PEELERS: tuple = tuple(_BY_KIND.get(kind) for kind in range(max(_BY_KIND) + 1))


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def outer_fragment(linktype: int, data: bytes) -> bool:
    """Whether a frame's outermost IP header is a fragment's: IPv4 with MF set or an offset,
    or IPv6 whose fixed header is followed by a fragment header that is not atomic; behind
    at most one 802.1Q/802.1ad tag on Ethernet. The fast path sends such frames to every
    share of a file (capture.libpcap tests the same in BPF)."""
    at = IPV4_OFFSETS.get(linktype)
    if at is None or len(data) <= at:
        return False
    if linktype == 1:
        etype = data[12:14]
        if etype in (b"\x81\x00", b"\x88\xa8"):
            at, etype = 18, data[16:18]
        version = 4 if etype == b"\x08\x00" else 6 if etype == b"\x86\xdd" else 0
    else:
        version = data[at] >> 4
    if version == 4:
        return len(data) >= at + 8 and (data[at + 6] << 8 | data[at + 7]) & 0x3FFF != 0
    if version == 6 and len(data) >= at + 44:
        return data[at + 6] == _IPV6_FRAGMENT and (data[at + 42] << 8 | data[at + 43]) & 0xFFF9 != 0
    return False


def decode_frame(ts: float, linktype: int, data: bytes) -> L4Packet | IPFragment | Anomaly | None:
    """Decode one captured frame down to its innermost TCP/UDP segment.

    Returns an L4Packet (innermost addresses and ports; ip_len from the innermost IP
    header; payload clipped to the capture and to the IP/UDP length), an IPFragment for
    a fragment (IPv4, or IPv6 with a fragment header) for flows to reassemble, an
    Anomaly for a broken header, or None for anything else (ARP, ICMP, ESP, non-IP,
    unknown link type). Never raises.
    """
    try:
        size = len(data)
        if linktype == 1 and size >= _FAST_MIN:
            # One 802.1Q tag (mirror ports often deliver tagged frames) shifts everything by 4.
            tag = 4 if data[12] == 0x81 and data[13] == 0 else 0
            if size >= _FAST_MIN + tag:
                etype, vihl, tlen, frag, proto, src, dst, sport, dport, seq, offx, flags = _ETH_IPV4_L4(data, tag)
                # Plain IPv4: no options, not a fragment, a sane total length.
                if etype == 0x0800 and vihl == 0x45 and not frag & 0x3FFF and tlen >= 20:
                    l4 = 34 + tag
                    end = l4 - 20 + tlen
                    if end > size:  # noqa: PLR1730 (hot path: a compare is cheaper than a min() call)
                        end = size
                    if proto == TCP:
                        hlen = (offx >> 4) << 2
                        if 20 <= hlen <= tlen - 20:
                            return L4Packet(ts, src, dst, TCP, sport, dport, tlen, flags, seq, data[l4 + hlen : end])
                    elif proto == UDP:
                        ulen = seq >> 16  # the UDP length sits where TCP's sequence number starts
                        if 8 <= ulen <= tlen - 20 and dport not in UDP_TUNNELS and sport not in UDP_TUNNELS:
                            if l4 + ulen < end:  # noqa: PLR1730 (hot path: a compare is cheaper than a min() call)
                                end = l4 + ulen
                            return L4Packet(ts, src, dst, UDP, sport, dport, tlen, 0, 0, data[l4 + 8 : end])
        kind = link.LINKTYPE_KINDS.get(linktype)
        if kind is None:
            return None
        return _walk(ts, data, kind, 0, len(data))
    except (_StructError, IndexError, ValueError, TypeError):
        return DECODE_ERROR


def decode_l4(
    ts: float, src: bytes, dst: bytes, proto: int, payload: bytes, ip_len: int
) -> L4Packet | IPFragment | Anomaly | None:
    """Decode the payload of a (reassembled) IP datagram as TCP/UDP or a tunnel.

    For the flows stage after IPv4/IPv6 reassembly: `payload` is everything after the IP
    header(s), `ip_len` the datagram's total length. Tunnel protocols (GRE, IP-in-IP, a
    UDP tunnel port) are followed, so the result may carry inner addresses. Never raises.
    """
    try:
        result = _transport(ts, payload, 0, len(payload), src, dst, proto, ip_len, len(payload))
        if result.__class__ is tuple:
            kind, off, end = result
            return _walk(ts, payload, kind, off, end, 1)
        return result
    except (_StructError, IndexError, ValueError, TypeError):
        return DECODE_ERROR


# ---------------------------------------------------------------------------
# The walk
# ---------------------------------------------------------------------------


def _walk(
    ts: float, data: bytes, kind: int, off: int, end: int, depth: int = 0
) -> L4Packet | IPFragment | Anomaly | None:
    """Peel layers from `kind` at `off` until a terminal result; `depth` counts tunnels."""
    peelers = _PEELERS
    for _ in range(MAX_LAYERS):
        if kind <= K_IPV6:
            if kind == K_IP:
                if off >= end:
                    return IP_TRUNCATED
                kind = IP_VERSION_KINDS.get(data[off] >> 4, -1)
                if kind < 0:
                    return IP_BAD_VERSION
            result = _ipv4(ts, data, off, end) if kind == K_IPV4 else _ipv6(ts, data, off, end)
            if result.__class__ is not tuple:
                return result
            depth += 1  # the IP payload is another layer: one more tunnel
            if depth > MAX_TUNNEL_DEPTH:
                return TOO_DEEP
        else:
            result = peelers[kind](data, off, end)
            if result.__class__ is not tuple:
                return result
        kind, off, end = result
    return TOO_DEEP


def _ipv4(ts: float, data: bytes, off: int, end: int) -> Step:
    """IPv4 header: returns a terminal result or a continuation into a tunnel."""
    if end - off < 20:
        return IPV4_TRUNCATED
    vihl, tlen, ident, frag, proto, src, dst = _IPV4.unpack_from(data, off)
    if vihl >> 4 != 4:
        return IPV4_BAD_VERSION
    hlen = (vihl & 0x0F) << 2
    if hlen < 20:
        return IPV4_BAD_IHL
    if tlen == 0:
        tlen = end - off  # TCP segmentation offload: the NIC fills the length in later
    elif tlen < hlen:
        return IPV4_BAD_TOTAL_LEN
    elif off + tlen < end:
        end = off + tlen
    p = off + hlen
    if p > end:
        return IPV4_TRUNCATED
    if frag & 0x3FFF:  # MF set or offset > 0
        return IPFragment(ts, src, dst, proto, ident, (frag & 0x1FFF) << 3, bool(frag & 0x2000), data[p:end])
    return _transport(ts, data, p, end, src, dst, proto, tlen, tlen - hlen)


def _ipv6(ts: float, data: bytes, off: int, end: int) -> Step:
    """IPv6 header and extension headers: a terminal result or a tunnel continuation."""
    if end - off < 40:
        return IPV6_TRUNCATED
    vtc, plen, nh, src, dst = _IPV6.unpack_from(data, off)
    if vtc >> 4 != 6:
        return IPV6_BAD_VERSION
    if plen == 0:
        ip_len = end - off  # jumbogram (RFC 2675) or segmentation offload
    else:
        ip_len = plen + 40
        if off + ip_len < end:  # noqa: PLR1730 (hot path: a compare is cheaper than a min() call)
            end = off + ip_len
    p = off + 40
    if nh in _IPV6_EXT:
        for _ in range(MAX_IPV6_EXT_HEADERS):
            if end - p < 8:
                return IPV6_EXT_TRUNCATED
            if nh == _IPV6_FRAGMENT:
                nxt, fo, ident = _IPV6_FRAG.unpack_from(data, p)
                p += 8
                if fo & 0xFFF9:  # offset or M set; an atomic fragment (RFC 6946) goes on
                    return IPFragment(ts, src, dst, nxt, ident, fo & 0xFFF8, bool(fo & 1), data[p:end])
                nh = nxt
            else:
                hlen = (data[p + 1] + 2) << 2 if nh == _IPV6_AH else (data[p + 1] + 1) << 3
                nh = data[p]
                p += hlen
                if p > end:
                    return IPV6_EXT_TRUNCATED
            if nh not in _IPV6_EXT:
                break
        else:
            return IPV6_TOO_MANY_EXT
    return _transport(ts, data, p, end, src, dst, nh, ip_len, off + ip_len - p)


def _transport(
    ts: float, data: bytes, p: int, end: int, src: bytes, dst: bytes, proto: int, ip_len: int, l4_len: int
) -> Step:
    """TCP/UDP at `p` (l4_len: the IP payload length by header), or a tunnel continuation."""
    if proto == TCP:
        if end - p < 20:
            return TCP_TRUNCATED
        sport, dport, seq, offx, flags = _TCP.unpack_from(data, p)
        hlen = (offx >> 4) << 2
        if hlen < 20 or hlen > l4_len:
            return TCP_BAD_OFFSET
        return L4Packet(ts, src, dst, TCP, sport, dport, ip_len, flags, seq, data[p + hlen : end])
    if proto == UDP:
        if end - p < 8:
            return UDP_TRUNCATED
        sport, dport, ulen = _UDP.unpack_from(data, p)
        if ulen:  # 0: a jumbogram or offload; the IP length bounds it
            if ulen < 8 or ulen > l4_len:
                return UDP_BAD_LEN
            if p + ulen < end:  # noqa: PLR1730 (hot path: a compare is cheaper than a min() call)
                end = p + ulen
        if dport in UDP_TUNNELS or sport in UDP_TUNNELS:
            inner = _udp_tunnel(data, p + 8, end, sport, dport)
            if inner is not None:
                return inner
        return L4Packet(ts, src, dst, UDP, sport, dport, ip_len, 0, 0, data[p + 8 : end])
    return follow(IP_PROTO_KINDS, proto, p, end)  # a tunnel, or None for ICMP, ESP, OSPF, ...


def _udp_tunnel(data: bytes, p: int, end: int, sport: int, dport: int) -> Next | Anomaly | None:
    """The inner layer if a tunnel port's payload looks like that tunnel, else None.

    The destination port is tried first, then the source port (replies from a Teredo
    server or a GTP peer come from the well-known port).
    """
    tunnel = UDP_TUNNELS.get(dport)
    if tunnel is not None:
        inner = tunnel(data, p, end)
        if inner is not None:
            return inner
    other = UDP_TUNNELS.get(sport)
    if other is not None and other is not tunnel:
        return other(data, p, end)
    return None
