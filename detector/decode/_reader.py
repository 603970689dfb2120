"""A small bounds-checked cursor over bytes, shared by the length-prefixed decoders.

Reads never go past `end`; a read that would raises `DecodeError` carrying the
`Anomaly` the cursor was made with, so a nested vector (an extension body, a name
list) reports its own stable name. Public decoders catch `DecodeError` at their
edge and return the anomaly; it never escapes a public function.
"""

from __future__ import annotations

from struct import unpack_from

from detector.model import Anomaly


class DecodeError(Exception):
    """A read ran past the end of its vector; `anomaly` names the broken field."""

    __slots__ = ("anomaly",)

    def __init__(self, anomaly: Anomaly) -> None:
        super().__init__(anomaly.kind)
        self.anomaly = anomaly


class Reader:
    """Cursor over `buf[pos:end]`; every read checks the bound first."""

    __slots__ = ("buf", "pos", "end", "error")

    def __init__(self, buf: bytes, pos: int, end: int, error: Anomaly) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.error = error

    def remaining(self) -> int:
        """Bytes left before `end`."""
        return self.end - self.pos

    def _advance(self, n: int) -> int:
        start = self.pos
        if start + n > self.end:
            raise DecodeError(self.error)
        self.pos = start + n
        return start

    def u8(self) -> int:
        """One unsigned byte."""
        return self.buf[self._advance(1)]

    def u16(self) -> int:
        """A big-endian 16-bit unsigned integer."""
        return unpack_from("!H", self.buf, self._advance(2))[0]

    def skip(self, n: int) -> None:
        """Skip `n` bytes."""
        self._advance(n)

    def take_rest(self) -> bytes:
        """Everything up to `end`."""
        at = self.pos
        self.pos = self.end
        return self.buf[at : self.end]

    def sub(self, n: int, error: Anomaly | None = None) -> Reader:
        """A cursor over the next `n` bytes, then skip them.

        `error` (default: this cursor's) names both a length that overflows this
        cursor and a read that overflows the child, so a vector reports one name.
        """
        err = error or self.error
        start = self.pos
        if start + n > self.end:
            raise DecodeError(err)
        self.pos = start + n
        return Reader(self.buf, start, start + n, err)

    def vec8(self, error: Anomaly | None = None) -> Reader:
        """A cursor over a vector with a one-byte length prefix."""
        return self.sub(self.u8(), error)

    def vec16(self, error: Anomaly | None = None) -> Reader:
        """A cursor over a vector with a two-byte length prefix."""
        return self.sub(self.u16(), error)

    def u16_list(self) -> list[int]:
        """The rest of this cursor as big-endian u16 values; an odd byte left is an error."""
        n = self.end - self.pos
        if n & 1:
            raise DecodeError(self.error)
        values = list(unpack_from(f"!{n >> 1}H", self.buf, self.pos))
        self.pos = self.end
        return values
