"""Application sessions on top of the conversation builders: a TLS 1.3 session over TCP, an
HTTP/3-shaped QUIC session, and one DNS exchange over UDP. Shared by the office scenario and
the golden traces.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from detector.synth import builders as b
from detector.synth.path import Packet, Path
from detector.synth.quic import QuicConversation
from detector.synth.tcp import TcpConversation

# One request/response exchange inside a session: (bytes up, bytes down, response streamed
# in small pieces like a chatbot's answer, idle seconds before the request).
Turn = tuple[int, int, bool, float]


def tls_session(conv: TcpConversation, hello: bytes, rng: random.Random, turns: Sequence[Turn], *,
                hello_chunks: Sequence[tuple[int, int]] | None = None, idle: float = 1.0,
                rst: bool = False, close: bool = True) -> Iterator[Packet]:
    """TLS 1.3 on an established TCP connection: the ClientHello record (MSS-segmented, or
    sent by an explicit segment plan), ServerHello + ChangeCipherSpec, the encrypted
    certificate flight, the client's Finished, then the turns; `idle` seconds later FIN or RST."""
    yield from conv.send(True, b.client_hello_record(hello), chunks=hello_chunks)
    group = b.X25519MLKEM768 if b.hello_offers_mlkem(hello) else b.X25519
    sh = b.server_hello(rng, group=group, session_id=b.hello_session_id(hello))
    yield from conv.send(False, b.tls_record(0x16, sh) + b.tls_record(0x14, b"\x01"))
    yield from conv.send(False, rng.randrange(2500, 6000), gap=0.0)  # encrypted certificate flight
    yield from conv.send(True, b.tls_record(0x14, b"\x01") + b.tls_record(0x17, rng.randbytes(53)))
    for up, down, streamed, think in turns:
        conv.idle(think)
        yield from conv.send(True, up, gap=None if think else rng.uniform(0.001, 0.05))
        if streamed:
            left = down
            gap = None
            while left > 0:
                chunk = min(left, rng.randrange(200, 1400))
                left -= chunk
                yield from conv.send(False, chunk, gap=gap)
                gap = rng.uniform(0.015, 0.07)
        else:
            yield from conv.send(False, down)
    if close:
        conv.idle(idle)
        yield from conv.close(rst=rst)
    else:
        yield from conv.end()


def quic_session(conv: QuicConversation, hello: bytes, turns: Sequence[Turn], *, zero_rtt: int = 0,
                 idle: float = 1.0) -> Iterator[Packet]:
    """QUIC handshake carrying `hello`, the turns as 1-RTT data, then the client's close."""
    yield from conv.handshake(hello, zero_rtt=zero_rtt)
    for up, down, _streamed, think in turns:
        conv.idle(think)
        yield from conv.transfer(True, up)
        yield from conv.transfer(False, down)
    conv.idle(idle)
    yield from conv.close()


def dns_exchange(path: Path, rng: random.Random, t: float, name: str, qtype: int,
                 answers: Sequence[tuple[str, int, int, str | bytes]], *, delay: float = 0.002,
                 sport: int | None = None) -> tuple[list[Packet], int, int]:
    """One query from the client side of `path` to port 53 and the answer `delay` later.
    Returns the two packets and the query's and response's UDP payload sizes."""
    sport = 49152 + rng.randrange(16384) if sport is None else sport
    txid = rng.randrange(65536)
    q = b.dns_query(txid, name, qtype)
    r = b.dns_response(txid, name, qtype, answers)
    return [(t, path.udp(True, sport, 53, q), 0), (t + delay, path.udp(False, 53, sport, r), 0)], len(q), len(r)
