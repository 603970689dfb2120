"""The office scenario: N clients in department subnets browse ordinary sites and AI services
through the resolver, directly (TLS, QUIC) or through the explicit proxy (CONNECT), for a
given duration; written as one time-ordered capture plus a truth manifest.

Generation streams: flow starts come from one Poisson process, each flow is a generator of
packets, and a heap merges the flows that are open at the same time, so memory depends on
concurrency, not on the capture's size. The same seed gives the same bytes.

The truth manifest lists, per DNS lookup and per flow, what the sensor should report: the
intended name and catalogue service, the evidence it can rest on, the client and its
department, and the IP bytes each way (bytes from the IP header on, as the sensor counts).
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path as FsPath
from typing import Any, BinaryIO

from detector.synth import builders as b
from detector.synth import world as w
from detector.synth.path import Packet, Path
from detector.synth.quic import DRAFT_29, VERSION_1, VERSION_2, QuicConversation
from detector.synth.sessions import Turn, dns_exchange, quic_session, tls_session
from detector.synth.tcp import TcpConversation
from detector.synth.world import Site

SAMPLE_START = datetime(2026, 11, 2, 9, 0, 0, tzinfo=UTC).timestamp()
LARGE_UPLOAD_BYTES = 25_000_000  # the "Eindhoven" case: a case file pasted into a chatbot
MAX_FLOW_BYTES = 40_000_000  # cap on one heavy-tailed transfer
DNS_TTL = 300  # seconds the clients' stub resolvers cache an answer
_DNS_TYPES = {1: "A", 28: "AAAA", 65: "HTTPS", 5: "CNAME"}


@dataclass(slots=True)
class Client:
    """One workstation: addresses, department, browser, proxy use, and its small state."""

    ip: str
    ip6: str
    department: str
    profile: str  # TLS stack of its browser: chrome | firefox (Edge = chrome)
    browser: str  # chrome | edge | firefox
    proxy: bool  # all web traffic through the explicit proxy (CONNECT)
    developer: bool  # also calls AI APIs from scripts and the IDE
    v6: bool = False  # reaches sites over IPv6 when they have AAAA records
    port: int = 50000
    cache: dict[str, float] = field(default_factory=dict)  # name -> expiry of the stub cache
    dns_path: Path | None = None

    def next_port(self) -> int:
        """The next ephemeral port (Windows: 49152-65535, sequential)."""
        self.port = 49152 + (self.port - 49152 + 1) % 16384
        return self.port


@dataclass(slots=True)
class Task:
    """One scheduled activity (a site visit, a lookup, a special case) and its truth records."""

    start: float
    index: int
    client: Client
    run: Callable[[Task], Iterator[Packet]]
    rng: random.Random
    site: Site | None = None
    tags: tuple[str, ...] = ()
    records: list[dict[str, Any]] = field(default_factory=list)
    answered: float = 0.0  # when the task's last DNS answer arrived (connections start after it)


@dataclass(slots=True)
class Summary:
    """What generate_office wrote."""

    packets: int = 0
    bytes: int = 0  # captured frame bytes (pcap record data)
    wire_bytes: int = 0  # frame bytes on the wire (orig_len)
    flows: int = 0
    lookups: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0
    services: dict[str, int] = field(default_factory=dict)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _lognorm(rng: random.Random, median: float, sigma: float, cap: float = MAX_FLOW_BYTES) -> int:
    """Heavy-tailed size: lognormal around `median`, with a 2% Pareto tail, capped."""
    x = rng.lognormvariate(math.log(median), sigma)
    if rng.random() < 0.02:
        x *= rng.paretovariate(1.2)
    return max(1, int(min(x, cap)))


class Office:
    """The scenario world and its flow generators (see generate_office)."""

    def __init__(self, *, clients: int, seed: int, start: float, duration_s: float, ai_share: float,
                 proxy_share: float, ipv6_clients: int, max_flow_bytes: int = MAX_FLOW_BYTES,
                 rtt_ms: tuple[float, float] = (4.0, 40.0)) -> None:
        self.seed = seed
        self.start = start
        self.duration = duration_s
        self.ai_share = ai_share
        self.rtt_ms = rtt_ms
        self.max_flow = max_flow_bytes
        rng = random.Random(f"office-{seed}")
        self.clients = self._make_clients(rng, clients, proxy_share, ipv6_clients)
        self.resolver = b.ip_bytes(w.RESOLVER)
        self.proxy = b.ip_bytes(w.PROXY)

    # -- population -----------------------------------------------------------

    @staticmethod
    def _make_clients(rng: random.Random, n: int, proxy_share: float, ipv6_clients: int) -> list[Client]:
        counts = [0] * len(w.DEPARTMENTS)
        out = []
        weights = [d[2] for d in w.DEPARTMENTS]
        for i in range(n):
            d = i if i < len(w.DEPARTMENTS) else rng.choices(range(len(w.DEPARTMENTS)), weights)[0]
            ip, ip6 = w.department_client(d, counts[d])
            counts[d] += 1
            browser = rng.choices(("chrome", "edge", "firefox"), (0.55, 0.25, 0.20))[0]
            dept = w.DEPARTMENTS[d][0]
            c = Client(ip, ip6, dept, "firefox" if browser == "firefox" else "chrome", browser,
                       proxy=dept != "Gastennetwerk" and rng.random() < proxy_share,
                       developer="ICT" in dept and rng.random() < 0.5, port=rng.randrange(49152, 65535))
            out.append(c)
        # Guarantees the scenario relies on: a proxy user, a developer, IPv6 clients (ICT).
        regular = [c for c in out if c.department != "Gastennetwerk"]
        if regular and not any(c.proxy for c in out):
            regular[-1].proxy = True
        ict = [c for c in out if "ICT" in c.department and not c.proxy]
        if ict and not any(c.developer for c in out):
            ict[0].developer = True
        for c in ict[-ipv6_clients:] if ipv6_clients else []:
            c.v6 = True
        return out

    def pick_client(self, rng: random.Random, want: Callable[[Client], bool]) -> Client:
        """A client satisfying `want` (the first one if random picks fail)."""
        for _ in range(20):
            c = rng.choice(self.clients)
            if want(c):
                return c
        return next((c for c in self.clients if want(c)), self.clients[0])

    def rtt(self, rng: random.Random) -> float:
        """A round-trip time to an Internet server, seconds."""
        lo, hi = self.rtt_ms
        return rng.uniform(lo, hi) / 1000.0

    # -- truth ----------------------------------------------------------------

    def _record(self, task: Task, kind: str, ts: float, client: str, server: str, port: int, transport: str,
                name: str | None, service: str | None, evidence: str | None, **extra: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "kind": kind, "ts": _iso(ts), "client": client, "department": task.client.department,
            "server_ip": server, "server_port": port, "transport": transport, "name": name,
            "service": service, "evidence": evidence, "tags": list(task.tags),
        }
        rec.update(extra)
        task.records.append(rec)
        return rec

    @staticmethod
    def _count(rec: dict[str, Any], conv: Any) -> None:
        rec["bytes_up"] = conv.bytes_up
        rec["bytes_down"] = conv.bytes_down
        rec["packets"] = conv.packets

    # -- DNS --------------------------------------------------------------------

    def lookup(self, task: Task, t: float, name: str, qtypes: Iterable[int] = (1,), *,
               site: Site | None = None, ech: bool = False) -> Iterator[Packet]:
        """The client's stub asks the resolver (UDP 53) for `name`, one query per type, in
        parallel; answers carry the site's CNAME chain and addresses. Records the lookups."""
        c = task.client
        rng = task.rng
        if c.dns_path is None:
            c.dns_path = Path(b.ip_bytes(c.ip), self.resolver, server_mac=b.mac_bytes("00:1b:21:0a:00:35"),
                              server_ttl=64, ip_id=[rng.randrange(65536), rng.randrange(65536)])
        site = site or w.SITES_BY_HOST.get(name)
        pending: list[Packet] = []
        for i, qtype in enumerate(qtypes):
            answers = self._answers(name, qtype, site, ech, rng)
            tq = t + i * 0.00003
            delay = rng.uniform(0.0004, 0.002) if rng.random() < 0.6 else rng.uniform(0.008, 0.04)
            sport = 49152 + rng.randrange(16384)
            pkts, qlen, rlen = dns_exchange(c.dns_path, rng, tq, name, qtype, answers, delay=delay, sport=sport)
            pending += pkts
            hdr = c.dns_path.ip_hdr_len + 8
            self._record(task, "dns", tq, c.ip, w.RESOLVER, 53, "udp", name, site.service if site else None,
                         "dns", client_port=sport, qtype=_DNS_TYPES.get(qtype, str(qtype)),
                         answers=[a[3] for a in answers if isinstance(a[3], str) and a[1] != 5],
                         cnames=[a[3] for a in answers if a[1] == 5],
                         bytes_up=hdr + qlen, bytes_down=hdr + rlen, packets=2)
        c.cache[name] = t + DNS_TTL
        pending.sort(key=lambda p: p[0])
        task.answered = pending[-1][0]
        yield from pending

    def after_answer(self, task: Task) -> float:
        """When a client connects after its lookup: the answer plus a moment for the browser."""
        return task.answered + task.rng.uniform(0.0002, 0.003)

    @staticmethod
    def _answers(name: str, qtype: int, site: Site | None, ech: bool,
                 rng: random.Random) -> list[tuple[str, int, int, str | bytes]]:
        if site is None:
            return []
        ttl = rng.choice((60, 120, 300, 3600))
        chain = [name, *site.cname]
        out: list[tuple[str, int, int, str | bytes]] = [(chain[i], 5, ttl, chain[i + 1]) for i in range(len(chain) - 1)]
        if qtype == 65:
            rdata = b.https_rdata(ech=rng.randbytes(68) if ech else b"")
            return out + [(chain[-1], 65, ttl, rdata)]
        addrs = w.site_addresses(site, v6=qtype == 28)
        return out + [(chain[-1], qtype, ttl, a) for a in addrs]

    def _needs_lookup(self, c: Client, name: str, t: float) -> bool:
        return c.cache.get(name, 0.0) < t

    # -- connections -------------------------------------------------------------

    def _server_path(self, c: Client, server: str, rng: random.Random, *, v6: bool = False) -> Path:
        return Path(b.ip_bytes(c.ip6 if v6 else c.ip), b.ip_bytes(server), server_ttl=rng.choice((52, 54, 57, 116)),
                    ip_id=[rng.randrange(65536), rng.randrange(65536)])

    def _turns(self, rng: random.Random, kind: str) -> list[Turn]:
        """Request/response turns (up bytes, down bytes, streamed, think time before) for a site kind."""
        cap = self.max_flow
        if kind == "chat":
            n = rng.choice((1, 1, 2, 2, 3, 4))
            return [(_lognorm(rng, 3500, 0.9, cap), _lognorm(rng, 16000, 0.8, cap), True,
                     0.0 if i == 0 else min(60.0, rng.lognormvariate(math.log(8), 0.8))) for i in range(n)]
        if kind == "api":
            n = rng.choice((1, 1, 2, 3))
            return [(_lognorm(rng, 6000, 1.1, cap), _lognorm(rng, 4000, 1.0, cap), rng.random() < 0.4,
                     0.0 if i == 0 else rng.uniform(0.5, 20)) for i in range(n)]
        if kind == "sync":
            return [(_lognorm(rng, 600, 0.6, cap), _lognorm(rng, 900, 0.6, cap), False, rng.uniform(0.2, 6.0) if i else 0.0)
                    for i in range(rng.randint(3, 10))]
        if kind == "mail":
            return [(_lognorm(rng, 1800, 0.7, cap), _lognorm(rng, 30000, 1.3, cap), False, rng.uniform(0, 15) if i else 0.0)
                    for i in range(rng.randint(1, 3))]
        if kind == "cdn":
            return [(_lognorm(rng, 900, 0.4, cap), _lognorm(rng, 80000, 1.5, cap), False, 0.0)]
        return [(_lognorm(rng, 1500, 0.7, cap), _lognorm(rng, 45000, 1.6, cap), False, rng.uniform(0, 10) if i else 0.0)
                for i in range(rng.randint(1, 3))]

    def visit(self, task: Task) -> Iterator[Packet]:
        """A browser or script visit: DNS if not cached, then TLS or QUIC (or the proxy)."""
        c, site, rng = task.client, task.site, task.rng
        assert site is not None
        if c.proxy:
            yield from self.proxied(task)
            return
        t = task.start
        v6 = c.v6 and bool(w.PROVIDERS[site.provider][1])
        if self._needs_lookup(c, site.host, t):
            yield from self.lookup(task, t, site.host, (1, 28) if v6 else (1,))
            t = self.after_answer(task)
        server = w.site_addresses(site, v6=v6)[rng.randrange(2)]
        profile = c.profile if site.kind != "api" or not c.developer else rng.choice(("curl", "python"))
        use_quic = site.quic and c.profile == "chrome" and profile == "chrome" and rng.random() < 0.9
        if use_quic:
            version = task.rng.choices((VERSION_1, VERSION_2, DRAFT_29), (0.96, 0.02, 0.02))[0]
            yield from self.quic(task, t, server, site.host, version, v6=v6)
        else:
            yield from self.tls(task, t, server, site.host, profile, v6=v6)

    def tls(self, task: Task, t: float, server: str, host: str | None, profile: str, *, v6: bool = False,
            port: int = 443, sni: str | None = "", ech: bool = False, evidence: str = "tls-sni",
            turns: list[Turn] | None = None, kind: str = "flow",
            service: str | None = "", ack_every: int = 2) -> Iterator[Packet]:
        """One TLS-over-TCP flow to server:port. sni "" = the host itself; ech: outer SNI is the
        public name and an ECH extension is sent."""
        c, rng = task.client, task.rng
        site = w.SITES_BY_HOST.get(host or "")
        if service == "":
            service = site.service if site else None
        sni = host if sni == "" else sni
        path = self._server_path(c, server, rng, v6=v6)
        conv = TcpConversation(path, c.next_port(), port, t0=t, rtt=self.rtt(rng), rng=rng, ack_every=ack_every)
        rec = self._record(task, kind, t, c.ip6 if v6 else c.ip, server, port, "tcp", host, service,
                           evidence, client_port=conv.sport, sni=sni, profile=profile)
        hello = b.client_hello(profile, rng, sni, ech=True if ech else None)
        yield from conv.handshake()
        yield from self._session(conv, hello, rng, turns or self._turns(rng, site.kind if site else "web"))
        self._count(rec, conv)

    def _session(self, conv: TcpConversation, hello: bytes, rng: random.Random, turns: list[Turn]) -> Iterator[Packet]:
        yield from tls_session(conv, hello, rng, turns, idle=rng.uniform(0.5, 20.0), rst=rng.random() < 0.15)

    def quic(self, task: Task, t: float, server: str, host: str, version: int, *, v6: bool = False,
             zero_rtt: int = 0) -> Iterator[Packet]:
        """One QUIC flow (HTTP/3) to server:443 with the chosen version."""
        c, rng = task.client, task.rng
        site = w.SITES_BY_HOST.get(host)
        path = self._server_path(c, server, rng, v6=v6)
        conv = QuicConversation(path, c.next_port(), 443, version=version, t0=t, rtt=self.rtt(rng), rng=rng)
        tp = b.quic_transport_parameters(conv.scid, rng, version)
        hello = b.client_hello("chrome", rng, host, quic_params=tp, psk=zero_rtt > 0)
        vname = {VERSION_1: "v1", VERSION_2: "v2", DRAFT_29: "draft-29"}.get(version, hex(version))
        rec = self._record(task, "flow", t, c.ip6 if v6 else c.ip, server, 443, "quic", host,
                           site.service if site else None, "quic-sni", client_port=conv.sport, sni=host,
                           profile="chrome", quic_version=vname)
        yield from quic_session(conv, hello, self._turns(rng, site.kind if site else "web"), zero_rtt=zero_rtt,
                                idle=rng.uniform(0.5, 20.0))
        self._count(rec, conv)

    def proxied(self, task: Task, *, host: str | None = None) -> Iterator[Packet]:
        """HTTPS through the explicit proxy: CONNECT host:443, 200, then TLS inside the tunnel."""
        c, rng = task.client, task.rng
        site = w.SITES_BY_HOST[host] if host else task.site
        assert site is not None
        path = Path(b.ip_bytes(c.ip), self.proxy, server_mac=b.mac_bytes("00:1b:21:0a:00:08"), server_ttl=64,
                    ip_id=[rng.randrange(65536), rng.randrange(65536)])
        conv = TcpConversation(path, c.next_port(), w.PROXY_PORT, t0=task.start, rtt=rng.uniform(0.0002, 0.001),
                               rng=rng)
        rec = self._record(task, "flow", task.start, c.ip, w.PROXY, w.PROXY_PORT, "tcp", site.host, site.service,
                           "http-connect", client_port=conv.sport, sni=site.host, profile=c.profile, via_proxy=True)
        ua = b.UA_FIREFOX if c.browser == "firefox" else b.UA_EDGE if c.browser == "edge" else b.UA_CHROME
        yield from conv.handshake()
        yield from conv.send(True, b.http_connect(site.host, user_agent=ua))
        # The proxy resolves and connects upstream before it answers.
        yield from conv.send(False, b.CONNECT_ESTABLISHED, gap=self.rtt(rng) * 2 + rng.uniform(0.002, 0.03))
        hello = b.client_hello(c.profile, rng, site.host)
        yield from self._session(conv, hello, rng, self._turns(rng, site.kind))
        self._count(rec, conv)

    def http(self, task: Task, *, host: str, target: str, status: tuple[int, str], body: int,
             via_proxy: bool = False) -> Iterator[Packet]:
        """A plain HTTP/1.1 GET (direct after DNS, or absolute-form through the proxy)."""
        c, rng = task.client, task.rng
        site = w.SITES_BY_HOST[host]
        t = task.start
        if via_proxy:  # absolute-form request target (RFC 9112 §3.2.2)
            server, port, req_target = w.PROXY, w.PROXY_PORT, f"http://{host}{target}"
        else:
            if self._needs_lookup(c, host, t):
                yield from self.lookup(task, t, host, site=site)
                t = self.after_answer(task)
            server, port, req_target = w.site_addresses(site)[0], 80, target
        path = self._server_path(c, server, rng)
        conv = TcpConversation(path, c.next_port(), port, t0=t, rtt=self.rtt(rng), rng=rng)
        rec = self._record(task, "flow", t, c.ip, server, port, "tcp", host, site.service, "http-host",
                           client_port=conv.sport, via_proxy=via_proxy)
        yield from conv.handshake()
        yield from conv.send(True, b.http_request("GET", req_target, host, user_agent=b.UA_EDGE,
                                                   headers=(("Accept", "*/*"), ("Connection", "close"))))
        head = b.http_response(status[0], status[1], body, headers=(("Location", f"https://{host}/"),)
                               if status[0] in (301, 302) else ())
        yield from conv.send(False, head + b"x" * body)
        yield from conv.close(from_client=False)
        self._count(rec, conv)

    # -- special cases -------------------------------------------------------------

    def large_upload(self, task: Task, size: int) -> Iterator[Packet]:
        """A client pastes a large case file into ChatGPT: one TLS flow with ~size bytes up."""
        site = w.SITES_BY_HOST["chatgpt.com"]
        yield from self.lookup(task, task.start, site.host)
        server = w.site_addresses(site)[0]
        turns = [(size, 9000, True, 0.0), (2500, 14000, True, 12.0)]
        # A server with receive offload acknowledges aggregated segments, ~every 16th.
        yield from self.tls(task, self.after_answer(task), server, site.host, task.client.profile, turns=turns,
                            ack_every=16)

    def ech_flow(self, task: Task, host: str, *, evidence: str = "dns-cache") -> Iterator[Packet]:
        """HTTPS + A lookup (the HTTPS record carries an ECHConfig), then TLS whose outer SNI is
        the provider's public name: the flow's real name is only in the earlier DNS answer."""
        site = w.SITES_BY_HOST[host]
        yield from self.lookup(task, task.start, host, (65, 1), ech=True)
        server = w.site_addresses(site)[task.rng.randrange(2)]
        yield from self.tls(task, self.after_answer(task), server, host, "chrome", sni=w.ECH_PUBLIC_NAME, ech=True,
                            evidence=evidence)

    def no_sni_flow(self, task: Task, host: str) -> Iterator[Packet]:
        """A legacy client resolves a name, then sends a ClientHello without server_name."""
        site = w.SITES_BY_HOST[host]
        yield from self.lookup(task, task.start, host, site=site)
        server = w.site_addresses(site)[0]
        yield from self.tls(task, self.after_answer(task), server, host, "python", sni=None, evidence="dns-cache")

    def encrypted_dns(self, task: Task, resolver: str) -> Iterator[Packet]:
        """Chrome's secure DNS (DoH to dns.google) or a DoT stub (1.1.1.1:853)."""
        addr, port, sni = w.ENCRYPTED_DNS[resolver]
        t = task.start
        if port == 443:
            yield from self.lookup(task, t, sni)
            t = self.after_answer(task)
        turns = [(_lognorm(task.rng, 300, 0.3), _lognorm(task.rng, 500, 0.3), False, task.rng.uniform(0, 3) if i else 0)
                 for i in range(task.rng.randint(4, 12))]
        yield from self.tls(task, t, addr, sni, "chrome" if port == 443 else "curl", port=port, turns=turns,
                            kind="encrypted-dns", service=resolver)

    def quic_version_flow(self, task: Task, host: str, version: int, *, zero_rtt: int = 0) -> Iterator[Packet]:
        """A QUIC flow of a chosen version (v2, draft-29) after a lookup."""
        site = w.SITES_BY_HOST[host]
        yield from self.lookup(task, task.start, host)
        yield from self.quic(task, self.after_answer(task), w.site_addresses(site)[0], host, version,
                             zero_rtt=zero_rtt)


# ---------------------------------------------------------------------------
# Scheduling and writing
# ---------------------------------------------------------------------------


def _specials(office: Office, *, large_upload: int) -> list[tuple[float, Callable[[Task], Iterator[Packet]], str, Callable[[Client], bool], tuple[str, ...]]]:
    """The cases every office capture contains once: (fraction of duration, runner, ...)."""
    o = office
    def browser(c: Client) -> bool:
        return not c.proxy and c.department != "Gastennetwerk"
    specials = [
        (0.05, lambda t: o.encrypted_dns(t, "google_public_dns"), "doh", lambda c: c.profile == "chrome" and browser(c), ("doh",)),
        (0.08, lambda t: o.http(t, host="www.msftconnecttest.com", target="/connecttest.txt", status=(200, "OK"), body=22),
         "http", browser, ("plain-http",)),
        (0.12, lambda t: o.ech_flow(t, "www.perplexity.ai"), "ech", lambda c: c.profile == "chrome" and browser(c), ("ech",)),
        (0.15, lambda t: o.proxied(t, host="huggingface.co"), "connect", lambda c: c.proxy, ("proxy",)),
        (0.18, lambda t: o.quic_version_flow(t, "gemini.google.com", VERSION_2), "quic-v2",
         lambda c: c.profile == "chrome" and browser(c), ("quic-v2",)),
        (0.22, lambda t: o.quic_version_flow(t, "notebooklm.google.com", DRAFT_29), "quic-draft29",
         lambda c: c.profile == "chrome" and browser(c), ("quic-draft-29",)),
        (0.25, lambda t: o.proxied(t, host="claude.ai"), "connect", lambda c: c.proxy, ("proxy",)),
        (0.30, lambda t: o.encrypted_dns(t, "cloudflare_dns"), "dot", lambda c: "ICT" in c.department and not c.proxy, ("dot",)),
        (0.33, lambda t: o.no_sni_flow(t, "api.deepl.com"),
         "no-sni", browser, ("no-sni",)),
        (0.36, lambda t: o.http(t, host="www.deepl.com", target="/translator", status=(301, "Moved Permanently"), body=0),
         "http", browser, ("plain-http",)),
        (0.40, lambda t: o.ech_flow(t, "crypto.cloudflare.com"), "ech", lambda c: c.profile == "chrome" and browser(c), ("ech",)),
        (0.45, lambda t: o.quic_version_flow(t, "www.google.com", DRAFT_29), "quic-draft29",
         lambda c: c.profile == "chrome" and browser(c), ("quic-draft-29",)),
    ]
    if large_upload:
        specials.append((0.20, lambda t: o.large_upload(t, large_upload), "upload",
                         lambda c: c.department == "Sociaal Domein" and browser(c), ("large-upload",)))
    # A tour of every AI service, so each appears in any capture, and the IPv6 clients' flows.
    tour = list(w.AI) + list(w.DEVELOPER_AI)
    for i, site in enumerate(tour):
        dev = site in w.DEVELOPER_AI
        specials.append((0.5 + 0.45 * i / len(tour), o.visit, site.host,
                         (lambda c: c.developer) if dev else (lambda c: browser(c) or c.proxy), ("tour",)))
    for i, host in enumerate(("chatgpt.com", "www.google.com", "copilot.microsoft.com")):
        specials.append((0.3 + 0.2 * i, o.visit, host, lambda c: c.v6, ("ipv6",)))
    return specials


def _schedule(office: Office, rng: random.Random, *, rate_per_s: float, large_upload: int,
              specials: bool) -> Iterator[Task]:
    """Tasks in start order: a Poisson stream of ordinary/AI visits merged with the specials."""
    fixed: list[Task] = []
    if specials:
        for i, (frac, run, host, want, tags) in enumerate(_specials(office, large_upload=large_upload)):
            trng = random.Random(f"special-{office.seed}-{i}")
            has_v6 = any(c.v6 for c in office.clients)
            if "ipv6" in tags and not has_v6:
                continue
            client = office.pick_client(trng, want)
            site = w.SITES_BY_HOST.get(host)
            fixed.append(Task(office.start + frac * office.duration, -1 - i, client, run, trng, site, tags))
        fixed.sort(key=lambda t: (t.start, t.index))

    def poisson() -> Iterator[Task]:
        t = office.start
        n = 0
        ai_sites = [s for s in w.AI]
        ai_w = [s.weight for s in ai_sites]
        dev_sites = list(w.AI) + list(w.DEVELOPER_AI) * 3
        dev_w = [s.weight for s in dev_sites]
        ord_w = [s.weight for s in w.ORDINARY]
        while True:
            t += rng.expovariate(rate_per_s) if rate_per_s > 0 else math.inf
            if t >= office.start + office.duration:
                return
            client = rng.choice(office.clients)
            if rng.random() < office.ai_share:
                site = rng.choices(dev_sites, dev_w)[0] if client.developer else rng.choices(ai_sites, ai_w)[0]
            else:
                site = rng.choices(w.ORDINARY, ord_w)[0]
                if site.host == "crypto.cloudflare.com":
                    site = w.ORDINARY[0]
            n += 1
            yield Task(t, n, client, office.visit, random.Random(office.seed * 1_000_003 + n), site)

    yield from heapq.merge(fixed, poisson(), key=lambda t: (t.start, t.index))


def _merge(tasks: Iterator[Task], done: Callable[[Task], None]) -> Iterator[Packet]:
    """Interleave the packets of all tasks in timestamp order (each task's own stream is ordered)."""
    heap: list[tuple[float, int, Packet, Iterator[Packet], Task]] = []
    seq = 0
    nxt = next(tasks, None)
    while heap or nxt is not None:
        if nxt is not None and (not heap or nxt.start <= heap[0][0]):
            gen = nxt.run(nxt)
            first = next(gen, None)
            if first is None:
                done(nxt)
            else:
                heapq.heappush(heap, (first[0], seq, first, gen, nxt))
                seq += 1
            nxt = next(tasks, None)
            continue
        _, _, pkt, gen, task = heap[0]
        yield pkt
        following = next(gen, None)
        if following is None:
            heapq.heappop(heap)
            done(task)
        else:
            heapq.heapreplace(heap, (following[0], seq, following, gen, task))
            seq += 1


def _open_writer(path: str | FsPath | BinaryIO, linktype: int = 1) -> Any:
    from detector.capture.pcapfile import PcapWriter

    return PcapWriter(path, linktype=linktype, nanosecond=False)


def generate_office(path: str | FsPath | BinaryIO, *, clients: int = 60, duration_s: float = 300.0, seed: int = 1,
                    flows_per_client_per_minute: float = 1.0, ai_share: float = 0.3, start: float = SAMPLE_START,
                    truth: str | FsPath | None = None, snap_bulk: int | None = None,
                    large_upload_bytes: int = LARGE_UPLOAD_BYTES, specials: bool = True, proxy_share: float = 0.1,
                    ipv6_clients: int = 1, max_flow_bytes: int = MAX_FLOW_BYTES, max_packets: int | None = None,
                    progress: Callable[[int], None] | None = None) -> Summary:
    """Write an office capture (Ethernet pcap, µs) to `path` and optionally its truth manifest.

    clients: workstations spread over the departments; duration_s: the window in which flows
    start (the last ones finish a little later); flows_per_client_per_minute: the Poisson rate
    of visits; ai_share: the fraction of visits that go to AI services; snap_bulk: when set,
    packets whose payload is opaque bulk data keep only their headers plus this many payload
    bytes (orig_len stays the full length, like a capture with a small snaplen), which keeps
    captures with large transfers small; handshakes and names are always whole.
    truth: a ".json" path gets one JSON document (parameters, clients, records), a ".jsonl"
    path one record per line (constant memory for benchmark sizes). max_packets stops early.
    The same arguments give byte-identical output.
    """
    office = Office(clients=clients, seed=seed, start=start, duration_s=duration_s, ai_share=ai_share,
                    proxy_share=proxy_share, ipv6_clients=ipv6_clients, max_flow_bytes=max_flow_bytes)
    rng = random.Random(f"schedule-{seed}")
    rate = clients * flows_per_client_per_minute / 60.0
    summary = Summary()
    params = {"clients": clients, "duration_s": duration_s, "seed": seed,
              "flows_per_client_per_minute": flows_per_client_per_minute, "ai_share": ai_share,
              "start": _iso(start), "snap_bulk": snap_bulk, "large_upload_bytes": large_upload_bytes,
              "specials": specials, "proxy_share": proxy_share, "ipv6_clients": ipv6_clients,
              "max_flow_bytes": max_flow_bytes}
    records: list[dict[str, Any]] = []
    truth_path = FsPath(truth) if truth is not None else None
    lines = open(truth_path, "w") if truth_path is not None and truth_path.suffix == ".jsonl" else None  # noqa: SIM115
    counter = [0]

    def done(task: Task) -> None:
        for rec in task.records:
            counter[0] += 1
            rec = {"id": counter[0], **rec}
            if rec["kind"] == "dns":
                summary.lookups += 1
            else:
                summary.flows += 1
                if rec["service"]:
                    summary.services[rec["service"]] = summary.services.get(rec["service"], 0) + 1
            if lines is not None:
                lines.write(json.dumps(rec, sort_keys=True) + "\n")
            elif truth_path is not None:
                records.append(rec)

    writer = _open_writer(path)
    try:
        if lines is not None:
            lines.write(json.dumps({"kind": "header", "params": params, "clients": _client_rows(office)}) + "\n")
        last = start
        for ts, frame, cut in _merge(_schedule(office, rng, rate_per_s=rate, large_upload=large_upload_bytes,
                                               specials=specials), done):
            if ts < last:  # every builder keeps its packets in order; this catches one that does not
                raise RuntimeError(f"packet at {ts} after one at {last}")
            last = ts
            if snap_bulk is not None and cut and len(frame) > cut + snap_bulk:
                writer.write(ts, frame[:cut + snap_bulk], len(frame))
                summary.bytes += cut + snap_bulk
            else:
                writer.write(ts, frame)
                summary.bytes += len(frame)
            summary.wire_bytes += len(frame)
            if not summary.packets:
                summary.first_ts = ts
            summary.last_ts = ts
            summary.packets += 1
            if progress is not None and not summary.packets & 0xFFFF:
                progress(summary.packets)
            if max_packets is not None and summary.packets >= max_packets:
                break
    finally:
        writer.close()
        if lines is not None:
            lines.close()
    if truth_path is not None and lines is None:
        records.sort(key=lambda r: (r["ts"], r["id"]))
        doc = {"format": 1, "generator": "detector.synth office", "params": params,
               "first_ts": _iso(summary.first_ts), "last_ts": _iso(summary.last_ts), "packets": summary.packets,
               "flows": summary.flows, "lookups": summary.lookups, "services": dict(sorted(summary.services.items())),
               "clients": _client_rows(office), "records": records}
        truth_path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return summary


def _client_rows(office: Office) -> list[dict[str, Any]]:
    return [{"ip": c.ip, "ip6": c.ip6 if c.v6 else "", "department": c.department, "browser": c.browser,
             "proxy": c.proxy, "developer": c.developer} for c in office.clients]


# The bundled sample must stay under 3 MB with a 25 MB upload in it: bulk payload is cut
# (snap_bulk 0: headers only, original lengths kept) and ordinary transfers are capped.
SAMPLE_PARAMS: dict[str, Any] = {"clients": 60, "duration_s": 180.0, "seed": 20261102,
                                 "flows_per_client_per_minute": 0.6, "ai_share": 0.35, "snap_bulk": 0,
                                 "max_flow_bytes": 200_000}


def generate_sample(pcap: str | FsPath, truth: str | FsPath) -> Summary:
    """The bundled sample (samples/office-sample.pcap + .truth.json): fixed seed and start."""
    return generate_office(pcap, truth=truth, start=SAMPLE_START, **SAMPLE_PARAMS)
