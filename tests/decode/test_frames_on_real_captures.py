"""decode_frame on every real capture in ../shared/captures, checked against tshark 4.0.

Per file: every frame decodes without an internal error, and the innermost TCP/UDP
packet of every frame (addresses, ports) is exactly what tshark sees as the innermost
TCP/UDP over IP — frame by frame, so a frame we drop or invent shows up by number.

tshark runs once per session on all captures merged with `mergecap -a` (one 2-second
run instead of 131 start-ups of ~0.5 s each); `mergecap` keeps each file's interfaces,
so link types survive the merge. Files are read here with scapy's raw readers (the
project's own capture reader is another module's job).

Where tshark's view is not the decoder's contract, the rule is written next to the
comparison (`_innermost_l4`) with its reason:
- ICMP errors quote an IP header + 8 bytes of TCP/UDP; tshark shows those ports, the
  sensor rightly ignores ICMP (an error is not traffic of the quoted flow).
- Fragments: tshark runs with IP/IPv6 defragmentation off and then dissects the TCP/UDP
  header in a first fragment; decode_frame returns an IPFragment for flows to
  reassemble, so a first fragment is compared by the ports at the start of its data.
- UDP 8472 (Linux's default VXLAN port): tshark 4.0 decodes VXLAN only on 4789, so it
  runs with `-d udp.port==8472,vxlan` (tcpdump__vxlan_port_8472.pcap is the file).
- ERSPAN type III frame type 7 (tcpdump__erspan-type-iii-ft-7.pcap): neither tshark nor
  the decoder follows it (it is not Ethernet or IP), so both say "no TCP/UDP".
- Teredo between peers on ports other than 3544 (zeek__tunnels__Teredo.pcap): Zeek finds
  it by heuristics; tshark and the decoder both keep it as plain UDP.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest

from detector.decode import net
from detector.decode.link import K_ETHER
from detector.model import Anomaly, IPFragment, L4Packet

CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "captures"
FILES = sorted(p for p in CAPTURES.glob("*/*") if p.suffix in (".pcap", ".pcapng")) if CAPTURES.is_dir() else []

# tshark options: no reassembly (so every TCP/UDP header is reported in its own frame,
# first fragments included) and VXLAN on Linux's port too.
TSHARK_OPTIONS = (
    "-n",
    "-o",
    "ip.defragment:FALSE",
    "-o",
    "ipv6.defragment:FALSE",
    "-o",
    "tcp.desegment_tcp_streams:FALSE",
    "-d",
    "udp.port==8472,vxlan",
)
TSHARK_FIELDS = (
    "frame.protocols",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
)
# Layers that, after the last TCP/UDP in frame.protocols, mean the TCP/UDP was a tunnel's
# outer transport and the innermost packet is something else (ARP, ICMPv6, ESP...).
INNER_LAYERS = {"eth", "ip", "ipv6", "arp", "mpls", "nsh", "ppp", "vlan", "erspan"}

Tuple = tuple[str, str, str, int, int]  # transport, src, dst, sport, dport

pytestmark = pytest.mark.skipif(not FILES, reason=f"real captures not found at {CAPTURES}")


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


def read_frames(path: Path) -> list[tuple[int, bytes]]:
    """(linktype, frame bytes) for every packet of a pcap or pcapng file."""
    from scapy.utils import RawPcapNgReader, RawPcapReader  # test-only dependency

    with path.open("rb") as fh:
        is_pcapng = fh.read(4) == b"\x0a\x0d\x0d\x0a"
    if is_pcapng:
        with RawPcapNgReader(str(path)) as reader:
            return [(meta.linktype, bytes(data)) for data, meta in reader]
    with RawPcapReader(str(path)) as reader:
        return [(reader.linktype, bytes(data)) for data, _ in reader]


def _innermost_l4(line: str) -> Tuple | None:
    """The innermost TCP/UDP tuple tshark printed for one frame, or None."""
    cols = (line.split("\t") + [""] * len(TSHARK_FIELDS))[: len(TSHARK_FIELDS)]
    protocols, ip_src, ip_dst, ip6_src, ip6_dst, tcp_sport, tcp_dport, udp_sport, udp_dport = cols
    layers = protocols.split(":")
    transports = [i for i, name in enumerate(layers) if name in ("tcp", "udp")]
    if not transports:
        return None
    last = transports[-1]
    if INNER_LAYERS.intersection(layers[last + 1 :]):
        return None  # a tunnel's outer UDP; the innermost packet is not TCP/UDP
    if any(name.startswith("icmp") for name in layers[:last]):
        return None  # ports quoted inside an ICMP error
    network = max(i for i, name in enumerate(layers[:last]) if name in ("ip", "ipv6"))
    src, dst = (ip_src, ip_dst) if layers[network] == "ip" else (ip6_src, ip6_dst)
    sport, dport = (tcp_sport, tcp_dport) if layers[last] == "tcp" else (udp_sport, udp_dport)
    # Nested layers print as comma-separated lists, outermost first.
    last_of = lambda field: field.split(",")[-1]
    return layers[last], last_of(src), last_of(dst), int(last_of(sport)), int(last_of(dport))


@pytest.fixture(scope="session")
def frames_by_file() -> dict[Path, list[tuple[int, bytes]]]:
    return {path: read_frames(path) for path in FILES}


@pytest.fixture(scope="session")
def tshark_truth(tmp_path_factory, frames_by_file) -> dict[Path, list[Tuple | None]]:
    """tshark's innermost TCP/UDP per frame, per file, from one run over all files merged."""
    if not (shutil.which("tshark") and shutil.which("mergecap")):
        pytest.skip("tshark/mergecap not installed")
    merged = tmp_path_factory.mktemp("tshark") / "all.pcapng"
    subprocess.run(["mergecap", "-a", "-w", str(merged), *map(str, FILES)], check=True, capture_output=True)
    fields = [arg for name in TSHARK_FIELDS for arg in ("-e", name)]
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(merged),
            *TSHARK_OPTIONS,
            "-T",
            "fields",
            "-E",
            "separator=/t",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
            *fields,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert len(out) == sum(len(frames) for frames in frames_by_file.values()), "mergecap/tshark lost frames"
    truth, at = {}, 0
    for path in FILES:
        count = len(frames_by_file[path])
        truth[path] = [_innermost_l4(line) for line in out[at : at + count]]
        at += count
    return truth


def _as_tuple(result: object) -> Tuple | None:
    """Our innermost TCP/UDP tuple; a first fragment's ports come from its data."""
    if isinstance(result, IPFragment):
        if result.offset != 0 or result.proto not in (6, 17) or len(result.data) < 4:
            return None
        src, dst = result.src, result.dst
        sport, dport = int.from_bytes(result.data[0:2], "big"), int.from_bytes(result.data[2:4], "big")
        proto = result.proto
    elif isinstance(result, L4Packet):
        src, dst, sport, dport, proto = result.src, result.dst, result.sport, result.dport, result.proto
    else:
        return None
    transport = "tcp" if proto == 6 else "udp"
    return transport, str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), sport, dport


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_every_frame_decodes_without_internal_error(path: Path, frames_by_file) -> None:
    for number, (linktype, data) in enumerate(frames_by_file[path], 1):
        result = net.decode_frame(0.0, linktype, data)
        assert result != net.DECODE_ERROR, f"frame {number}"
        assert result is None or isinstance(result, (L4Packet, IPFragment, Anomaly)), f"frame {number}"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_innermost_tcp_udp_matches_tshark(path: Path, frames_by_file, tshark_truth) -> None:
    ours = [_as_tuple(net.decode_frame(0.0, lt, data)) for lt, data in frames_by_file[path]]
    expected = tshark_truth[path]
    mismatches = [(n, want, got) for n, (want, got) in enumerate(zip(expected, ours), 1) if want != got]
    assert not mismatches, f"{len(mismatches)} frames differ (frame, tshark, ours): {mismatches[:5]}"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_l4_payload_is_clipped_to_ip_length(path: Path, frames_by_file) -> None:
    """Ethernet padding and trailers never leak into a payload; ip_len comes from the header."""
    for linktype, data in frames_by_file[path]:
        result = net.decode_frame(0.0, linktype, data)
        if isinstance(result, L4Packet):
            header = 20 if result.proto == 6 else 8
            assert len(result.payload) <= result.ip_len - header - (20 if len(result.src) == 4 else 40)


def test_fast_path_equals_generic_walk_on_every_ethernet_frame(frames_by_file) -> None:
    compared = 0
    for frames in frames_by_file.values():
        for linktype, data in frames:
            if linktype == 1:
                assert net.decode_frame(0.0, 1, data) == net._walk(0.0, data, K_ETHER, 0, len(data))
                compared += 1
    assert compared > 10_000
