"""Longest-prefix lookup of packed IPv4/IPv6 addresses (vendor IP ranges, department subnets).

One dict per prefix length and family, probed from the longest prefix down: a lookup costs one
`int.from_bytes` plus one dict probe per distinct prefix length in the table (a handful), with no
per-lookup allocation beyond the int. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are looked up
as the IPv4 address they carry, since dual-stack sockets report IPv4 peers that way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Generic, TypeVar

V = TypeVar("V")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"  # RFC 4291 §2.5.5.2


class PrefixTable(Generic[V]):
    """Immutable map from networks to values; `lookup` returns the value of the longest prefix."""

    __slots__ = ("_len", "_v4", "_v6")

    def __init__(self, entries: Iterable[tuple[Network, V]]) -> None:
        by_len: dict[tuple[int, int], dict[int, V]] = {}
        count = 0
        for net, value in entries:
            bits = net.max_prefixlen
            key = (bits, net.prefixlen)
            shift = bits - net.prefixlen
            # setdefault: the first entry for a network wins; callers report duplicates.
            by_len.setdefault(key, {}).setdefault(int(net.network_address) >> shift, value)
            count += 1
        self._len = count
        self._v4 = self._tables(by_len, 32)
        self._v6 = self._tables(by_len, 128)

    @staticmethod
    def _tables(
        by_len: dict[tuple[int, int], dict[int, V]], bits: int
    ) -> tuple[tuple[int, dict[int, V]], ...]:
        lengths = sorted((plen for (b, plen) in by_len if b == bits), reverse=True)
        return tuple((bits - plen, by_len[(bits, plen)]) for plen in lengths)

    def __len__(self) -> int:
        return self._len

    def lookup(self, addr: bytes) -> V | None:
        """The value of the longest prefix containing the packed address, or None."""
        n = len(addr)
        if n == 4:
            tables = self._v4
        elif n == 16:
            if addr[:12] == _V4_MAPPED_PREFIX:
                tables, addr = self._v4, addr[12:]
            else:
                tables = self._v6
        else:
            return None
        value = int.from_bytes(addr, "big")
        for shift, table in tables:
            hit = table.get(value >> shift)
            if hit is not None:
                return hit
        return None


def parse_network(text: object) -> Network | str:
    """A CIDR (or a bare address, as a host route) from rules text; an error message if invalid.

    Host bits must be zero ("10.1.2.3/16" is refused) so that every written network means
    exactly what it says.
    """
    if not isinstance(text, str):
        return f"must be a CIDR string, not {type(text).__name__}"
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        return f"bad CIDR '{text}': {exc}"
