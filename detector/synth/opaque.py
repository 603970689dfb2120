"""Opaque (encrypted-looking) payload bytes that are cheap to make and to checksum.

All bulk payload is sliced from one random pool. Prefix sums of the pool's 16-bit words,
at both byte alignments, give the checksum contribution of any slice in O(1), so a
capture of millions of full-size packets spends no time summing payload bytes.
"""

from __future__ import annotations

import array
import itertools
import random
import sys

POOL_SIZE = 1 << 17  # larger than the biggest slice taken (a 16 KiB TLS record, a 1.5 KB datagram)
POOL = random.Random(0x5EED).randbytes(POOL_SIZE)


def _prefix(data: bytes) -> list[int]:
    words = array.array("H", data[: len(data) & ~1])
    if sys.byteorder == "little":
        words.byteswap()  # the Internet checksum sums big-endian words
    return [0, *itertools.accumulate(words)]


_EVEN = _prefix(POOL)  # _EVEN[k] = sum of words of POOL[0:2k]
_ODD = _prefix(POOL[1:])  # _ODD[k] = sum of words of POOL[1:1+2k]


def pool_sum(at: int, n: int) -> int:
    """word_sum(POOL[at:at+n]) (see builders.word_sum), in constant time."""
    m = n >> 1
    if at & 1:
        k = (at - 1) >> 1
        s = _ODD[k + m] - _ODD[k]
    else:
        k = at >> 1
        s = _EVEN[k + m] - _EVEN[k]
    if n & 1:
        s += POOL[at + n - 1] << 8
    return s % 0xFFFF


def take(rng: random.Random, n: int) -> tuple[bytes, int]:
    """n opaque bytes from a random place in the pool, with their word sum."""
    at = rng.randrange(POOL_SIZE - n)
    return POOL[at:at + n], pool_sum(at, n)
