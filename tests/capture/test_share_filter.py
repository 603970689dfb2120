"""The offline share filter (capture.libpcap) run in libpcap's own BPF interpreter on frames
the project's builders write, against its Python twins: pipeline.client_share (which share
holds a packet's client) and decode.net.outer_fragment (which frames reach every share)."""

from __future__ import annotations

import functools
import struct

import pcapy
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.capture.libpcap import _share_filter
from detector.decode.net import decode_frame, outer_fragment
from detector.model import L4Packet
from detector.pipeline import client_share
from detector.synth import builders as b
from detector.synth.path import Path


@functools.cache
def _program(part: tuple[int, int]) -> pcapy.BPFProgram:
    return pcapy.compile(pcapy.DLT_EN10MB, 65535, _share_filter(1, part), 1, 0)


def _shares(frame: bytes, n: int) -> list[int]:
    return [k for k in range(n) if _program((k, n)).filter(frame)]


def _path(v6: bool, client: int, server: int, vlan: int) -> Path:
    ends = (f"2001:db8:1::{client:x}", f"2001:db8:2::{server:x}") if v6 else (f"10.20.1.{client}", f"104.18.0.{server}")
    return Path(b.ip_bytes(ends[0]), b.ip_bytes(ends[1]), vlan=vlan)


_PORT = st.integers(1, 65535)
_ENDS = {
    "v6": st.booleans(),
    "client": st.integers(1, 254),
    "server": st.integers(1, 254),
    "vlan": st.sampled_from([0, 120]),
    "n": st.sampled_from([2, 4]),
}


@settings(max_examples=300, deadline=None)
@given(**_ENDS, tcp=st.booleans(), from_client=st.booleans(), ports=st.tuples(_PORT, _PORT))
def test_a_tcp_or_udp_packet_reaches_exactly_the_share_that_holds_its_client(
    v6: bool, client: int, server: int, vlan: int, n: int, tcp: bool, from_client: bool, ports: tuple[int, int]
) -> None:
    path = _path(v6, client, server, vlan)
    sport, dport = ports
    if tcp:
        frame = path.tcp_frame(from_client, sport, dport, 1, 0, 0x18, 502, b"x" * 20)
    else:
        frame = path.udp(from_client, sport, dport, b"x" * 20)
    pkt = decode_frame(0.0, 1, frame)
    assert type(pkt) is L4Packet
    assert _shares(frame, n) == [client_share(pkt, n)]
    assert not outer_fragment(1, frame)


def test_both_directions_of_a_flow_and_a_clients_lookups_share_one_share() -> None:
    for client in range(1, 40):
        path = _path(False, client, 77, 0)
        lookup = Path(path.client, b.ip_bytes("10.10.0.53"))
        frames = [
            path.tcp_frame(True, 50000 + client, 443, 1, 0, 0x02, 64240, b""),
            path.tcp_frame(False, 443, 50000 + client, 7, 2, 0x12, 64240, b""),
            lookup.udp(True, 40000, 53, b.dns_query(client, "chatgpt.com", 1)),
            lookup.udp(False, 53, 40000, b.dns_response(client, "chatgpt.com", 1, [("chatgpt.com", 1, 60, "1.2.3.4")])),
        ]
        assert len({tuple(_shares(f, 4)) for f in frames}) == 1, client


def _ipv6_fragment(path: Path, offset: int, more: bool, payload: bytes) -> bytes:
    src, dst = path.ends(False)
    header = struct.pack("!BBHI", b.UDP_PROTO, 0, offset | more, 7)
    return path.frame_ip(False, b.ipv6(src, dst, 44, header + payload))


@settings(max_examples=100, deadline=None)
@given(**_ENDS)
def test_fragments_reach_every_share_and_an_atomic_ipv6_fragment_only_one(
    v6: bool, client: int, server: int, vlan: int, n: int
) -> None:
    path = _path(v6, client, server, vlan)
    if v6:
        pieces = [_ipv6_fragment(path, 0, True, bytes(64)), _ipv6_fragment(path, 64, False, bytes(64))]
    else:
        src, dst = path.ends(False)
        payload = b.udp(src, dst, 53, 40000, bytes(3000))
        pieces = [path.frame_ip(False, p) for p in b.ipv4_fragments(src, dst, b.UDP_PROTO, payload, mtu=1500, ident=9)]
    for frame in pieces:
        assert outer_fragment(1, frame)
        assert _shares(frame, n) == list(range(n))
    if v6:
        atomic = _ipv6_fragment(path, 0, False, b.udp(*path.ends(False), 53, 40000, bytes(20)))
        assert not outer_fragment(1, atomic)
        assert len(_shares(atomic, n)) == 1


@settings(max_examples=400, deadline=None)
@given(
    tag=st.sampled_from([b"", b"\x81\x00\x00\x78", b"\x88\xa8\x00\x78"]),
    etype=st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x08\x06"]),
    version=st.sampled_from([0x45, 0x46, 0x60, 0x00]),
    rest=st.binary(min_size=47, max_size=80),
    flags=st.sampled_from([b"\x00\x00", b"\x20\x00", b"\x00\x08", b"\x40\x00"]),
)
def test_any_frame_reaches_every_share_exactly_when_python_calls_it_a_fragment(
    tag: bytes, etype: bytes, version: int, rest: bytes, flags: bytes
) -> None:
    # IPv4's flags and offset at byte 6 of the header; an IPv6 fragment header's at byte 42.
    # The headers are whole: BPF rejects a packet outright on a load past its end.
    ip = bytes([version]) + rest[:5] + flags + rest[7:]
    if version == 0x60:
        ip = ip[:6] + b"\x2c" + ip[7:42] + flags + ip[44:]
    frame = bytes(12) + tag + etype + ip
    assert outer_fragment(1, frame) == (len(_shares(frame, 2)) == 2)
