"""The wire between one client and one server: MACs, IP family, TTLs, IP IDs, VLAN tag, tunnel.

A `Path` turns transport bytes into complete link-layer frames for either direction, so
the TCP and QUIC conversation builders never deal with link or IP details.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from detector.synth import builders as b

# One packet of the generator's output: (timestamp, frame, cut). cut > 0 marks a packet
# whose payload is opaque bulk data: a writer with a bulk snap length may keep only
# frame[:cut + snap] and record the full length as the original length.
Packet = tuple[float, bytes, int]

_TCPH = struct.Struct("!HHIIBBHHH")
_IP4H = struct.Struct("!BBHHHBBH4s4s")
_IP6H = struct.Struct("!IHBB16s16s")
GATEWAY_MAC = b.mac_bytes("00:1b:21:0a:00:01")  # the office router, next hop for every outside address


def client_mac(addr: bytes) -> bytes:
    """A stable locally-administered MAC derived from the client's address."""
    return b"\x02\x00" + addr[-4:]


@dataclass(slots=True)
class Path:
    """Both ends of a conversation as seen on the mirror port (the sensor sits next to the client).

    wrap: a tunnel encapsulator (see tunnels.py) applied to every finished frame.
    v6_ext: IPv6 extension headers (type, options) added to packets in both directions.
    """

    client: bytes
    server: bytes
    client_mac: bytes = b""
    server_mac: bytes = GATEWAY_MAC
    client_ttl: int = 128
    server_ttl: int = 53
    vlan: int = 0
    wrap: Callable[[bytes], bytes] | None = None
    v6_ext: Sequence[tuple[int, bytes]] = ()
    ip_id: list[int] = field(default_factory=lambda: [0x1000, 0x4000])
    ip_hdr_len: int = 20  # computed: IP header bytes (with extension headers) before the transport header
    _eth: tuple[bytes, bytes] = (b"", b"")
    _sums: tuple[int, int] = (0, 0)  # per direction: word sum of the addresses (pseudo-header)

    def __post_init__(self) -> None:
        if not self.client_mac:
            self.client_mac = client_mac(self.client)
        etype = b.ETH_IPV6 if len(self.client) == 16 else b.ETH_IPV4
        tag = b.vlan_tag(self.vlan, etype) if self.vlan else etype.to_bytes(2, "big")
        self.ip_hdr_len = len(b.ipv6(self.client, self.server, 59, b"", ext=self.v6_ext)) if self.ipv6 else 20
        self._eth = (self.server_mac + self.client_mac + tag, self.client_mac + self.server_mac + tag)
        addr_sum = int.from_bytes(self.client + self.server, "big") % 0xFFFF
        self._sums = (addr_sum, addr_sum)

    @property
    def ipv6(self) -> bool:
        """Whether this path carries IPv6."""
        return len(self.client) == 16

    def ends(self, from_client: bool) -> tuple[bytes, bytes]:
        """(source, destination) addresses for a packet in the given direction."""
        return (self.client, self.server) if from_client else (self.server, self.client)

    def ip_packet(self, from_client: bool, proto: int, l4: bytes) -> bytes:
        """The IP packet (no link header) carrying l4 in the given direction."""
        src, dst = self.ends(from_client)
        ttl = self.client_ttl if from_client else self.server_ttl
        if len(src) == 16:
            return b.ipv6(src, dst, proto, l4, hop_limit=ttl, ext=self.v6_ext)
        k = 0 if from_client else 1
        self.ip_id[k] = (self.ip_id[k] + 1) & 0xFFFF
        return b.ipv4(src, dst, proto, l4, ident=self.ip_id[k], ttl=ttl)

    def frame(self, from_client: bool, proto: int, l4: bytes) -> bytes:
        """A complete frame carrying l4 (TCP segment or UDP datagram) in the given direction."""
        out = self._eth[0 if from_client else 1] + self.ip_packet(from_client, proto, l4)
        return self.wrap(out) if self.wrap is not None else out

    def frame_ip(self, from_client: bool, ip: bytes) -> bytes:
        """A complete frame around an already built IP packet (e.g. one IPv4 fragment)."""
        out = self._eth[0 if from_client else 1] + ip
        return self.wrap(out) if self.wrap is not None else out

    def udp(self, from_client: bool, sport: int, dport: int, payload: bytes, *, psum: int | None = None) -> bytes:
        """A frame carrying one UDP datagram (psum: the payload's word sum, if known)."""
        src, dst = self.ends(from_client)
        return self.frame(from_client, b.UDP_PROTO, b.udp(src, dst, sport, dport, payload, psum=psum))

    # The per-packet fast path. Same bytes as frame(tcp(...)) (tests/synth checks it), with
    # the constant parts of both checksums summed once per path and one join per frame;
    # `0xFFFF - s if s else 0` is builders.fold inlined.

    def _ip_header(self, d: int, proto: int, l4_len: int) -> bytes:
        src, dst = (self.client, self.server) if d == 0 else (self.server, self.client)
        ttl = self.server_ttl if d else self.client_ttl
        if len(src) == 16:
            return _IP6H.pack(0x60000000, l4_len, proto, ttl, src, dst)
        ident = self.ip_id[d] = (self.ip_id[d] + 1) & 0xFFFF
        total = 20 + l4_len
        s = (0x4500 + 0x4000 + (ttl << 8) + proto + self._sums[d] + total + ident) % 0xFFFF
        return _IP4H.pack(0x45, 0, total, ident, 0x4000, ttl, proto, 0xFFFF - s if s else 0, src, dst)

    def tcp_frame(self, from_client: bool, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
                  payload: bytes, psum: int | None = None, options: bytes = b"") -> bytes:
        """A complete frame carrying one TCP segment (seq/ack already reduced to 32 bits)."""
        if self.v6_ext:
            src, dst = self.ends(from_client)
            return self.frame(from_client, b.TCP_PROTO, b.tcp(src, dst, sport, dport, seq, ack, flags, payload,
                                                               window=window, options=options, psum=psum))
        d = 0 if from_client else 1
        hlen = 20 + len(options)
        l4_len = hlen + len(payload)
        total = (self._sums[d] + b.TCP_PROTO + l4_len + sport + dport + (seq >> 16) + (seq & 0xFFFF)
                 + (ack >> 16) + (ack & 0xFFFF) + ((hlen << 10) | flags) + window)
        if options:
            total += int.from_bytes(options, "big")
        total += b.word_sum(payload) if psum is None else psum
        s = total % 0xFFFF
        tcph = _TCPH.pack(sport, dport, seq, ack, hlen << 2, flags, window, 0xFFFF - s if s else 0, 0)
        out = b"".join((self._eth[d], self._ip_header(d, b.TCP_PROTO, l4_len), tcph, options, payload))
        return self.wrap(out) if self.wrap is not None else out

    def link_overhead(self) -> int:
        """Bytes in front of the IP header in this path's frames, tunnel headers excluded."""
        return len(self._eth[0])


class Conversation:
    """What the TCP and QUIC builders share: counters, and a small heap of packets already
    made but timestamped ahead of `t` (ACKs that arrive later), released in time order.

    Invariant: nothing is queued with a timestamp before `t`, and `t` never goes back, so
    everything at or before `t` can be released.
    """

    def __init__(self, path: Path, *, t0: float, rtt: float, rng: random.Random) -> None:
        self.path = path
        self.t = t0
        self.rtt = rtt
        self.rng = rng
        self.bytes_up = 0  # IP bytes client -> server
        self.bytes_down = 0  # IP bytes server -> client
        self.packets = 0
        self._q: list[tuple[float, int, bytes, int]] = []
        self._n = 0

    def _queue(self, ts: float, from_client: bool, frame: bytes, l4_len: int, cut: int) -> None:
        ip_len = self.path.ip_hdr_len + l4_len
        if from_client:
            self.bytes_up += ip_len
        else:
            self.bytes_down += ip_len
        self.packets += 1
        heapq.heappush(self._q, (ts, self._n, frame, cut))
        self._n += 1

    def _drain(self, upto: float) -> Iterator[Packet]:
        q = self._q
        while q and q[0][0] <= upto:
            ts, _, frame, cut = heapq.heappop(q)
            yield ts, frame, cut

    def idle(self, seconds: float) -> None:
        """Let time pass with nothing on the wire (user think time, keep-alive)."""
        self.t += seconds

    def end(self) -> Iterator[Packet]:
        """Flush every pending packet (the conversation stops here, closed or not)."""
        while self._q:
            ts, _, frame, cut = heapq.heappop(self._q)
            self.t = max(self.t, ts)
            yield ts, frame, cut
