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
from detector.model import IPV4_OFFSETS

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


# Bytes of a frame the share filter may read: a link header (up to 20), an IPv4 header with
# options (up to 60) and the ports. A file captured with a shorter snap length is not split
# (see splittable).
SPLIT_SNAPLEN = 96


def splittable(path: Path) -> bool:
    """Whether the file's frames are captured long enough for the share filter to read
    every field it tests (its header's snap length); a frame cut shorter would reach no
    share, since BPF rejects a packet on a load past its end."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(24)
    except OSError:
        return False
    if len(header) < 24 or header[:4] not in _PCAP_MAGICS:
        return False
    little = header[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
    return int.from_bytes(header[16:20], "little" if little else "big") >= SPLIT_SNAPLEN


def _share_filter(dlt: int, part: tuple[int, int] | None) -> str:
    """BPF for the k-th of n shares of a file, `part` = (k, n), n a power of two ("" for the
    whole file). A share owns clients: a TCP or UDP packet goes to the share of its client,
    the side with the higher port (an ephemeral port against a service port), by its
    address's last byte, so a client's flows and its DNS meet in one share, as the live
    workers' fanout program keys them (pipeline.client_share is the same rule in Python).
    Equal ports, other protocols and packets whose ports the filter does not read (IPv6
    extension headers, IPv4 options behind a VLAN tag) go by both addresses' last bytes
    xor-ed, which keeps each of those flows in one share; IP fragments go to every share.
    Addresses are read at fixed offsets behind one 802.1Q/802.1ad tag; traffic that is
    neither IPv4 nor IPv6 (or has two tags) goes to share 0. A frame cut short inside the
    fields it reads would reach no share: files with a short snap length are not split.
    """
    if part is None:
        return ""
    k, n = part
    m = n - 1
    l4 = "(ip6[6] == 6 or ip6[6] == 17)"
    forms = [
        # (is this form, last byte of the source, of the destination, has ports, ports compared)
        ("ip", "ip[15]", "ip[19]", "((ip[6:2] & 0x3fff) == 0 and (ip[9] == 6 or ip[9] == 17))", _l4_ports),
        ("ip6", "ip6[23]", "ip6[39]", l4, lambda op: f"ip6[40:2] {op} ip6[42:2]"),
    ]
    if dlt == 1:
        forms += [
            (f"({_TAGGED} and ether[16:2] == 0x0800)", "ether[33]", "ether[37]",
             "(ether[18] == 0x45 and (ether[24:2] & 0x3fff) == 0 and (ether[27] == 6 or ether[27] == 17))",
             lambda op: f"ether[38:2] {op} ether[40:2]"),
            (f"({_TAGGED} and ether[16:2] == 0x86dd)", "ether[41]", "ether[57]",
             "(ether[24] == 6 or ether[24] == 17)", lambda op: f"ether[58:2] {op} ether[60:2]"),
        ]  # fmt: skip
    mine = " or ".join(
        f"({is_form} and (({ported} and {cmp('>')} and ({src} & {m}) == {k})"
        f" or ({ported} and {cmp('<')} and ({dst} & {m}) == {k})"
        f" or (not ({ported} and {cmp('!=')}) and (({src} ^ {dst}) & {m}) == {k})))"
        for is_form, src, dst, ported, cmp in forms
    )
    # IP fragments reach every share, since only a datagram's first piece has ports to tell
    # the client by: each share reassembles them and keeps its own clients' datagrams
    # (decode.net.outer_fragment is this test in Python).
    pieces = ["(ip and (ip[6:2] & 0x3fff) != 0)", "(ip6 and ip6[6] == 44 and (ip6[42:2] & 0xfff9) != 0)"]
    if dlt == 1:
        pieces += [
            f"({_TAGGED} and ether[16:2] == 0x0800 and (ether[24:2] & 0x3fff) != 0)",
            f"({_TAGGED} and ether[16:2] == 0x86dd and ether[24] == 44 and (ether[60:2] & 0xfff9) != 0)",
        ]
    mine += " or " + " or ".join(pieces)
    if k == 0:
        mine += " or not (" + " or ".join(is_form for is_form, *_ in forms) + ")"
    return mine


def _l4_ports(op: str) -> str:
    """Source port `op` destination port, for an IPv4 TCP or UDP packet (libpcap finds the
    header behind any options; its tcp[] and udp[] do not read IPv6)."""
    return f"(tcp[0:2] {op} tcp[2:2] or udp[0:2] {op} udp[2:2])"


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
