"""QUIC conversation builder: client Initials carrying a ClientHello in CRYPTO frames that are
cut, shuffled and mixed with PING/PADDING the way Chrome's "chaos protection" does, the
server's Initial + Handshake flight, optional 0-RTT, then short-header 1-RTT packets of
opaque bytes both ways.

Initials are really protected (`detector.decode.quic_crypto.protect_initial`), so any
decoder that derives Initial keys (Wireshark, the sensor) can read the ClientHello.
Handshake, 0-RTT and 1-RTT packets carry random bytes: their keys are not public.

References: RFC 9000 §12.2 (coalesced packets), §14.1 (1200-byte client datagrams),
§17.2 (long header), §17.3 (short header), §19.1-19.6 (PADDING, PING, ACK, CRYPTO frames);
RFC 9001 §5 (Initial protection); RFC 9369 §3.2 (v2 long-header type numbers);
draft-ietf-quic-transport-29 (version 0xff00001d). Chromium quic_packet_creator.cc
(chaos protection: CRYPTO split into several frames, shuffled with PING and PADDING).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator

from detector.decode.quic_crypto import encode_varint as varint
from detector.decode.quic_crypto import protect_initial
from detector.synth import builders as b
from detector.synth.opaque import take
from detector.synth.path import Conversation, Packet, Path
from detector.synth.tcp import ACK_DELAY

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF
DRAFT_29 = 0xFF00001D
QUIC_VERSIONS = {"v1": VERSION_1, "v2": VERSION_2, "draft-29": DRAFT_29}

CHROME_DATAGRAM = 1250  # Chrome's client Initial datagram size (>= 1200 of RFC 9000 §14.1)
SERVER_DATAGRAM = 1252
AEAD_TAG = 16
# Long-header packet types (RFC 9000 §17.2; RFC 9369 §3.2 renumbers them for v2).
_TYPES_V1 = {"initial": 0, "0rtt": 1, "handshake": 2}
_TYPES_V2 = {"initial": 1, "0rtt": 2, "handshake": 3}


def long_type(version: int, kind: str) -> int:
    """The 2-bit long-header packet type of `kind` for `version`."""
    return (_TYPES_V2 if version == VERSION_2 else _TYPES_V1)[kind]


def crypto_frame(offset: int, data: bytes) -> bytes:
    """CRYPTO frame (RFC 9000 §19.6)."""
    return b"\x06" + varint(offset) + varint(len(data)) + data


def ack_frame(largest: int, delay: int = 0) -> bytes:
    """ACK frame acknowledging packets 0..largest (RFC 9000 §19.3)."""
    return b"\x02" + varint(largest) + varint(delay) + varint(0) + varint(largest)


def opaque_long_packet(version: int, kind: str, dcid: bytes, scid: bytes, size: int, rng: random.Random) -> bytes:
    """A Handshake or 0-RTT packet of exactly `size` bytes whose protected part is random."""
    head = bytes((0xC0 | (long_type(version, kind) << 4) | rng.randrange(16),)) + version.to_bytes(4, "big")
    head += bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid
    rest = size - len(head) - 2
    return head + varint(rest, 2) + take(rng, rest)[0]


def short_packet(dcid: bytes, size: int, rng: random.Random) -> tuple[bytes, int]:
    """A 1-RTT short-header packet of `size` bytes (fixed bit set, the rest opaque) and its word sum."""
    head = bytes((0x40 | rng.randrange(64),)) + dcid
    body, s = take(rng, size - len(head))
    return head + body, (b.word_sum(head) + (s << 8 if len(head) & 1 else s)) % 0xFFFF


def chaos_frames(stream: bytes, start: int, end: int, room: int, rng: random.Random) -> bytes:
    """Frames for one Initial: CRYPTO data stream[start:end] cut into 2-5 frames, shuffled
    together with 1-3 PINGs, and PADDING runs spread between them to fill exactly `room` bytes."""
    cuts = sorted(rng.sample(range(start + 1, end), min(rng.randint(1, 4), max(0, end - start - 1))))
    bounds = [start, *cuts, end]
    frames = [crypto_frame(a, stream[a:z]) for a, z in itertools.pairwise(bounds)]
    frames += [b"\x01"] * rng.randint(1, 3)
    rng.shuffle(frames)
    pad = room - sum(map(len, frames))
    if pad < 0:
        raise ValueError("CRYPTO data does not fit the Initial")
    # PADDING (type 0x00) runs before some frames; the remainder trails the last frame.
    out = bytearray()
    for f in frames:
        run = rng.randrange(pad // 3 + 1) if pad else 0
        out += bytes(run) + f
        pad -= run
    return bytes(out) + bytes(pad)


class QuicConversation(Conversation):
    """One QUIC connection on a Path (UDP), built by generator methods in order:
    `handshake(hello)`, `transfer(up, down)`..., `close()`. Counters as TcpConversation."""

    def __init__(self, path: Path, sport: int, dport: int = 443, *, version: int = VERSION_1, t0: float,
                 rtt: float, rng: random.Random, scid: bytes = b"", datagram: int = CHROME_DATAGRAM) -> None:
        super().__init__(path, t0=t0, rtt=rtt, rng=rng)
        self.sport = sport
        self.dport = dport
        self.version = version
        self.dcid = rng.randbytes(8)  # the client's first DCID: the key for every Initial
        self.scid = scid  # Chrome sends an empty source CID
        self.server_cid = rng.randbytes(8)
        self.datagram = datagram
        self.pn = [0, 0]

    def _push(self, ts: float, from_client: bool, payload: bytes, *, bulk: bool = False,
              psum: int | None = None) -> None:
        sport, dport = (self.sport, self.dport) if from_client else (self.dport, self.sport)
        frame = self.path.udp(from_client, sport, dport, payload, psum=psum)
        self._queue(ts, from_client, frame, 8 + len(payload), len(frame) - len(payload) if bulk else 0)

    def _initial(self, from_client: bool, frames_for_room: Callable[[int], bytes], size: int, *,
                 answered: bool = False) -> bytes:
        """A protected Initial of exactly `size` bytes; frames_for_room(room) gives its plaintext.
        answered: the server's Initial has arrived, so the client now addresses the server's CID
        (RFC 9000 §7.2) while the keys still derive from its first DCID."""
        me = 0 if from_client else 1
        pn = self.pn[me]
        self.pn[me] += 1
        if from_client:
            dcid, scid = (self.server_cid if answered else self.dcid), self.scid
        else:
            dcid, scid = self.scid, self.server_cid
        overhead = 1 + 4 + 1 + len(dcid) + 1 + len(scid) + 1 + 2 + 1 + AEAD_TAG  # pn < 256: 1 byte
        plain = frames_for_room(size - overhead)
        pkt = protect_initial(self.version, dcid, scid, pn, plain, is_client=from_client, pn_len=1,
                              key_dcid=self.dcid)
        assert len(pkt) == size, (len(pkt), size)
        return pkt

    def handshake(self, hello: bytes, *, zero_rtt: int = 0, initials: int | None = None) -> Iterator[Packet]:
        """Client Initials carrying `hello` (a ClientHello handshake message), split over
        `initials` packets (default: as many as needed, at least 1), each in its own
        datagram; `zero_rtt` bytes of 0-RTT coalesced after the last Initial. Then the
        server's Initial + Handshake flight and the client's Handshake reply."""
        rng = self.rng
        # CRYPTO bytes per Initial: the datagram less long header and tag (~35), up to 5 frame
        # headers of 5 bytes and 3 PINGs, and some PADDING to shuffle in.
        per_packet = self.datagram - 80
        n = initials or max(1, -(-len(hello) // per_packet))
        # Chrome fills the first Initials and leaves the tail to the last one.
        cuts = [0] + [min(len(hello), per_packet * (i + 1)) for i in range(n - 1)] + [len(hello)]
        t = self.t
        for i in range(n):
            tail = b""
            if zero_rtt and i == n - 1:
                tail = opaque_long_packet(self.version, "0rtt", self.dcid, self.scid, zero_rtt, rng)
            a, z = cuts[i], cuts[i + 1]
            size = max(self.datagram - len(tail), 200)
            pkt = self._initial(True, lambda room, a=a, z=z: chaos_frames(hello, a, z, room, rng), size)
            self._push(t, True, pkt + tail)
            t += 0.00002
        # Server: Initial (ACK + ServerHello) coalesced with a Handshake packet, then more Handshake.
        t += self.rtt
        group = b.X25519MLKEM768 if b.hello_offers_mlkem(hello) else b.X25519
        sh = b.server_hello(rng, group=group)
        frames = ack_frame(self.pn[0] - 1) + crypto_frame(0, sh)
        init = self._initial(False, lambda room: frames + bytes(room - len(frames)), len(frames) + 40)
        sizes = [SERVER_DATAGRAM, rng.randrange(400, SERVER_DATAGRAM)]
        if len(init) < SERVER_DATAGRAM - 300:  # room left: coalesce the first Handshake packet
            init += opaque_long_packet(self.version, "handshake", self.scid, self.server_cid,
                                       SERVER_DATAGRAM - len(init), rng)
        else:  # a post-quantum ServerHello fills its own datagram
            sizes.insert(0, SERVER_DATAGRAM)
        self._push(t, False, init)
        for size in sizes:
            t += 0.0001
            self._push(t, False, opaque_long_packet(self.version, "handshake", self.scid, self.server_cid, size, rng))
        # Client: Initial ACK (padded) + Handshake (ACK + Finished) in one datagram.
        t += 0.0005
        hs = opaque_long_packet(self.version, "handshake", self.server_cid, self.scid, 90, rng)
        ack = ack_frame(self.pn[1] - 1)
        init = self._initial(True, lambda room: ack + bytes(room - len(ack)), self.datagram - len(hs), answered=True)
        self._push(t, True, init + hs)
        self.t = t
        yield from self._drain(t)

    def transfer(self, from_client: bool, size: int, *, gap: float | None = None, mtu_payload: int = 1250,
                 ack_every: int = 2) -> Iterator[Packet]:
        """`size` UDP payload bytes of 1-RTT data in one direction, paced, the receiver
        sending a small ACK packet every `ack_every` packets, every 10th after the first 100
        (Chromium's ACK decimation); client ACKs appear at once at the sensor, server ACKs
        one RTT later."""
        rng = self.rng
        if gap is None:
            gap = (self.rtt + rng.uniform(0.0003, 0.004)) if not from_client else rng.uniform(0.0001, 0.001)
        t = self.t + gap
        dcid_to = self.server_cid if from_client else self.scid
        dcid_back = self.scid if from_client else self.server_cid
        pace = self.rtt / 40  # pacing interval: a window of 40 packets per RTT
        ack_lag = self.rtt if from_client else ACK_DELAY
        sent = count = 0
        while sent < size:
            n = min(mtu_payload, size - sent)
            n = max(n, 1 + len(dcid_to) + 1 + AEAD_TAG + 4)
            pkt, psum = short_packet(dcid_to, n, rng)
            self._push(t, from_client, pkt, bulk=True, psum=psum)
            sent += n
            count += 1
            if count % (ack_every if count <= 100 else 10) == 0 or sent >= size:
                pkt, psum = short_packet(dcid_back, rng.randrange(30, 48), rng)
                self._push(t + ack_lag, not from_client, pkt, psum=psum)
            self.t = t
            yield from self._drain(t)
            t += pace if sent < size else 0.0

    def close(self, *, gap: float = 0.0) -> Iterator[Packet]:
        """The client's CONNECTION_CLOSE (a small opaque 1-RTT packet); flush everything."""
        t = self.t + gap
        self._push(t, True, short_packet(self.server_cid, self.rng.randrange(30, 60), self.rng)[0])
        self.t = t
        yield from self.end()
