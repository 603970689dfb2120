"""Reading a capture file through libpcap with the filtering done in C (pcapy-ng).

The offline fast path reads a file as two disjoint parts: IPv4 TCP/UDP other than DNS,
which libpcap's BPF selects and pcapy-ng's C classifier thins out (the first packets of
each flow, or the packets of listed addresses), and everything else (DNS, IPv6, tunnels,
other link content), which goes to Python whole. The two parts are merged back into one
time-ordered stream of frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pcapy

from detector.capture.pcapfile import CaptureError
from detector.model import DNS_UDP_PORTS

# Where the IPv4 header starts, per DLT, for the C classifier (it skips VLAN tags itself).
_L2_OFFSET = {1: 14, 113: 16, 276: 20, 12: 0, 14: 0, 101: 0, 0: 4, 108: 4}
# pcapy-ng's classes for `loop_filtered` (generic profile).
FLOW_HEAD, SET_MATCH = 1, 2
# Packets per `loop_filtered` call. pcapy-ng builds its flow-head table per call, so a
# flow spanning two calls may be let through twice: harmless, the Python flow table is the
# reference. Large enough that this is rare, small enough to stay responsive.
CHUNK = 1 << 20
# Frames read per `next_batch` call of the Python part.
BATCH = 1024


Frame = tuple[float, int, bytes]

# 802.1Q and 802.1ad tag protocol identifiers, as bytes and as a filter on an Ethernet frame.
_TAGS = (b"\x81\x00", b"\x88\xa8")
_TAGGED = "(ether[12:2] == 0x8100 or ether[12:2] == 0x88a8)"


def flow_key(proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    """How `feed_partitioned(skip=...)` names one direction of an IPv4 flow."""
    return bytes((proto,)) + src + dst + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")


# Classic pcap (µs and ns, both byte orders). pcapng is left to the ordinary reader: libpcap
# stops at the first interface whose link type differs from the first one's.
_PCAP_MAGICS = frozenset({b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"})


def fast_path_linktype(path: Path) -> int | None:
    """The file's DLT when it is a classic pcap whose link header the C classifier knows,
    else None (gzip, pcapng, other link types, unreadable: the ordinary reader takes those).
    """
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic not in _PCAP_MAGICS:
            return None
        cap = pcapy.open_offline(str(path))
    except (OSError, pcapy.PcapError):
        return None
    dlt = cap.datalink()
    cap.close()
    return dlt if dlt in _L2_OFFSET else None


# What a server sends from a well-known port to a client's ephemeral one, but SYN/FIN/RST.
_SERVER_DATA = (
    "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) == 0 and tcp src portrange 0-1023 and tcp dst portrange 1024-65535"
)

_DNS_PORTS = tuple(sorted(DNS_UDP_PORTS))


def _dns_ports(at: int) -> str:
    return " or ".join(f"ether[{at + side}:2] == {port}" for side in (0, 2) for port in _DNS_PORTS)


# UDP DNS behind one 802.1Q/802.1ad tag, at fixed Ethernet offsets (IPv4 without options and
# not a fragment, or IPv6 with UDP next).
_TAGGED_DNS = (
    f"({_TAGGED} and ("
    f"(ether[16:2] == 0x0800 and ether[18] == 0x45 and ether[27] == 17 and (ether[24:2] & 0x3fff) == 0"
    f" and ({_dns_ports(38)}))"
    f" or (ether[16:2] == 0x86dd and ether[24] == 17 and ({_dns_ports(58)}))))"
)

# DNS over UDP reaches every share whole: each share's DNS cache must know every client's
# lookups. (DNS over TCP is a flow like any other: it goes to its flow's share.)
_DNS = " or ".join(f"udp port {port}" for port in _DNS_PORTS)


def _filters(
    dlt: int, python_udp_ports: Iterable[int], part: tuple[int, int] | None = None, heads: bool = False
) -> tuple[str, str]:
    """BPF for the C part and for the Python part. The C part is IPv4 TCP/UDP except DNS, the
    UDP ports that carry tunnels (their content is flows) and fragments (no ports for the C
    flow key); the Python part is the rest. With `heads`, the C part also leaves out what a
    server sends from a well-known port to a client's high one, other than SYN, FIN and RST:
    names come from clients, and the flow heads are then the client's own packets.

    With `part` = (k, n), n a power of two, only the k-th of n shares: a flow's share is a
    hash of its two addresses that is the same in both directions (last octets xor-ed);
    DNS over UDP (untagged or behind one tag) goes to every share, traffic that is neither
    IPv4 nor IPv6 (or has two VLAN tags) to share 0. libpcap's `vlan` keyword shifts the
    offsets of everything after it, so it comes last, once; tagged addresses and ports are
    read at fixed Ethernet offsets.
    """
    ethernet = dlt == 1
    udp = " or ".join(f"udp port {p}" for p in sorted(set(python_udp_ports)))
    not_c = f"{udp} or {_DNS} or tcp port 53" if udp else f"{_DNS} or tcp port 53"
    ipv4 = f"ip and (tcp or udp) and (ip[6:2] & 0x3fff) == 0 and not ({not_c})"
    c_all = f"({ipv4}) or (vlan and ({ipv4}))" if ethernet else ipv4
    if heads:
        ipv4 += f" and not ({_SERVER_DATA})"
    c_heads = f"({ipv4}) or (vlan and ({ipv4}))" if ethernet else ipv4
    if part is None:
        return c_heads, f"not ({c_all})"
    k, n = part
    m = n - 1
    # The share of IPv4/IPv6 packets, untagged and behind one 802.1Q/802.1ad tag.
    ip_forms = [
        ("ip", f"((ip[15] ^ ip[19]) & {m})"),
        ("ip6", f"((ip6[23] ^ ip6[39]) & {m})"),
    ]
    if ethernet:
        ip_forms += [
            (f"{_TAGGED} and ether[16:2] == 0x0800", f"((ether[33] ^ ether[37]) & {m})"),
            (f"{_TAGGED} and ether[16:2] == 0x86dd", f"((ether[41] ^ ether[57]) & {m})"),
        ]
    mine = " or ".join(f"({is_ip} and {h} == {k})" for is_ip, h in ip_forms)
    if k == 0:
        mine += " or not (" + " or ".join(f"({is_ip})" for is_ip, _ in ip_forms) + ")"
    c_core = f"{ipv4} and ((ip[15] ^ ip[19]) & {m}) == {k}"
    c_part = f"({c_core}) or (vlan and ({c_core}))" if ethernet else c_core
    # Every share gets whole DNS datagrams, untagged and behind one tag (read at fixed
    # offsets: an IPv4 header without options); a fragmented answer goes to its flow's share
    # only (its pieces must meet). `not (c_all)` last: it holds the one `vlan`.
    every = f"({_DNS}) and not (ip and (ip[6:2] & 0x3fff) != 0)"
    if ethernet:
        every = f"({every}) or {_TAGGED_DNS}"
    return c_part, f"(({every}) or {mine}) and not ({c_all})"


class Recording:
    """The Python part of one read, kept for a second pass over the same file and share,
    up to a size: when it grows past `limit` bytes it is dropped and the second pass reads
    the file again."""

    __slots__ = ("frames", "size", "limit")

    def __init__(self, limit: int) -> None:
        self.frames: list[Frame] | None = []
        self.size = 0
        self.limit = limit

    def add(self, frame: Frame) -> None:
        """Keep one frame (or give up keeping)."""
        frames = self.frames
        if frames is None:
            return
        self.size += len(frame[2]) + _FRAME_OVERHEAD
        if self.size > self.limit:
            self.frames = None
        else:
            frames.append(frame)


# Bytes a kept frame costs besides its data (tuple, float, bytes header, list slot).
_FRAME_OVERHEAD = 120


def _python_part(path: Path, expression: str, dlt: int, record: Recording | None) -> Iterator[Frame]:
    cap = pcapy.open_offline(str(path))
    try:
        cap.setfilter(expression)
        while True:
            data, meta = cap.next_batch(BATCH)
            if not meta:
                return
            view = memoryview(meta).cast("I")
            batch = [
                (view[i] + view[i + 1] * 1e-6, dlt, data[view[i + 2] : view[i + 2] + view[i + 3]])
                for i in range(0, len(view), 4)
            ]
            if record is not None:
                for frame in batch:
                    record.add(frame)
            yield from batch
    except pcapy.PcapError as exc:
        raise CaptureError(f"{path}: {exc}") from None
    finally:
        cap.close()


def feed_partitioned(
    path: Path,
    feed: Callable[[float, int, bytes], None],
    *,
    flow_heads: int = 0,
    addresses: bytes = b"",
    python_udp_ports: Iterable[int] = (53,),
    part: tuple[int, int] | None = None,
    skip: set[bytes] | frozenset[bytes] = frozenset(),
    record: Recording | None = None,
    replay: list[Frame] | None = None,
) -> tuple[int, int]:
    """Feed a file's frames, in time order, to `feed`: of IPv4 TCP/UDP (not DNS) only the
    first `flow_heads` packets of each flow (server data left out, see _filters), or only the packets to or from
    `addresses` (packed IPv4, 4 bytes each); all other packets whole, among them UDP on
    `python_udp_ports` (DNS, tunnels); with `part`, one share of the flows (see _filters).
    IPv4 TCP/UDP packets whose `flow_key` is in `skip` are dropped before `feed`. The
    Python part is kept in `record`, or taken from `replay` (what a `record` of the same
    file and share kept) instead of the file. Returns how many IPv4 TCP/UDP packets the C
    part read and how many of them it let through. Raises CaptureError when libpcap fails
    mid-file."""
    dlt = fast_path_linktype(path)
    if dlt is None:
        raise CaptureError(f"{path}: not readable by the fast path")
    c_filter, py_filter = _filters(dlt, python_udp_ports, part, heads=bool(flow_heads))
    rest = iter(replay) if replay is not None else _python_part(path, py_filter, dlt, record)
    pending = next(rest, None)
    admit = (1 << FLOW_HEAD) if flow_heads else (1 << SET_MATCH)
    l2 = _L2_OFFSET[dlt]
    tagged = dlt == 1

    def on_packet(hdr, data: bytes, _cls: int) -> None:  # type: ignore[no-untyped-def]
        nonlocal pending
        if skip:
            # The C part holds IPv4 TCP/UDP without fragments, behind at most one tag.
            off = l2 + 4 if tagged and data[12:14] in _TAGS else l2
            l4 = off + ((data[off] & 15) << 2)
            if data[off + 9 : off + 10] + data[off + 12 : off + 20] + data[l4 : l4 + 4] in skip:
                return
        sec, usec = hdr.getts()
        ts = sec + usec * 1e-6
        while pending is not None and pending[0] <= ts:
            feed(*pending)
            pending = next(rest, None)
        feed(ts, dlt, data)

    cap = pcapy.open_offline(str(path))
    total = admitted = 0
    try:
        cap.setfilter(c_filter)
        while True:
            res = cap.loop_filtered(CHUNK, on_packet, admit, addresses, flow_heads, None, None, 53, _L2_OFFSET[dlt])
            seen = res[0] + res[1]
            total += seen
            admitted += res[0]
            if seen < CHUNK:
                break
    except pcapy.PcapError as exc:
        raise CaptureError(f"{path}: {exc}") from None
    finally:
        cap.close()
    while pending is not None:
        feed(*pending)
        pending = next(rest, None)
    return total, admitted
