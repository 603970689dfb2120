"""The only place the stages meet: frames → decode → flows → classify → events.

Per packet: decode to an L4Packet, count it into its flow, and while the flow's name is
still unknown hand its first bytes to the application decoders. DNS over UDP never makes
a flow: queries become lookup events, answers feed the DNS cache. Flows become events when
they end. Everything here is the hot path; work for a packet stops as soon as the packet
cannot add anything.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable, Iterable

from detector.config import Config
from detector.decode import dns as dns_dec
from detector.decode import gquic as gquic_dec
from detector.decode import http as http_dec
from detector.decode import quic as quic_dec
from detector.decode import tls as tls_dec
from detector.decode.net import decode_frame, decode_l4, outer_fragment
from detector.flows.dnscache import DnsCache
from detector.flows.fragments import FragmentTable
from detector.flows.reassembly import StreamHead
from detector.flows.table import Flow, FlowTable
from detector.model import (
    DNS_UDP_PORTS,
    ECH_PUBLIC_NAMES,
    SYN,
    TCP,
    UDP,
    Anomaly,
    ClientHello,
    DnsMessage,
    Evidence,
    EventKind,
    FlowRecord,
    Frame,
    HttpRequest,
    IPFragment,
    L4Packet,
    NeedMore,
    Stats,
    UsageEvent,
)

DNS_PORT = 53

# Packets after which a named flow that does not matter counts as a bulk transfer whose
# downloads a live kernel filter may drop: past the handshake, a real download.
BULK_PACKETS = 32

# Packets of a QUIC flow looked at before it is declared nameless: Chrome spreads a
# large ClientHello over two or three Initials; anything beyond a handful is not a handshake.
MAX_QUIC_INITIALS = 16

# Recent DNS queries remembered so that their answers do not make a second lookup event;
# one answer follows its query within milliseconds, so a few thousand is plenty.
MAX_PENDING_QUERIES = 8192

# Coverage: which nameless flows count as TLS/QUIC for the visibility figures.
_TLS_PORTS = frozenset({443, 853, 8443})

# Container allocations between two young-generation collections (CPython's default is
# 700: a collection every few packets for a loop that allocates several objects each).
GC_THRESHOLD = 50_000


def settle_heap() -> None:
    """Before the packets: what set-up built (catalogue, classifier, sinks) lives to the end,
    so no collection scans it again, and young collections come every GC_THRESHOLD
    allocations."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


class Pipeline:
    """Turns frames into UsageEvents through `emit`; counts everything into `stats`."""

    def __init__(
        self,
        cfg: Config,
        classifier: object,
        emit: Callable[[UsageEvent], None],
        stats: Stats | None = None,
        include_unmatched: bool = False,
    ) -> None:
        fc = cfg.flows
        self.classifier = classifier  # swapped whole on reload
        self.emit = emit
        self.stats = stats or Stats()
        self.include_unmatched = include_unmatched
        self.table = FlowTable(fc.max_flows, fc.idle_timeout, fc.active_timeout, fc.linger)
        self.dnscache = DnsCache(fc.dns_cache_entries, fc.dns_cache_grace)
        self.fragments = FragmentTable()
        self.inspect_bytes = fc.inspect_bytes
        self._queries: OrderedDict[tuple[bytes, int, str], None] = OrderedDict()
        # The share of the clients this pipeline owns when one file is split over processes
        # (fastpath.analyze_shared, capture.libpcap): (k, n), or None for all. Fragments
        # reach every share: each reassembles them and keeps its own clients' datagrams (of
        # another's DNS answer, only what its cache learns), and share 0 counts their frames.
        self.share: tuple[int, int] | None = None
        # A live kernel filter's hooks: a named flow that does not matter and keeps
        # downloading may have its downloads dropped in the kernel, until it ends.
        self.watch_bulk: Callable[[tuple[bytes, int, bytes, int]], None] | None = None
        self.bulk_ended: Callable[[tuple[bytes, int, bytes, int]], None] | None = None

    # -- input -----------------------------------------------------------------

    def run(self, frames: Iterable[Frame]) -> None:
        """Feed every frame of an iterable."""
        feed = self.feed
        for ts, linktype, data in frames:
            feed(ts, linktype, data)

    def feed(self, ts: float, linktype: int, data: bytes) -> None:
        """Process one frame."""
        stats = self.stats
        stats.packets += 1
        stats.bytes += len(data)
        res = decode_frame(ts, linktype, data)
        if type(res) is L4Packet:
            self._packet(res)
        elif res is None:
            stats.frames_skipped += 1
        elif self.share is not None and outer_fragment(linktype, data):
            self._shared_piece(res, len(data))
        elif type(res) is IPFragment:
            self._fragment(res)
        else:
            stats.anomaly(res.kind)  # type: ignore[union-attr]

    def feed_run(
        self, first: float, last: float, proto: int, src: bytes, dst: bytes, sport: int, dport: int,
        packets: int, ip_bytes: int, frame_bytes: int,
    ) -> None:  # fmt: skip
        """Count a run of one flow direction's packets that carry nothing to inspect (see
        flows.heads): as many packets, IP bytes and frame bytes as they had, from `first`
        to `last`."""
        stats = self.stats
        stats.packets += packets
        stats.bytes += frame_bytes
        self._packet(L4Packet(first, src, dst, proto, sport, dport, ip_bytes, 0, 0, b""), packets, last)

    def _shared_piece(self, res: IPFragment | Anomaly | None, size: int) -> None:
        """A frame that reached every share (see `share`)."""
        k, n = self.share  # type: ignore[misc]
        if k:
            self.stats.packets -= 1
            self.stats.bytes -= size
        if type(res) is not IPFragment:
            if k == 0 and res is not None:
                self.stats.anomaly(res.kind)
            return
        pkt = self._reassembled(res)
        if type(pkt) is L4Packet:
            if client_share(pkt, n) == k:
                self._packet(pkt)
            elif pkt.proto == UDP and pkt.sport in DNS_UDP_PORTS:
                msg = dns_dec.parse_dns(pkt.payload)
                if type(msg) is DnsMessage and msg.is_response:
                    self.dnscache.learn(pkt.ts, pkt.dst, msg)  # another share reports it
        elif k == 0 and isinstance(pkt, Anomaly):
            self.stats.anomaly(pkt.kind)

    def _fragment(self, frag: IPFragment) -> None:
        res = self._reassembled(frag)
        if type(res) is L4Packet:
            self._packet(res)
        elif isinstance(res, Anomaly):
            self.stats.anomaly(res.kind)

    def _reassembled(self, frag: IPFragment) -> L4Packet | IPFragment | Anomaly | None:
        """The datagram this fragment completes, if it does."""
        payload = self.fragments.add(frag)
        if payload is None:
            return None
        # ip_len as an unfragmented datagram would have had it: minimal header plus payload.
        return decode_l4(frag.ts, frag.src, frag.dst, frag.proto, payload, len(payload) + (40 if len(frag.src) == 16 else 20))

    def _packet(self, pkt: L4Packet, count: int = 1, last: float = 0.0) -> None:
        if pkt.proto == UDP and (pkt.dport in DNS_UDP_PORTS or pkt.sport in DNS_UDP_PORTS):
            self._dns_datagram(pkt)
            return
        flow, up = self.table.observe(pkt, count, last)
        if flow.packets == count:
            flow.cache_name = self.dnscache.lookup(pkt.ts, flow.client, flow.server)
        if flow.inspecting:
            if pkt.proto == TCP:
                self._inspect_tcp(flow, up, pkt)
            elif up and pkt.payload:
                self._inspect_udp(flow, pkt)
        elif self.watch_bulk is not None and flow.packets - count < BULK_PACKETS <= flow.packets:
            self._maybe_bulk(flow)
        if self.table.ended:
            for rec in self.table.take():
                self._flow_ended(rec)

    def _maybe_bulk(self, flow: Flow) -> None:
        # An ECH flow's own name is the provider's public name, not where it went.
        name = (None if flow.ech else flow.name) or flow.cache_name
        if name and not self.reportable(name, flow.server, flow.sport):
            self.watch_bulk((flow.server, flow.sport, flow.client, flow.cport))  # type: ignore[misc]

    def reportable(self, name: str | None, server: bytes, port: int) -> bool:
        """Would a flow to this name or address make a stored event (AI service, vendor
        range, encrypted-DNS resolver, AI-looking candidate)? A live kernel filter keeps
        admitting such a flow's packets, and its hello is fingerprinted."""
        cat = self.classifier.catalogue  # type: ignore[attr-defined]
        if name and (cat.matcher.match(name) or self.classifier.is_candidate(name)):  # type: ignore[attr-defined]
            return True
        if port in cat.resolver_ports and ((name and cat.resolver_matcher.match(name)) or (server and cat.resolver_matcher.match_ip(server))):
            return True
        return bool(server) and cat.matcher.match_ip(server) is not None

    # -- DNS -------------------------------------------------------------------

    def _dns_datagram(self, pkt: L4Packet) -> None:
        msg = dns_dec.parse_dns(pkt.payload)
        if type(msg) is DnsMessage:
            if msg.is_response:
                self._dns_response(pkt.ts, pkt.dst, pkt.src, pkt.sport, msg, pkt.ip_len, "udp")
            else:
                self._dns_query(pkt.ts, pkt.src, pkt.dst, pkt.dport, msg, pkt.ip_len, "udp")
        elif msg is not None:
            self.stats.anomaly(msg.kind)

    def _dns_query(self, ts: float, client: bytes, server: bytes, port: int, msg: DnsMessage, size: int, transport: str) -> None:
        if not msg.questions:
            return
        key = (client, msg.txid, msg.questions[0][0])
        queries = self._queries
        if key in queries:
            return  # a retransmitted query is the same lookup
        queries[key] = None
        if len(queries) > MAX_PENDING_QUERIES:
            queries.popitem(last=False)
        self._dns_events(ts, client, server, port, msg, size, transport)

    def _dns_response(self, ts: float, client: bytes, server: bytes, port: int, msg: DnsMessage, size: int, transport: str) -> None:
        self.dnscache.learn(ts, client, msg)
        if msg.questions and self._queries.pop((client, msg.txid, msg.questions[0][0]), 0) is None:
            return  # its query was seen and already reported
        self._dns_events(ts, client, server, port, msg, size, transport)

    def _dns_events(self, ts: float, client: bytes, server: bytes, port: int, msg: DnsMessage, size: int, transport: str) -> None:
        events = self.classifier.classify_dns(  # type: ignore[attr-defined]
            ts, client, server, port, msg, size, self.include_unmatched, transport=transport, include_candidates=True
        )
        for ev in events:
            self.stats.events += 1
            self.emit(ev)

    # -- TCP -------------------------------------------------------------------

    def _inspect_tcp(self, flow: Flow, up: bool, pkt: L4Packet) -> None:
        if pkt.flags & SYN:
            head = StreamHead(self.inspect_bytes, (pkt.seq + 1) & 0xFFFFFFFF)
            if up:
                flow.head = head
            elif flow.sport == DNS_PORT:
                flow.head_down = head
            return
        if not pkt.payload:
            return
        if up:
            head = flow.head
            if head is None:
                head = flow.head = StreamHead(self.inspect_bytes)
        elif flow.sport == DNS_PORT:
            head = flow.head_down
            if head is None:
                head = flow.head_down = StreamHead(self.inspect_bytes)
        else:
            return
        if not head.add(pkt.seq, pkt.payload):
            if head.overflow:
                self.stats.reassembly_overflows += 1
                flow.stop_inspecting()
            return
        if flow.sport == DNS_PORT and flow.app in (None, "dns"):
            self._dns_stream(flow, up, head, pkt.ts)
            return
        data = bytes(head.data)
        app = flow.app
        if app is None:
            app = flow.app = "tls" if data[0] == 0x16 else "http"
        res = tls_dec.parse_tls_client_hello(data, False) if app == "tls" else http_dec.parse_http_request(data)
        if type(res) is ClientHello:
            if self._fingerprinted(flow, res):
                res = tls_dec.parse_tls_client_hello(data)
            self._named_by_hello(flow, res, Evidence.TLS_SNI)
        elif type(res) is HttpRequest:
            self._named_by_http(flow, res)
        elif isinstance(res, NeedMore):
            if head.overflow:
                self.stats.reassembly_overflows += 1
                flow.stop_inspecting()
        else:
            if isinstance(res, Anomaly):
                self.stats.anomaly(res.kind)
            if app == "http":
                flow.app = None
            flow.stop_inspecting()

    def _dns_stream(self, flow: Flow, up: bool, head: StreamHead, ts: float) -> None:
        flow.app = "dns"
        msgs, used = dns_dec.parse_dns_tcp(bytes(head.data))
        head.consume(used)
        for msg in msgs:
            if type(msg) is not DnsMessage:
                self.stats.anomaly(msg.kind)  # type: ignore[union-attr]
            elif msg.is_response:
                self._dns_response(ts, flow.client, flow.server, flow.sport, msg, 0, "tcp")
            else:
                self._dns_query(ts, flow.client, flow.server, flow.sport, msg, 0, "tcp")

    def _fingerprinted(self, flow: Flow, hello: ClientHello) -> bool:
        """Whether a hello parsed without JA4 must be parsed again with it: JA4 is a third
        of a hello's cost, and only a flow that may make an event carries it (or a flow
        without a name of its own, whose JA4 is its only mark: see _coverage)."""
        sni = hello.sni
        if self.include_unmatched or not sni:
            return True
        if hello.ech and (sni in ECH_PUBLIC_NAMES or (flow.cache_name and flow.cache_name != sni)):
            return True  # real ECH: its name comes from the client's lookup, now or at the end
        return self.reportable(sni, flow.server, flow.sport)

    def _named_by_hello(self, flow: Flow, hello: ClientHello, evidence: Evidence) -> None:
        flow.alpn = hello.alpn
        flow.ja4 = hello.ja4
        flow.versions = hello.versions
        sni = hello.sni
        if sni and hello.ech and (sni in ECH_PUBLIC_NAMES or (flow.cache_name and flow.cache_name != sni)):
            # Real ECH: the SNI is the provider's public name, not the site. (Chrome sends
            # a GREASE ECH extension with the true SNI in every hello, so the extension
            # alone proves nothing.) The client's own lookup may still say where it went;
            # without one, the outer name is reported as seen and the flow counts as blind.
            flow.ech = True
            if flow.cache_name:
                sni = None
        if sni:
            flow.name = sni
            flow.evidence = evidence
        flow.stop_inspecting()

    def _named_by_http(self, flow: Flow, req: HttpRequest) -> None:
        if req.host:
            flow.name = req.host
            flow.evidence = Evidence.HTTP_CONNECT if req.method == "CONNECT" else Evidence.HTTP_HOST
        flow.user_agent = req.user_agent
        flow.stop_inspecting()

    # -- UDP / QUIC ------------------------------------------------------------

    def _inspect_udp(self, flow: Flow, pkt: L4Packet) -> None:
        payload = pkt.payload
        if not payload[0] & 0x80:
            # Not an IETF QUIC long header; Google QUIC before Q046 uses a short public
            # header for its client hello.
            if flow.app != "quic" and not self._gquic(flow, payload):
                flow.stop_inspecting()
            return
        res = quic_dec.parse_quic_initials(payload, key_dcid=flow.quic_key)
        if type(res) is tuple:
            flow.app = "quic"
            flow.transport = "quic"
            crypto = flow.crypto
            if crypto is None:
                crypto = flow.crypto = {}
            hello = None
            for initial in res:
                key = initial.key_dcid or initial.dcid
                if flow.quic_key is None:
                    flow.quic_key = key
                chunks = crypto.setdefault(key, [])
                chunks.extend(initial.crypto)
                hs = quic_dec.assemble_crypto(chunks)
                if hs:
                    hello = tls_dec.parse_client_hello_handshake(hs, "q", False)
                    if type(hello) is ClientHello:
                        if self._fingerprinted(flow, hello):
                            hello = tls_dec.parse_client_hello_handshake(hs, "q")
                        self._named_by_hello(flow, hello, Evidence.QUIC_SNI)
                        return
            if isinstance(hello, Anomaly):
                self.stats.anomaly(hello.kind)
                flow.stop_inspecting()
            elif flow.packets > MAX_QUIC_INITIALS:
                flow.stop_inspecting()
        elif isinstance(res, Anomaly):
            self.stats.anomaly(res.kind)
            if flow.app != "quic" or flow.packets > MAX_QUIC_INITIALS:
                flow.stop_inspecting()
        elif flow.app != "quic" and not self._gquic(flow, payload):
            flow.stop_inspecting()

    def _gquic(self, flow: Flow, payload: bytes) -> bool:
        """Look for a Google QUIC client hello; True while the flow is worth watching."""
        res = gquic_dec.parse_gquic_chlo(payload)
        if res is None:
            return False
        flow.transport = "quic"
        flow.app = "gquic"
        if type(res) is ClientHello:
            self._named_by_hello(flow, res, Evidence.QUIC_SNI)
            flow.ja4 = None  # JA4 is not defined for Google QUIC
            return True
        if isinstance(res, Anomaly):
            self.stats.anomaly(res.kind)
            return False
        return flow.packets <= MAX_QUIC_INITIALS  # NeedMore: the hello continues

    # -- flow end --------------------------------------------------------------

    def _flow_ended(self, rec: FlowRecord) -> None:
        stats = self.stats
        if self.bulk_ended is not None:
            self.bulk_ended((rec.server, rec.server_port, rec.client, rec.client_port))
        if rec.server_name is None or (rec.ech and rec.evidence is not Evidence.DNS_CACHE):
            # The answer may have been read after the flow's first packet (several capture
            # handles interleave); it still came first on the wire. An ECH flow named only
            # by its outer (public) SNI takes the client's lookup, as it would have then.
            name = self.dnscache.lookup(rec.first_ts, rec.client, rec.server)
            if name is not None:
                rec.server_name, rec.evidence = name, Evidence.DNS_CACHE
        ev = self.classifier.classify_flow(rec, self.include_unmatched, include_candidates=True)  # type: ignore[attr-defined]
        stats.flows_total += 1
        self._coverage(rec, ev)
        if ev is not None:
            stats.events += 1
            self.emit(ev)

    def _coverage(self, rec: FlowRecord, ev: UsageEvent | None) -> None:
        """Count a TLS/QUIC flow as named, attributed by DNS only, or blind (with a reason)."""
        if not (rec.app in ("tls", "quic", "gquic") or rec.server_port in _TLS_PORTS):
            return
        stats = self.stats
        if ev is not None and ev.kind == EventKind.ENCRYPTED_DNS.value:
            reason = "encrypted-dns"
        elif rec.evidence is Evidence.DNS_CACHE:
            stats.flows_dns_only += 1
            return
        elif rec.ech:
            reason = "ech"  # the SNI is the provider's public name, not the site
        elif rec.evidence in (Evidence.TLS_SNI, Evidence.QUIC_SNI, Evidence.HTTP_HOST, Evidence.HTTP_CONNECT):
            stats.flows_named += 1
            return
        elif not rec.saw_start:
            reason = "mid-flow"
        elif rec.ja4:
            reason = "no-sni"
        elif rec.app in ("quic", "gquic"):
            reason = "quic-undecrypted"
        else:
            reason = "no-handshake"
        stats.flows_blind[reason] = stats.flows_blind.get(reason, 0) + 1

    # -- records from other sensors' logs (Zeek, Suricata): decode is already done ---

    def feed_dns(self, ts: float, client: bytes, server: bytes, port: int, msg: DnsMessage, transport: str = "udp") -> None:
        """One DNS query or answer seen by another sensor (client = the side that asked)."""
        if msg.is_response:
            self._dns_response(ts, client, server, port, msg, 0, transport)
        else:
            self._dns_query(ts, client, server, port, msg, 0, transport)

    def feed_flow(self, rec: FlowRecord) -> None:
        """One finished flow seen by another sensor; a nameless one gets the client's own
        earlier DNS answer, as a flow of our own would."""
        self._flow_ended(rec)

    def tick(self, now: float) -> None:
        """Advance flow time without a packet (quiet live link) and report idle flows."""
        self.table.advance(now)
        for rec in self.table.take():
            self._flow_ended(rec)

    def finish(self) -> None:
        """End of input: report every flow still open."""
        for rec in self.table.drain():
            self._flow_ended(rec)
        self.stats.flows_evicted = self.table.evicted

    def sync_stats(self) -> None:
        """Copy table-owned counters into stats (cheap; called by metrics and at the end)."""
        self.stats.flows_evicted = self.table.evicted
        self.stats.dns_cache_evictions = self.dnscache.evictions


def client_share(pkt: L4Packet, shares: int) -> int:
    """Which of `shares` (a power of two) holds the packet's client when a file is split:
    the side with the higher port, by its address's last byte; with equal ports, both
    addresses' last bytes xor-ed. capture.libpcap's share filter is the same rule in BPF."""
    if pkt.sport > pkt.dport:
        byte = pkt.src[-1]
    elif pkt.sport < pkt.dport:
        byte = pkt.dst[-1]
    else:
        byte = pkt.src[-1] ^ pkt.dst[-1]
    return byte & (shares - 1)
