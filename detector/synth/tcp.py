"""TCP conversation builder: handshake, data both ways with MSS segmentation and ACK clocking,
hand-made segment plans (out of order, retransmitted, overlapping), FIN or RST close.

Packets come out of generators in timestamp order and memory stays constant however large
a transfer is: opaque payload is read on demand and pending ACKs wait in a small heap.

References: RFC 9293 §3.5 (handshake), §3.6 (closing), RFC 5681 §3.1 (slow start, initial
window RFC 6928), RFC 1122 §4.2.3.2 (delayed ACK: at least every second full segment).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from heapq import heappop, heappush

from detector.synth import builders as b
from detector.synth import opaque
from detector.synth.path import Conversation, Packet, Path

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

TLS_MAX_RECORD = 16384 + 17  # RFC 8446 §5.2: plaintext limit + content type + AES-GCM tag
ACK_DELAY = 0.00008  # client-side stack answering a segment, seconds (the sensor sits at the client)


class OpaqueTls:
    """`total` bytes of TLS application-data records (header + opaque body), read on demand
    together with their checksum word sum."""

    __slots__ = ("_at", "_body", "_hdr", "left", "record", "rng")

    def __init__(self, total: int, rng: random.Random, *, record: int = TLS_MAX_RECORD) -> None:
        self.left = total
        self.rng = rng
        self.record = record
        self._hdr = b""  # the unread part of the current record header
        self._at = 0  # pool offset of the current record body's next byte
        self._body = 0  # unread bytes of the current record body

    def read(self, n: int) -> tuple[bytes, int]:
        """The next n bytes of the stream (fewer at its end) and their word sum."""
        if not self._hdr and self._body >= n and self.left >= n:  # inside a record body: one slice
            at = self._at
            self._at = at + n
            self._body -= n
            self.left -= n
            return opaque.POOL[at:at + n], opaque.pool_sum(at, n)
        parts = []
        pos = total = 0
        while pos < n and self.left > 0:
            if self._hdr:
                part = self._hdr[:n - pos]
                self._hdr = self._hdr[len(part):]
                s = b.word_sum(part)
            elif self._body:
                k = min(n - pos, self._body)
                part = opaque.POOL[self._at:self._at + k]
                s = opaque.pool_sum(self._at, k)
                self._at += k
                self._body -= k
            else:  # next record; fewer than a header's worth left: opaque tail bytes only
                body = min(self.record, self.left - 5)
                self._body = body if body > 0 else self.left
                self._hdr = b"\x17\x03\x03" + body.to_bytes(2, "big") if body > 0 else b""
                self._at = self.rng.randrange(opaque.POOL_SIZE - self._body)
                continue
            total += s << 8 if pos & 1 else s  # a piece at an odd offset sums byte-swapped
            pos += len(part)
            self.left -= len(part)
            parts.append(part)
        return b"".join(parts), total % 0xFFFF


class _Bytes:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, n: int) -> tuple[bytes, None]:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out, None


class TcpConversation(Conversation):
    """One TCP connection on a Path, built step by step by generator methods.

    Each method yields Packets in timestamp order; call them in the order the
    conversation happens (`handshake`, `send`..., `close` or `end`). `t` is the
    time of the last packet a method put on the wire; counters (`bytes_up`,
    `bytes_down`: IP bytes; `packets`) grow as packets are made.
    """

    def __init__(self, path: Path, sport: int, dport: int, *, t0: float, rtt: float, rng: random.Random,
                 mss: int = 1460, bandwidth: float = 200e6, init_cwnd: int = 10, max_cwnd: int = 96,
                 ack_every: int = 2, window: int = 1026) -> None:
        super().__init__(path, t0=t0, rtt=rtt, rng=rng)
        self.sport = sport
        self.dport = dport
        self.mss = mss - path.ip_hdr_len + 20 if path.ipv6 else mss  # the same MTU carries less over IPv6
        self.seg_time = (mss + 58) * 8 / bandwidth  # serialisation time of one full frame
        self.max_cwnd = max_cwnd
        self.ack_every = ack_every
        self.window = window
        self.cwnd = [init_cwnd, init_cwnd]
        self.seq = [rng.getrandbits(32), rng.getrandbits(32)]  # next sequence number: [client, server]
        self.last_from_client: bool | None = None

    # -- packet making -------------------------------------------------------

    def _push(self, ts: float, from_client: bool, flags: int, payload: bytes = b"", *,
              seq: int | None = None, options: bytes = b"", bulk: bool = False, psum: int | None = None) -> None:
        # Conversation._queue inlined: this runs once per packet.
        if from_client:
            frame = self.path.tcp_frame(True, self.sport, self.dport, (self.seq[0] if seq is None else seq) & 0xFFFFFFFF,
                                        self.seq[1] & 0xFFFFFFFF if flags & ACK else 0, flags, self.window, payload,
                                        psum if payload else 0, options)
            self.bytes_up += self.path.ip_hdr_len + 20 + len(options) + len(payload)
        else:
            frame = self.path.tcp_frame(False, self.dport, self.sport, (self.seq[1] if seq is None else seq) & 0xFFFFFFFF,
                                        self.seq[0] & 0xFFFFFFFF if flags & ACK else 0, flags, 501, payload,
                                        psum if payload else 0, options)
            self.bytes_down += self.path.ip_hdr_len + 20 + len(options) + len(payload)
        self.packets += 1
        heappush(self._q, (ts, self._n, frame, len(frame) - len(payload) if bulk else 0))
        self._n += 1

    def _start(self, from_client: bool, gap: float | None) -> float:
        """When data in this direction starts: after a think/processing gap, and a server's
        answer only after the request crossed the network (the sensor is at the client)."""
        if gap is None:
            turn = self.last_from_client is not None and self.last_from_client != from_client
            gap = (self.rtt + self.rng.uniform(0.0003, 0.004)) if turn and not from_client else (
                self.rng.uniform(0.0001, 0.001) if turn else 0.0)
        self.last_from_client = from_client
        return self.t + gap

    # -- conversation steps ---------------------------------------------------

    def handshake(self) -> Iterator[Packet]:
        """SYN, SYN-ACK one RTT later, ACK."""
        t = self.t
        self._push(t, True, SYN, options=b.SYN_OPTIONS)
        self.seq[0] += 1
        t += self.rtt
        self._push(t, False, SYN | ACK, options=b.SYNACK_OPTIONS)
        self.seq[1] += 1
        t += ACK_DELAY
        self._push(t, True, ACK)
        self.t = t
        self.last_from_client = True
        yield from self._drain(t)

    def send(self, from_client: bool, data: bytes | int, *, gap: float | None = None,
             chunks: Sequence[tuple[int, int]] | None = None, chunk_gap: float | None = None) -> Iterator[Packet]:
        """Send one message. data: bytes, or a length of opaque TLS application data.

        gap: seconds before the first segment (default: a server answers one RTT plus
        processing after the client's last packet). chunks: an explicit plan of
        (offset, length) segments sent in that order -- out of order, repeated
        (retransmission) or overlapping -- instead of MSS segmentation; one
        cumulative ACK follows. The sequence space advances by len(data).
        """
        t = self._start(from_client, gap)
        if chunks is not None:
            yield from self._send_plan(from_client, bytes(data) if not isinstance(data, int) else
                                       OpaqueTls(data, self.rng).read(data)[0], chunks, t, chunk_gap)
            return
        total = data if isinstance(data, int) else len(data)
        src = OpaqueTls(total, self.rng) if isinstance(data, int) else _Bytes(data)
        bulk = isinstance(data, int)
        me = 0 if from_client else 1
        ack_lag = self.rtt if from_client else ACK_DELAY
        sent = unacked = 0
        last = t
        q = self._q
        while sent < total:
            round_start = t
            for _ in range(self.cwnd[me]):
                payload, psum = src.read(self.mss)
                sent += len(payload)
                self._push(t, from_client, ACK | (PSH if sent >= total else 0), payload, bulk=bulk, psum=psum)
                self.seq[me] += len(payload)
                unacked += 1
                if unacked >= self.ack_every or sent >= total:
                    self._push(t + ack_lag, not from_client, ACK)
                    unacked = 0
                last = t
                self.t = t
                while q and q[0][0] <= t:  # Conversation._drain inlined: this runs once per segment
                    ts, _, frame, cut = heappop(q)
                    yield ts, frame, cut
                if sent >= total:
                    break
                t += self.seg_time
            self.cwnd[me] = min(self.cwnd[me] * 2, self.max_cwnd)
            t = max(t, round_start + self.rtt)  # the next window opens when ACKs come back
        self.t = last

    def _send_plan(self, from_client: bool, data: bytes, chunks: Sequence[tuple[int, int]], t: float,
                   chunk_gap: float | None) -> Iterator[Packet]:
        me = 0 if from_client else 1
        base = self.seq[me]
        step = chunk_gap if chunk_gap is not None else self.seg_time
        for i, (off, n) in enumerate(chunks):
            end = off + n >= len(data)
            self._push(t, from_client, ACK | (PSH if end else 0), data[off:off + n], seq=(base + off) & 0xFFFFFFFF)
            self.t = t
            yield from self._drain(t)
            if i + 1 < len(chunks):
                t += step
        self.seq[me] = (base + len(data)) & 0xFFFFFFFF
        self._push(t + (self.rtt if from_client else ACK_DELAY), not from_client, ACK)

    def close(self, *, from_client: bool = True, rst: bool = False, gap: float = 0.0) -> Iterator[Packet]:
        """FIN exchange (FIN, FIN one RTT later, last ACK) or a single RST; then flush everything."""
        t = self.t + gap
        me = 0 if from_client else 1
        if rst:
            self._push(t, from_client, RST | ACK)
        else:
            self._push(t, from_client, FIN | ACK)
            self.seq[me] += 1
            far = self.rtt if from_client else ACK_DELAY
            self._push(t + far, not from_client, FIN | ACK)
            self.seq[1 - me] += 1
            self._push(t + far + (ACK_DELAY if from_client else self.rtt), from_client, ACK)
        self.t = t
        yield from self.end()
