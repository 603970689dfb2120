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


def _filters(dlt: int, python_udp_ports: Iterable[int]) -> tuple[str, str]:
    """BPF for the C part and for the Python part: a partition of all packets. The C part is
    IPv4 TCP/UDP except the UDP ports that carry DNS or tunnels (their content is flows)."""
    udp = " or ".join(f"udp port {p}" for p in sorted(set(python_udp_ports)))
    ipv4 = f"ip and (tcp or udp) and not ({udp})" if udp else "ip and (tcp or udp)"
    c_part = f"({ipv4}) or (vlan and {ipv4})" if dlt == 1 else ipv4
    return c_part, f"not ({c_part})"


def _python_part(path: Path, expression: str, dlt: int) -> Iterator[Frame]:
    cap = pcapy.open_offline(str(path))
    try:
        cap.setfilter(expression)
        while True:
            data, meta = cap.next_batch(BATCH)
            if not meta:
                return
            view = memoryview(meta).cast("I")
            for i in range(0, len(view), 4):
                off = view[i + 2]
                yield view[i] + view[i + 1] * 1e-6, dlt, data[off : off + view[i + 3]]
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
) -> tuple[int, int]:
    """Feed a file's frames, in time order, to `feed`: of IPv4 TCP/UDP (not DNS) only the
    first `flow_heads` packets of each direction of each flow, or only the packets to or from
    `addresses` (packed IPv4, 4 bytes each); all other packets whole, among them UDP on
    `python_udp_ports` (DNS, tunnels). Returns how many
    IPv4 TCP/UDP packets the C part read and how many of them it let through. Raises
    CaptureError when libpcap fails mid-file."""
    dlt = fast_path_linktype(path)
    if dlt is None:
        raise CaptureError(f"{path}: not readable by the fast path")
    c_filter, py_filter = _filters(dlt, python_udp_ports)
    rest = _python_part(path, py_filter, dlt)
    pending = next(rest, None)
    admit = (1 << FLOW_HEAD) if flow_heads else (1 << SET_MATCH)

    def on_packet(hdr, data: bytes, _cls: int) -> None:  # type: ignore[no-untyped-def]
        nonlocal pending
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
