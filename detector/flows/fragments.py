"""Bounded IPv4 fragment reassembly, so a fragmented DNS response still feeds the DNS cache.

References: RFC 791 §3.2 (fragmentation and reassembly), RFC 815 (hole tracking).
"""

from __future__ import annotations

from collections import OrderedDict

from detector.model import IPFragment

# Datagrams being reassembled at once. Fragmented traffic on an office uplink is rare
# (mostly large DNS/EDNS answers), so a few thousand covers bursts while bounding a flood.
MAX_DATAGRAMS = 4096
# Largest reassembled datagram: the IPv4 total-length field cannot exceed this.
MAX_DATAGRAM_BYTES = 65_535
# RFC 791 suggests 15 s for the reassembly timer; Linux uses 30 s (ipfrag_time).
TIMEOUT_SECONDS = 30.0


class _Pending:
    __slots__ = ("first_ts", "parts", "total", "held")

    def __init__(self, ts: float) -> None:
        self.first_ts = ts
        self.parts: dict[int, bytes] = {}
        self.total = -1  # known once the last fragment (MF=0) arrived
        self.held = 0  # bytes stored; overlapping fragments could otherwise hold far more


class FragmentTable:
    """IPv4 datagrams under reassembly, keyed by (src, dst, proto, ident)."""

    __slots__ = ("_pending", "dropped")

    def __init__(self) -> None:
        self._pending: OrderedDict[tuple[bytes, bytes, int, int], _Pending] = OrderedDict()
        self.dropped = 0  # datagrams given up: timeout, eviction or oversize

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, frag: IPFragment) -> bytes | None:
        """Add a fragment; return the whole transport payload once every byte is present."""
        key = (frag.src, frag.dst, frag.proto, frag.ident)
        pend = self._pending.get(key)
        if pend is None:
            self._expire(frag.ts)
            pend = self._pending[key] = _Pending(frag.ts)
            if len(self._pending) > MAX_DATAGRAMS:
                self._pending.popitem(last=False)
                self.dropped += 1
        end = frag.offset + len(frag.data)
        if end > MAX_DATAGRAM_BYTES:
            del self._pending[key]
            self.dropped += 1
            return None
        if not frag.more:
            pend.total = end
        prev = pend.parts.get(frag.offset)
        if prev is None or len(prev) < len(frag.data):
            pend.held += len(frag.data) - (len(prev) if prev else 0)
            if pend.held > 2 * MAX_DATAGRAM_BYTES:
                # Only overlapping fragments get here: an attack or a broken stack.
                del self._pending[key]
                self.dropped += 1
                return None
            pend.parts[frag.offset] = frag.data
        if pend.total < 0:
            return None
        whole = _join(pend.parts, pend.total)
        if whole is not None:
            del self._pending[key]
        return whole

    def _expire(self, now: float) -> None:
        pending = self._pending
        while pending:
            key, pend = next(iter(pending.items()))
            if now - pend.first_ts <= TIMEOUT_SECONDS:
                break
            del pending[key]
            self.dropped += 1


def _join(parts: dict[int, bytes], total: int) -> bytes | None:
    """Concatenate the parts if they cover [0, total) without a hole."""
    out = bytearray()
    for off in sorted(parts):
        if off > len(out):
            return None
        data = parts[off]
        if off + len(data) > len(out):
            out += data[len(out) - off :]
    if len(out) < total:
        return None
    return bytes(out[:total])
