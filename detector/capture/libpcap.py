"""Reading a capture file through libpcap with the filtering done in C (pcapy-ng) and numpy.

The offline fast path reads a file as two disjoint parts, each selected by libpcap's BPF:
IPv4 TCP/UDP other than DNS, whose frames `flows.heads.HeadSelector` splits into the few
the pipeline must see one by one and counted runs standing for the rest, and everything
else (DNS, IPv6, tunnels, other link content), which goes to Python whole. The two parts
are merged back into one time-ordered stream.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pcapy

from detector.capture.pcapfile import CaptureError
from detector.flows.heads import HeadSelector, RunFeed
from detector.model import DNS_UDP_PORTS

# Where the IPv4 header starts, per DLT, before any VLAN tag (the head selector skips one).
_L2_OFFSET = {1: 14, 113: 16, 276: 20, 12: 0, 14: 0, 101: 0, 0: 4, 108: 4}
# Frames read per `next_batch` call of the Python part, and of the IPv4 part (whose
# selection is done per batch in numpy: the larger, the cheaper per frame).
BATCH = 1024
SELECT_BATCH = 1 << 14


Frame = tuple[float, int, bytes]

# 802.1Q and 802.1ad tag protocol identifiers, as a filter on an Ethernet frame.
_TAGGED = "(ether[12:2] == 0x8100 or ether[12:2] == 0x88a8)"


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


def _filters(dlt: int, python_udp_ports: Iterable[int], part: tuple[int, int] | None = None) -> tuple[str, str]:
    """BPF for the C part and for the Python part. The C part is IPv4 TCP/UDP except DNS, the
    UDP ports that carry tunnels (their content is flows) and fragments (no ports for the C
    flow key); the Python part is the rest.

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
    if part is None:
        return c_all, f"not ({c_all})"
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


def _batches(path: Path, expression: str, size: int, cut: list[str]) -> Iterator[tuple[bytes, bytes]]:
    """`next_batch` batches (frame bytes, packed records) of the frames of a file that match
    a filter. libpcap loses the whole batch that holds a truncated record: on that error
    the file is read again up to the cut, frame by frame, and the cut noted in `cut`."""
    seen = 0
    try:
        cap = pcapy.open_offline(str(path))
        cap.setfilter(expression)
    except pcapy.PcapError as exc:
        raise CaptureError(f"{path}: {exc}") from None
    try:
        while True:
            data, meta = cap.next_batch(size)
            if not meta:
                return
            seen += len(meta) // 16
            yield data, meta
    except pcapy.PcapError as exc:
        cut.append(str(exc))
    finally:
        cap.close()
    yield from _before_cut(path, expression, seen)


def _before_cut(path: Path, expression: str, skip: int) -> Iterator[tuple[bytes, bytes]]:
    """The frames after the first `skip` up to a truncated record, as one batch."""
    cap = pcapy.open_offline(str(path))
    cap.setfilter(expression)
    datas: list[bytes] = []
    records = array("I")
    size = 0
    try:
        while skip:
            _, meta = cap.next_batch(min(skip, BATCH))
            skip -= len(meta) // 16
        while True:
            data, meta = cap.next_batch(1)
            if not meta:
                break
            sec, usec, _, caplen = memoryview(meta).cast("I")
            records.extend((sec, usec, size, caplen))
            datas.append(data)
            size += len(data)
    except pcapy.PcapError:
        pass  # the truncated record
    finally:
        cap.close()
    if datas:
        yield b"".join(datas), records.tobytes()


def _python_part(path: Path, expression: str, dlt: int, cut: list[str]) -> Iterator[Frame]:
    for data, meta in _batches(path, expression, BATCH, cut):
        view = memoryview(meta).cast("I")
        yield from [
            (view[i] + view[i + 1] * 1e-6, dlt, data[view[i + 2] : view[i + 2] + view[i + 3]])
            for i in range(0, len(view), 4)
        ]


def feed_partitioned(
    path: Path,
    feed: Callable[[float, int, bytes], None],
    feed_run: RunFeed,
    *,
    idle_timeout: float,
    inspect_bytes: int,
    python_udp_ports: Iterable[int] = (53,),
    part: tuple[int, int] | None = None,
) -> str | None:
    """Feed a file's frames to `feed`, and runs of frames to `feed_run`, in time order:
    of IPv4 TCP/UDP (not DNS, not on `python_udp_ports`) the frames a HeadSelector admits
    and runs for the rest (first time, last time, protocol, source, destination, ports,
    packets, IP bytes, frame bytes); all other frames whole. With `part`, one share of the
    flows (see _filters). Returns libpcap's message when the file ends in a truncated
    record (everything before it was fed), else None; raises CaptureError when libpcap
    cannot read the file."""
    dlt = fast_path_linktype(path)
    if dlt is None:
        raise CaptureError(f"{path}: not readable by the fast path")
    c_filter, py_filter = _filters(dlt, python_udp_ports, part)
    cut: list[str] = []
    rest = _Merge(_python_part(path, py_filter, dlt, cut), feed)
    selector = HeadSelector(
        _L2_OFFSET[dlt], ethernet=dlt == 1, whole_ports=python_udp_ports, idle_timeout=idle_timeout,
        inspect_bytes=inspect_bytes,
    )  # fmt: skip
    for data, meta in _batches(path, c_filter, SELECT_BATCH, cut):
        selector.feed(data, meta, dlt, feed, feed_run, rest)
    rest(float("inf"))
    return cut[0] if cut else None


class _Merge:
    """Called with a time: feeds the other part's frames up to that time."""

    __slots__ = ("_frames", "_feed", "_pending")

    def __init__(self, frames: Iterator[Frame], feed: Callable[[float, int, bytes], None]) -> None:
        self._frames = frames
        self._feed = feed
        self._pending = next(frames, None)

    def __call__(self, ts: float) -> None:
        pending = self._pending
        if pending is None or pending[0] > ts:
            return
        feed, frames = self._feed, self._frames
        while pending is not None and pending[0] <= ts:
            feed(*pending)
            pending = next(frames, None)
        self._pending = pending
