"""Bounded reassembly of the first bytes of a TCP direction, so a split handshake decodes.

Only the head of a stream matters to the sensor (ClientHello, HTTP request head,
DNS-over-TCP messages), so a direction buffers at most `limit` bytes and is dropped
once its owner has what it needs or the bound is hit.

References: RFC 9293 §3.4 (sequence numbers, modulo 2**32 arithmetic).
"""

from __future__ import annotations

_MOD = 1 << 32
_HALF = 1 << 31

# Out-of-order segments kept ahead of the contiguous prefix. A ClientHello of ~11 kB
# (the largest in the public test traces) arrives in at most ~8 MSS-sized segments, so a
# few dozen is ample and still caps memory for hostile streams of tiny segments.
MAX_PENDING_SEGMENTS = 64


class StreamHead:
    """The contiguous head of one TCP direction, from its initial sequence number on.

    `base` is the sequence number of the first byte; when no SYN was seen it is the
    lowest sequence number seen so far, and an earlier segment arriving late moves it back.
    """

    __slots__ = ("base", "data", "pending", "limit", "overflow", "anchored")

    def __init__(self, limit: int, isn: int | None = None) -> None:
        self.limit = limit
        self.base = isn if isn is not None else -1
        self.anchored = isn is not None  # base came from a SYN and never moves
        self.data = bytearray()
        self.pending: dict[int, bytes] = {}
        self.overflow = False

    def add(self, seq: int, payload: bytes) -> bool:
        """Add one segment; return True when the contiguous head grew."""
        if not payload or self.overflow:
            return False
        if self.base < 0:
            self.base = seq
        off = (seq - self.base) % _MOD
        if off >= _HALF:
            # The segment starts before base: a retransmission of consumed bytes when
            # anchored, otherwise an earlier segment of a stream whose start we missed.
            back = _MOD - off
            if self.anchored or back > self.limit:
                if back < len(payload):
                    payload, off = payload[back:], 0
                else:
                    return False
            else:
                self._rebase(back)
                off = 0
        return self._place(off, payload)

    def _rebase(self, back: int) -> None:
        """Move base back by `back` bytes: everything held so far becomes pending."""
        self.base = (self.base - back) % _MOD
        pending = {o + back: d for o, d in self.pending.items()}
        if self.data:
            pending[back] = bytes(self.data)
        self.pending = pending
        self.data = bytearray()

    def _place(self, off: int, payload: bytes) -> bool:
        have = len(self.data)
        if off > have:
            if off >= self.limit:
                return False
            if len(self.pending) >= MAX_PENDING_SEGMENTS:
                self.overflow = True
                return False
            prev = self.pending.get(off)
            if prev is None or len(prev) < len(payload):
                self.pending[off] = payload
            return False
        end = off + len(payload)
        if end <= have:
            return False  # a retransmission of bytes we hold: first copy wins
        self.data += payload[have - off :]
        self._drain()
        if len(self.data) >= self.limit:
            del self.data[self.limit :]
            self.overflow = True
        return True

    def _drain(self) -> None:
        pending = self.pending
        while pending:
            have = len(self.data)
            progressed = False
            for off in sorted(pending):
                if off > have:
                    break
                seg = pending.pop(off)
                if off + len(seg) > have:
                    self.data += seg[have - off :]
                    have = len(self.data)
                progressed = True
            if not progressed:
                break

    def consume(self, n: int) -> None:
        """Forget the first `n` bytes of the head (a streaming parser has used them)."""
        if n <= 0:
            return
        del self.data[:n]
        self.base = (self.base + n) % _MOD
        self.pending = {o - n: d for o, d in self.pending.items() if o + len(d) > n}
        self.pending = {max(o, 0): (d if o >= 0 else d[-o:]) for o, d in self.pending.items()}

    def bytes(self) -> bytes:
        """The contiguous head collected so far."""
        return bytes(self.data)
