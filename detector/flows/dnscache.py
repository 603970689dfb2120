"""Which name a client looked up for an address, so nameless flows can still be attributed.

Keyed by (client, address): a CDN address serves many names, and only the client's own
lookup says which one it meant. Entries live for the record's TTL plus a grace period
(clients and browsers keep answers past the TTL) and the table has a hard size bound.
"""

from __future__ import annotations

import socket
from collections import OrderedDict

from detector.model import DnsAnswer, DnsMessage

A, AAAA, CNAME = 1, 28, 5

_FAMILY = {A: socket.AF_INET, AAAA: socket.AF_INET6}


def _packed(ans: DnsAnswer) -> bytes | None:
    """The packed address of an A/AAAA answer, else None."""
    family = _FAMILY.get(ans.rtype)
    if family is None:
        return None
    try:
        return socket.inet_pton(family, ans.value)
    except OSError:
        return None


class DnsCache:
    """Bounded, TTL-aware (client, address) → name map learned from DNS answers."""

    __slots__ = ("_map", "max_entries", "grace", "max_ttl", "evictions")

    def __init__(self, max_entries: int = 100_000, grace: float = 300.0, max_ttl: float = 86_400.0) -> None:
        self._map: OrderedDict[tuple[bytes, bytes], tuple[str, float]] = OrderedDict()
        self.max_entries = max_entries
        self.grace = grace
        self.max_ttl = max_ttl
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._map)

    def learn(self, ts: float, client: bytes, msg: DnsMessage) -> int:
        """Record the addresses in a response for `client`; return how many were learned.

        The name stored is the question's name (what the user asked for), not the
        CNAME target at the end of the chain: the catalogue knows `chatgpt.com`, not
        the CDN name it points to.
        """
        if not msg.questions:
            return 0
        qname = msg.questions[0][0]
        m = self._map
        n = 0
        for ans in msg.answers:
            addr = _packed(ans)
            if addr is None:
                continue
            key = (client, addr)
            expiry = ts + min(float(ans.ttl), self.max_ttl) + self.grace
            if key in m:
                m.move_to_end(key)
            m[key] = (qname, expiry)
            n += 1
        while len(m) > self.max_entries:
            m.popitem(last=False)
            self.evictions += 1
        return n

    def lookup(self, ts: float, client: bytes, addr: bytes) -> str | None:
        """The name `client` looked up for `addr`, if that answer is still fresh at `ts`."""
        hit = self._map.get((client, addr))
        if hit is None:
            return None
        name, expiry = hit
        if ts > expiry:
            del self._map[(client, addr)]
            return None
        return name
