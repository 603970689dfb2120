"""The fast path's head selection: every frame is fed or counted in exactly one run, the
frames that can name a flow are fed, and batch boundaries do not change what is fed."""

from __future__ import annotations

import struct
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from detector.flows.heads import TCP_HEAD, HeadSelector

CLIENT, SERVER = bytes([10, 20, 1, 7]), bytes([104, 18, 0, 9])
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


def _frame(src: bytes, dst: bytes, sport: int, dport: int, *, proto: int = 6, flags: int = ACK, seq: int = 0,
           payload: bytes = b"", vlan: bool = False) -> bytes:  # fmt: skip
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, 5 << 4, flags, 65535, 0, 0) + payload
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, src, dst) + l4
    tag = b"\x81\x00\x00\x64" if vlan else b""
    return b"\x02" * 6 + b"\x04" * 6 + tag + b"\x08\x00" + ip


def _batch(frames: list[tuple[float, bytes]]) -> tuple[bytes, bytes]:
    """What libpcap's next_batch hands over: the frames back to back, and per frame
    (seconds, microseconds, offset, length)."""
    meta = array("I")
    off = 0
    for ts, data in frames:
        sec = int(ts)
        meta.extend((sec, round((ts - sec) * 1e6), off, len(data)))
        off += len(data)
    return b"".join(d for _, d in frames), meta.tobytes()


def _select(frames: list[tuple[float, bytes]], batch: int) -> tuple[list[int], list[tuple]]:
    """Fed frame indices and runs (first frame, packets, IP bytes, frame bytes) over the
    whole sequence, in batches of `batch` frames."""
    sel = HeadSelector(1, whole_ports=(53,), idle_timeout=120.0, inspect_bytes=32768, max_states=1 << 20)
    fed: list[int] = []
    runs: list[tuple] = []
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch]
        admitted, r = sel.select(*_batch(chunk))
        fed += [start + i for i in admitted]
        runs += [
            (start + a, p, ip, fb, f, last)
            for a, p, ip, fb, f, last in zip(r.at, r.packets, r.ip_bytes, r.frame_bytes, r.first, r.last)
        ]
    return fed, runs


def _hello(size: int) -> bytes:
    body = b"\x03\x03" + bytes(size - 2)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def _tls_flow(
    t0: float, cport: int, hello_segments: int, data_packets: int, vlan: bool = False
) -> list[tuple[float, bytes]]:
    """A TLS flow: handshake, a hello in `hello_segments` segments, then data both ways, FIN."""
    out = []
    isn = 1000

    def up(**kw):
        out.append((t0 + len(out) * 0.01, _frame(CLIENT, SERVER, cport, 443, vlan=vlan, **kw)))

    def down(**kw):
        out.append((t0 + len(out) * 0.01, _frame(SERVER, CLIENT, 443, cport, vlan=vlan, **kw)))

    up(flags=SYN, seq=isn)
    down(flags=SYN | ACK, seq=5000)
    up(flags=ACK, seq=isn + 1)
    hello = _hello(1800)
    cut = -(-len(hello) // hello_segments)
    pos = isn + 1
    for i in range(0, len(hello), cut):
        up(flags=ACK | PSH, seq=pos, payload=hello[i : i + cut])
        pos += len(hello[i : i + cut])
    for i in range(data_packets):
        down(flags=ACK, seq=5001 + i * 1000, payload=bytes(1000))
        up(flags=ACK, seq=pos)
        up(flags=ACK | PSH, seq=pos, payload=b"\x17\x03\x03" + bytes(200))
        pos += 203
    up(flags=FIN | ACK, seq=pos)
    down(flags=FIN | ACK, seq=9999)
    return out


flows = st.lists(st.tuples(st.integers(1, 4), st.integers(0, 30), st.booleans()), min_size=1, max_size=6)


def _mix(spec: list[tuple[int, int, bool]]) -> list[tuple[float, bytes]]:
    frames = []
    for n, (segments, data, vlan) in enumerate(spec):
        frames += _tls_flow(100.0 + n * 0.003, 40000 + n, segments, data, vlan)
    frames.sort(key=lambda f: f[0])
    return frames


@settings(max_examples=60, deadline=None)
@given(flows, st.integers(1, 200))
def test_every_frame_is_fed_or_counted_in_exactly_one_run(spec, batch) -> None:
    frames = _mix(spec)
    fed, runs = _select(frames, batch)
    assert fed == sorted(set(fed))
    assert len(fed) + sum(r[1] for r in runs) == len(frames)
    ip_total = sum(len(d) - 14 - (4 if d[12:14] == b"\x81\x00" else 0) for _, d in frames)
    fed_ip = sum(len(frames[i][1]) - 14 - (4 if frames[i][1][12:14] == b"\x81\x00" else 0) for i in fed)
    assert fed_ip + sum(r[2] for r in runs) == ip_total
    assert sum(len(frames[i][1]) for i in fed) + sum(r[3] for r in runs) == sum(len(d) for _, d in frames)
    for at, _, _, _, first, last in runs:
        assert at not in fed and first <= last


@settings(max_examples=60, deadline=None)
@given(flows, st.integers(1, 200))
def test_batch_boundaries_do_not_change_what_is_fed(spec, batch) -> None:
    frames = _mix(spec)
    assert _select(frames, batch)[0] == _select(frames, len(frames))[0]


@settings(max_examples=60, deadline=None)
@given(flows, st.integers(1, 200))
def test_flow_ends_and_whole_client_hellos_are_fed_and_data_is_not(spec, batch) -> None:
    frames = _mix(spec)
    fed = set(_select(frames, batch)[0])
    server_data_seen = set()
    for i, (_, d) in enumerate(frames):
        tcp = d[14 + (4 if d[12:14] == b"\x81\x00" else 0) + 20 :]
        flags, payload, from_server = tcp[13], tcp[20:], tcp[0:2] == (443).to_bytes(2, "big")
        if flags & (SYN | FIN | RST):
            assert i in fed, "a flow's start or end"
        elif not payload:
            continue
        elif from_server:
            # Only the server's first segment: the pipeline learns what the stream is not.
            assert (i in fed) == (tcp[2:4] not in server_data_seen)
            server_data_seen.add(tcp[2:4])
        elif payload[0] == 0x17:
            assert i not in fed, "client data after the hello"
        else:
            assert i in fed, "a piece of the ClientHello"


def test_a_reused_five_tuple_starts_over_with_its_head() -> None:
    first = _tls_flow(100.0, 40000, 2, 5)
    second = _tls_flow(400.0, 40000, 2, 5)  # the same ports, after the idle timeout
    frames = first + second
    fed = set(_select(frames, 7)[0])
    hello_pieces = [
        i for i, (_, d) in enumerate(frames) if d[34:36] == (40000).to_bytes(2, "big") and d[54:] and d[54] != 0x17
    ]
    assert len(hello_pieces) == 4 and fed.issuperset(hello_pieces)


def test_a_flow_seen_mid_way_is_opened_by_its_first_packet() -> None:
    frames = _tls_flow(100.0, 40000, 1, 20)[10:]
    fed = _select(frames, 64)[0]
    firsts = {frames[i][1][26:38] for i in fed[: TCP_HEAD * 2]}
    assert len(firsts) == 2, "each direction's first packet"


def test_what_is_not_plain_ipv4_tcp_or_udp_is_always_fed_whole() -> None:
    """Live batches hold everything on the link: DNS (UDP and TCP), tunnels, fragments,
    IPv4 with options, IPv6 and ARP reach the pipeline one by one, however many there are."""
    plain = _frame(CLIENT, SERVER, 40000, 443, payload=b"\x17" + bytes(99))
    frag = bytearray(plain)
    frag[20] = 0x20  # more fragments
    options = bytearray(plain[:14] + b"\x46" + plain[15:34] + bytes(4) + plain[34:])
    options[17] += 4
    ipv6 = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + bytes(60)
    arp = b"\xff" * 6 + b"\x04" * 6 + b"\x08\x06" + bytes(28)
    kinds = [
        _frame(CLIENT, SERVER, 40001, 53, proto=17, payload=bytes(30)),
        _frame(CLIENT, SERVER, 40002, 53, payload=bytes(30)),
        _frame(CLIENT, SERVER, 40003, 4789, proto=17, payload=bytes(60)),
        bytes(frag),
        bytes(options),
        ipv6,
        arp,
    ]
    frames = [(100.0 + i * 0.001, kinds[i % len(kinds)]) for i in range(10 * len(kinds))]
    frames += [
        (200.0 + i * 0.001, _frame(CLIENT, SERVER, 40000, 443, seq=i * 100, payload=b"\x17" + bytes(99)))
        for i in range(20)
    ]
    sel = HeadSelector(1, whole_ports=(53, 4789), idle_timeout=120.0, inspect_bytes=32768, max_states=1 << 20)
    fed, runs = sel.select(*_batch(frames))
    assert fed == list(range(10 * len(kinds))) + [10 * len(kinds)]
    assert sum(runs.packets) == 19


def test_a_flood_of_new_flows_costs_admissions_not_memory() -> None:
    """A scan: thousands of one-packet flows. The state stays within its bound (a flow whose
    state is forgotten only starts over with its head)."""
    sel = HeadSelector(1, whole_ports=(53,), idle_timeout=120.0, inspect_bytes=32768, max_states=1000)
    for burst in range(5):
        frames = [(100.0 + burst + i * 1e-5, _frame(CLIENT, SERVER, 1024 + i, 443, flags=SYN)) for i in range(800)]
        sel.select(*_batch(frames))
        assert len(sel) <= 1000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=40), st.sampled_from([1, 113, 276, 0, 108, 101]))
def test_hostile_bytes_never_raise_and_every_frame_is_accounted_for(frames, linktype) -> None:
    """Frames of any bytes (cut short, garbage headers) on any supported link type: the
    selection neither raises nor loses a frame."""
    sel = HeadSelector(linktype, whole_ports=(53,), idle_timeout=120.0, inspect_bytes=32768, max_states=64)
    fed, runs = sel.select(*_batch([(100.0 + i * 0.01, f) for i, f in enumerate(frames)]))
    assert len(fed) + sum(runs.packets) == len(frames)
    assert sum(len(frames[i]) for i in fed) + sum(runs.frame_bytes) == sum(map(len, frames))
