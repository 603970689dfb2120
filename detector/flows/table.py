"""The flow table: 5-tuple → counters, direction, name, handshake state; bounded, packet-timed.

Time is the packets' own time, clamped so it never runs backwards (captures from several
interfaces interleave slightly out of order). Flows end on idle timeout, after a FIN/RST
exchange plus a short linger (so the last ACKs do not open a new nameless flow), on
eviction when the table is full, or at end of input; a long flow is reported every
`active_timeout` seconds so a daemon's figures do not wait for it to end.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from detector.flows.reassembly import StreamHead
from detector.model import ACK, FIN, RST, SYN, TCP, EndReason, Evidence, FlowRecord, L4Packet

# Ports on which the listening side is certain; used only when no SYN tells who opened
# the flow (mid-flow start, UDP).
SERVER_PORTS = frozenset(
    {21, 22, 25, 53, 80, 110, 143, 443, 465, 587, 853, 993, 995, 1080, 3128, 3478, 5228, 8000, 8080, 8443, 8888}
)

# How often (in packet time) the table looks for idle flows: a full scan per packet would
# cost more than it saves, and a second of lateness is invisible in hourly figures.
TICK_SECONDS = 1.0


class Flow:
    """Mutable state of one flow, client side first."""

    __slots__ = (
        "client", "server", "cport", "sport", "proto", "fwd",
        "first_ts", "last_ts", "up_bytes", "down_bytes", "packets",
        "name", "evidence", "transport", "app", "alpn", "ja4", "ech", "versions", "user_agent",
        "inspecting", "head", "head_down", "crypto", "quic_key", "saw_start", "closing", "cache_name",
    )  # fmt: skip

    def __init__(self, client: bytes, server: bytes, cport: int, sport: int, proto: int, ts: float) -> None:
        self.client = client
        self.server = server
        self.cport = cport
        self.sport = sport
        self.proto = proto
        self.fwd = (client, server, cport, sport, proto)
        self.first_ts = ts
        self.last_ts = ts
        self.up_bytes = 0
        self.down_bytes = 0
        self.packets = 0
        self.name: str | None = None
        self.evidence: Evidence | None = None
        self.transport = "tcp" if proto == TCP else "udp"
        self.app: str | None = None  # tls | quic | http | dns once recognised
        self.alpn: tuple[str, ...] = ()
        self.ja4: str | None = None
        self.ech = False
        self.versions: tuple[int, ...] = ()
        self.user_agent: str | None = None
        self.inspecting = True  # the client's first bytes are still being looked at
        self.head: StreamHead | None = None  # client → server head (TCP)
        self.head_down: StreamHead | None = None  # server → client head (DNS over TCP)
        self.crypto: dict[bytes, list[tuple[int, bytes]]] | None = None  # QUIC CRYPTO by key DCID
        self.quic_key: bytes | None = None  # the client's first DCID: its Initial keys (RFC 9001 §5.2)
        self.saw_start = False
        self.closing = 0  # FIN/RST bits seen: 1 client FIN, 2 server FIN, 4 RST
        self.cache_name: str | None = None  # name from the DNS cache when the flow began

    def stop_inspecting(self) -> None:
        """Drop the handshake buffers: the name is known or cannot be had."""
        self.inspecting = False
        self.head = None
        self.head_down = None
        self.crypto = None

    def record(self, reason: EndReason) -> FlowRecord:
        """The flow as a FlowRecord; a name from the DNS cache stands in for a missing one."""
        name, evidence = self.name, self.evidence
        if name is None and self.cache_name is not None:
            name, evidence = self.cache_name, Evidence.DNS_CACHE
        return FlowRecord(
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            client=self.client,
            server=self.server,
            client_port=self.cport,
            server_port=self.sport,
            proto=self.proto,
            bytes_up=self.up_bytes,
            bytes_down=self.down_bytes,
            packets=self.packets,
            reason=reason,
            server_name=name,
            evidence=evidence,
            transport=self.transport,
            alpn=self.alpn,
            ja4=self.ja4,
            ech=self.ech,
            tls_versions=self.versions,
            user_agent=self.user_agent,
            saw_start=self.saw_start,
            app=self.app or "",
        )


def _client_is_sender(pkt: L4Packet) -> bool:
    """Decide which side opened a flow from its first packet."""
    if pkt.proto == TCP and pkt.flags & SYN:
        return not pkt.flags & ACK
    dport, sport = pkt.dport, pkt.sport
    d_known, s_known = dport in SERVER_PORTS, sport in SERVER_PORTS
    if d_known != s_known:
        return d_known
    return dport <= sport


class FlowTable:
    """Flows keyed by the client-first 5-tuple, least recently active first."""

    __slots__ = (
        "_flows", "_closing", "max_flows", "idle_timeout", "active_timeout", "linger",
        "ended", "evicted", "_now", "_next_tick",
    )  # fmt: skip

    def __init__(
        self,
        max_flows: int = 262_144,
        idle_timeout: float = 120.0,
        active_timeout: float = 1800.0,
        linger: float = 5.0,
    ) -> None:
        self._flows: OrderedDict[tuple[bytes, bytes, int, int, int], Flow] = OrderedDict()
        self._closing: deque[tuple[float, Flow]] = deque()
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.active_timeout = active_timeout
        self.linger = linger
        self.ended: list[FlowRecord] = []  # records waiting for the pipeline to take
        self.evicted = 0
        self._now = 0.0
        self._next_tick = 0.0

    def __len__(self) -> int:
        return len(self._flows)

    def observe(self, pkt: L4Packet, count: int = 1, last: float = 0.0) -> tuple[Flow, bool]:
        """Count one packet into its flow (created if new); return the flow and whether the
        packet went client → server. A run of `count` packets of one direction, from
        `pkt.ts` to `last`, counts as one packet of `pkt.ip_len` bytes (all of theirs)."""
        ts = pkt.ts
        if ts > self._now:
            self._now = ts
            if ts >= self._next_tick:
                self._tick(ts)
        else:
            ts = self._now
        flows = self._flows
        key = (pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto)
        flow = flows.get(key)
        up = True
        if flow is None:
            flow = flows.get((pkt.dst, pkt.src, pkt.dport, pkt.sport, pkt.proto))
            up = False
        if flow is not None and ts - flow.last_ts > (self.linger if flow.closing & 4 or flow.closing == 3 else self.idle_timeout):
            # Expired by its own clock: decided per packet, so the result does not depend on
            # when the periodic sweep last ran (live capture and replay agree).
            self._end(flow, EndReason.FIN if flow.closing else EndReason.IDLE)
            flow = None
        if flow is None:
            flow, up = self._create(pkt, ts)
        flows.move_to_end(flow.fwd)
        if ts - flow.first_ts > self.active_timeout and flow.packets:
            self._report_active(flow, ts)
        # A run may end after packets that came later in the stream (see flows.heads).
        if last > ts:
            ts = last
        if ts > flow.last_ts:
            flow.last_ts = ts
        flow.packets += count
        if up:
            flow.up_bytes += pkt.ip_len
        else:
            flow.down_bytes += pkt.ip_len
        if pkt.proto == TCP and pkt.flags & (FIN | RST):
            self._closing_seen(flow, pkt.flags, up, ts)
        return flow, up

    def _create(self, pkt: L4Packet, ts: float) -> tuple[Flow, bool]:
        up = _client_is_sender(pkt)
        if up:
            flow = Flow(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, ts)
        else:
            flow = Flow(pkt.dst, pkt.src, pkt.dport, pkt.sport, pkt.proto, ts)
        # A flow whose first packet is a SYN (or the first UDP datagram) starts here;
        # anything else is a mid-flow start whose handshake we did not see.
        flow.saw_start = pkt.proto != TCP or bool(pkt.flags & SYN)
        self._flows[flow.fwd] = flow
        if len(self._flows) > self.max_flows:
            _, old = self._flows.popitem(last=False)
            self.evicted += 1
            self.ended.append(old.record(EndReason.EVICTED))
        return flow, up

    def _closing_seen(self, flow: Flow, flags: int, up: bool, ts: float) -> None:
        before = flow.closing
        if flags & RST:
            flow.closing |= 4
        else:
            flow.closing |= 1 if up else 2
        if before != flow.closing and (flow.closing & 4 or flow.closing == 3):
            closing = self._closing
            closing.append((ts + self.linger, flow))
            # A scan answered by RSTs closes flows faster than the linger lets them go:
            # the queue may hold no more than the table, so the oldest ends early.
            while len(closing) > self.max_flows:
                _, old = closing.popleft()
                if self._flows.get(old.fwd) is old:
                    self._end(old, EndReason.FIN)

    def _report_active(self, flow: Flow, ts: float) -> None:
        """Report a long flow's counts so far and start counting afresh."""
        self.ended.append(flow.record(EndReason.ACTIVE))
        flow.first_ts = ts
        flow.up_bytes = flow.down_bytes = flow.packets = 0

    def _end(self, flow: Flow, reason: EndReason) -> None:
        del self._flows[flow.fwd]
        self.ended.append(flow.record(reason))

    def _tick(self, now: float) -> None:
        self._next_tick = now + TICK_SECONDS
        flows = self._flows
        closing = self._closing
        while closing and closing[0][0] <= now:
            _, flow = closing.popleft()
            if flows.get(flow.fwd) is flow and flow.last_ts + self.linger <= now:
                self._end(flow, EndReason.FIN)
        limit = now - self.idle_timeout
        while flows:
            flow = next(iter(flows.values()))
            if flow.last_ts > limit:
                break
            self._end(flow, EndReason.IDLE)

    def open_flows(self):  # type: ignore[no-untyped-def]
        """The flows not yet ended (a view; do not change the table while iterating)."""
        return self._flows.values()

    def advance(self, now: float) -> None:
        """Move the clock without a packet (a quiet live link), ending idle flows."""
        if now > self._now:
            self._now = now
            self._tick(now)

    def drain(self) -> list[FlowRecord]:
        """End every flow (end of input) and return all records not yet taken."""
        for flow in self._flows.values():
            self.ended.append(flow.record(EndReason.EOF))
        self._flows.clear()
        self._closing.clear()
        return self.take()

    def take(self) -> list[FlowRecord]:
        """Hand over the records ended so far."""
        out, self.ended = self.ended, []
        return out
