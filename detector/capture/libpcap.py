"""Reading a capture file through libpcap (pcapy-ng) for the offline fast path: frames in
batches of one bytes object each (`next_batch`), optionally one share of the flows selected
by BPF, for `flows.heads` to split into heads and counted runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pcapy

from detector.capture.live import joined_batches
from detector.capture.pcapfile import CaptureError
from detector.model import DNS_UDP_PORTS, IPV4_OFFSETS

# Frames per `next_batch` call: the selection is done per batch in numpy (the larger,
# the cheaper per frame, up to about 12 MB of frames); smaller steps re-read a cut file.
SELECT_BATCH = 1 << 14
BATCH = 1024

# 802.1Q and 802.1ad tag protocol identifiers, as a filter on an Ethernet frame.
_TAGGED = "(ether[12:2] == 0x8100 or ether[12:2] == 0x88a8)"


# Classic pcap (µs and ns, both byte orders). pcapng is left to the ordinary reader: libpcap
# stops at the first interface whose link type differs from the first one's.
_PCAP_MAGICS = frozenset({b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"})


def fast_path_linktype(path: Path) -> int | None:
    """The file's DLT when it is a classic pcap whose link header the head selector knows,
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
    return dlt if dlt in IPV4_OFFSETS else None


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


def _share_filter(dlt: int, part: tuple[int, int] | None) -> str:
    """BPF for the k-th of n shares of a file, `part` = (k, n), n a power of two ("" for the
    whole file): a flow's share is a hash of its two addresses that is the same in both
    directions (last octets xor-ed), read at fixed offsets behind one 802.1Q/802.1ad tag;
    DNS over UDP (untagged or behind one tag) goes to every share, a fragmented answer to
    its flow's share only (its pieces must meet), traffic that is neither IPv4 nor IPv6 (or
    has two VLAN tags) to share 0.
    """
    if part is None:
        return ""
    k, n = part
    m = n - 1
    ip_forms = [
        ("ip", f"((ip[15] ^ ip[19]) & {m})"),
        ("ip6", f"((ip6[23] ^ ip6[39]) & {m})"),
    ]
    every = f"({_DNS}) and not (ip and (ip[6:2] & 0x3fff) != 0)"
    if dlt == 1:
        ip_forms += [
            (f"{_TAGGED} and ether[16:2] == 0x0800", f"((ether[33] ^ ether[37]) & {m})"),
            (f"{_TAGGED} and ether[16:2] == 0x86dd", f"((ether[41] ^ ether[57]) & {m})"),
        ]
        every = f"({every}) or {_TAGGED_DNS}"
    mine = " or ".join(f"({is_ip} and {h} == {k})" for is_ip, h in ip_forms)
    if k == 0:
        mine += " or not (" + " or ".join(f"({is_ip})" for is_ip, _ in ip_forms) + ")"
    return f"({every}) or {mine}"


def batches(path: Path, dlt: int, part: tuple[int, int] | None, cut: list[str]) -> Iterator[tuple[bytes, bytes]]:
    """A classic pcap file's frames (one share of its flows with `part`, see _share_filter)
    as `next_batch` batches: (frame bytes, packed records of seconds, microseconds, offset
    and length). libpcap loses the whole batch that holds a truncated record: on that
    error the file is read again up to the cut, frame by frame, and libpcap's message is
    added to `cut`. Raises CaptureError when libpcap cannot open the file."""
    expression = _share_filter(dlt, part)
    seen = 0
    try:
        cap = pcapy.open_offline(str(path))
        if expression:
            cap.setfilter(expression)
    except pcapy.PcapError as exc:
        raise CaptureError(f"{path}: {exc}") from None
    try:
        while True:
            data, meta = cap.next_batch(SELECT_BATCH)
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
    if expression:
        cap.setfilter(expression)
    datas: list[bytes] = []
    metas: list[bytes] = []
    try:
        while skip:
            _, meta = cap.next_batch(min(skip, BATCH))
            skip -= len(meta) // 16
        while True:
            data, meta = cap.next_batch(1)
            if not meta:
                break
            datas.append(data)
            metas.append(meta)
    except pcapy.PcapError:
        pass  # the truncated record
    finally:
        cap.close()
    if datas:
        yield joined_batches(datas, metas)
