"""The golden traces: one tiny capture per case the sensor must handle, each named for what it
holds, plus the README and MANIFEST.json that say what the sensor should report for each.

`write_golden(directory)` regenerates all of them; the same code gives the same bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from detector.synth import builders as b
from detector.synth import tunnels
from detector.synth import world as w
from detector.synth.office import SAMPLE_START
from detector.synth.path import Packet, Path
from detector.synth.quic import DRAFT_29, VERSION_1, VERSION_2, QuicConversation
from detector.synth.sessions import Turn, dns_exchange, quic_session, tls_session
from detector.synth.tcp import TcpConversation

T0 = SAMPLE_START
CLIENT = "10.20.1.23"  # Sociaal Domein (rules/policy.example.yaml)
CLIENT6 = "2001:db8:90:1::25"  # Bedrijfsvoering en ICT
RTT = 0.018
SMALL: tuple[Turn, ...] = ((900, 4200, False, 0.0),)
LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113


@dataclass(slots=True)
class Trace:
    """One golden capture: file name, what it holds, what the sensor should report."""

    name: str
    description: str
    expect: list[dict[str, Any]]
    build: Callable[[random.Random], list[Packet]]
    pcapng: bool = False
    sll_ports: tuple[int, ...] = field(default=())  # pcapng: client ports whose frames go on the SLL interface

    @property
    def filename(self) -> str:
        """The trace's file name."""
        return self.name + (".pcapng" if self.pcapng else ".pcap")


TRACES: list[Trace] = []


def _expect(name: str | None, service: str | None, evidence: str | None, transport: str, port: int,
            kind: str = "flow") -> dict[str, Any]:
    return {"kind": kind, "name": name, "service": service, "evidence": evidence, "transport": transport,
            "server_port": port}


def _dns_expect(name: str, service: str | None) -> dict[str, Any]:
    return _expect(name, service, "dns", "udp", 53, kind="dns")


def trace(name: str, description: str, expect: list[dict[str, Any]], **kw: Any) -> Callable[
        [Callable[[random.Random], list[Packet]]], Callable[[random.Random], list[Packet]]]:
    """Register a golden trace builder (a function of a seeded Random returning packets)."""
    def register(fn: Callable[[random.Random], list[Packet]]) -> Callable[[random.Random], list[Packet]]:
        TRACES.append(Trace(name, description, expect, fn, **kw))
        return fn
    return register


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _addr(host: str) -> str:
    return w.site_addresses(w.SITES_BY_HOST[host])[0]


def _path(server: str, *, client: str = CLIENT, **kw: Any) -> Path:
    return Path(b.ip_bytes(client), b.ip_bytes(server), **kw)


def _tls(rng: random.Random, path: Path, sni: str | None, *, profile: str = "chrome", t0: float = T0,
         port: int = 443, sport: int = 51000, chunks: Callable[[int], list[tuple[int, int]]] | None = None,
         mss: int = 1460, turns: tuple[Turn, ...] = SMALL, **hello_kw: Any) -> Iterator[Packet]:
    """A complete short TLS flow: handshake, ClientHello (optionally by a segment plan), one turn, FIN."""
    conv = TcpConversation(path, sport, port, t0=t0, rtt=RTT, rng=rng, mss=mss)
    hello = b.client_hello(profile, rng, sni, **hello_kw)
    plan = chunks(len(b.client_hello_record(hello))) if chunks else None
    yield from conv.handshake()
    yield from tls_session(conv, hello, rng, turns, hello_chunks=plan, idle=0.4)


def _quic(rng: random.Random, path: Path, sni: str, version: int, *, t0: float = T0, sport: int = 52000,
          zero_rtt: int = 0, pq: bool = True) -> Iterator[Packet]:
    conv = QuicConversation(path, sport, version=version, t0=t0, rtt=RTT, rng=rng)
    hello = b.client_hello("chrome", rng, sni, quic_params=b.quic_transport_parameters(conv.scid, rng, version),
                           psk=zero_rtt > 0, pq=pq)
    yield from quic_session(conv, hello, SMALL, zero_rtt=zero_rtt, idle=0.4)


def _lookup(rng: random.Random, name: str, qtype: int = 1, *, t: float = T0, ech: bool = False,
            count: int = 2) -> list[Packet]:
    """A UDP lookup from CLIENT to the resolver with the site's CNAME chain and addresses."""
    site = w.SITES_BY_HOST[name]
    chain = [name, *site.cname]
    answers: list[tuple[str, int, int, str | bytes]] = [(chain[i], 5, 300, chain[i + 1]) for i in range(len(chain) - 1)]
    if qtype == 65:
        answers.append((chain[-1], 65, 300, b.https_rdata(ech=rng.randbytes(68) if ech else b"")))
    else:
        answers += [(chain[-1], qtype, 300, a) for a in w.site_addresses(site, count=count)]
    path = _path(w.RESOLVER, server_ttl=64)
    return dns_exchange(path, rng, t, name, qtype, answers, delay=0.0015)[0]


def _proxied(rng: random.Random, host: str) -> Iterator[Packet]:
    conv = TcpConversation(_path(w.PROXY, server_ttl=64), 51500, w.PROXY_PORT, t0=T0, rtt=0.0004, rng=rng)
    yield from conv.handshake()
    yield from conv.send(True, b.http_connect(host))
    yield from conv.send(False, b.CONNECT_ESTABLISHED, gap=0.03)
    yield from tls_session(conv, b.client_hello("chrome", rng, host), rng, SMALL, idle=0.4)


def _tunnelled(rng: random.Random, wrap: Callable[[bytes], bytes], host: str = "www.perplexity.ai") -> list[Packet]:
    return list(_tls(rng, _path(_addr(host), wrap=wrap), host))


# ---------------------------------------------------------------------------
# The traces
# ---------------------------------------------------------------------------

CHATGPT = _expect("chatgpt.com", "openai_chatgpt", "tls-sni", "tcp", 443)
PERPLEXITY = _expect("www.perplexity.ai", "perplexity", "tls-sni", "tcp", 443)
MISTRAL = _expect("chat.mistral.ai", "mistral_lechat", "tls-sni", "tcp", 443)


@trace("firefox-tls-clienthello-one-segment-claude", "Firefox ClientHello (X25519 + P-256 shares) in one TCP segment.",
       [_expect("claude.ai", "anthropic_claude", "tls-sni", "tcp", 443)])
def _one_segment(rng: random.Random) -> list[Packet]:
    return list(_tls(rng, _path(_addr("claude.ai")), "claude.ai", profile="firefox"))


@trace("chrome-tls-split-clienthello-chatgpt",
       "Chrome ClientHello with an X25519MLKEM768 key share (~1.8 kB) spanning 2 TCP segments.", [CHATGPT])
def _split2(rng: random.Random) -> list[Packet]:
    return list(_tls(rng, _path(_addr("chatgpt.com")), "chatgpt.com"))


@trace("chrome-tls-clienthello-5-segments-copilot", "Chrome ClientHello cut into 5 in-order TCP segments.",
       [_expect("copilot.microsoft.com", "ms_copilot_consumer", "tls-sni", "tcp", 443)])
def _split5(rng: random.Random) -> list[Packet]:
    def five(n: int) -> list[tuple[int, int]]:
        step = -(-n // 5)
        return [(i, min(step, n - i)) for i in range(0, n, step)]
    return list(_tls(rng, _path(_addr("copilot.microsoft.com")), "copilot.microsoft.com", chunks=five))


@trace("chrome-tls-out-of-order-retransmit-overlap-deepseek",
       "Chrome ClientHello in 3 segments sent 2nd first, then 1st, the 2nd again (retransmission), then "
       "the 3rd starting 200 bytes inside the 2nd (overlap, same bytes).",
       [_expect("chat.deepseek.com", "deepseek", "tls-sni", "tcp", 443)])
def _reordered(rng: random.Random) -> list[Packet]:
    def plan(n: int) -> list[tuple[int, int]]:
        return [(600, 600), (0, 600), (600, 600), (1000, n - 1000)]
    return list(_tls(rng, _path(_addr("chat.deepseek.com")), "chat.deepseek.com", chunks=plan))


for _version, _label, _host, _service in ((VERSION_1, "v1", "gemini.google.com", "google_gemini"),
                                          (VERSION_2, "v2", "notebooklm.google.com", "google_notebooklm"),
                                          (DRAFT_29, "draft29", "gemini.google.com", "google_gemini")):
    def _quic_trace(rng: random.Random, _v: int = _version, _h: str = _host) -> list[Packet]:
        return list(_quic(rng, _path(_addr(_h)), _h, _v))
    trace(f"chrome-quic-{_label}-crypto-2-initials-{_host.split('.')[0]}",
          f"QUIC {_label} (version {_version:#010x}): a post-quantum ClientHello in CRYPTO frames over 2 client "
          "Initials, cut into pieces and shuffled with PING and PADDING (Chrome's chaos protection).",
          [_expect(_host, _service, "quic-sni", "quic", 443)])(_quic_trace)


@trace("chrome-quic-v1-initial-0rtt-coalesced-chatgpt",
       "QUIC v1 resumption: one datagram holds the Initial (ClientHello with early_data + pre_shared_key) "
       "and a coalesced 0-RTT packet.", [_expect("chatgpt.com", "openai_chatgpt", "quic-sni", "quic", 443)])
def _zero_rtt(rng: random.Random) -> list[Packet]:
    return list(_quic(rng, _path(_addr("chatgpt.com")), "chatgpt.com", VERSION_1, zero_rtt=240, pq=False))


@trace("dns-cname-chain-then-nameless-tls-copilot",
       "DNS A for copilot.microsoft.com answered through a 2-CNAME chain, then a TLS flow without SNI "
       "to the answered address: only the DNS cache names it.",
       [_dns_expect("copilot.microsoft.com", "ms_copilot_consumer"),
        _expect("copilot.microsoft.com", "ms_copilot_consumer", "dns-cache", "tcp", 443)])
def _dns_cache(rng: random.Random) -> list[Packet]:
    return _lookup(rng, "copilot.microsoft.com") + list(
        _tls(rng, _path(_addr("copilot.microsoft.com")), None, profile="python", t0=T0 + 0.05))


@trace("ech-cloudflare-after-dns-chatgpt",
       "DNS HTTPS (with an ECHConfig) and A for chatgpt.com, then Chrome TLS with ECH: outer SNI "
       "cloudflare-ech.com; the real name comes from the DNS answer.",
       [_dns_expect("chatgpt.com", "openai_chatgpt"), _dns_expect("chatgpt.com", "openai_chatgpt"),
        _expect("chatgpt.com", "openai_chatgpt", "dns-cache", "tcp", 443)])
def _ech_dns(rng: random.Random) -> list[Packet]:
    pkts = _lookup(rng, "chatgpt.com", 65, ech=True) + _lookup(rng, "chatgpt.com", 1, t=T0 + 0.0001)
    pkts.sort(key=lambda p: p[0])
    return pkts + list(_tls(rng, _path(_addr("chatgpt.com")), w.ECH_PUBLIC_NAME, t0=T0 + 0.05, ech=True))


@trace("ech-cloudflare-blind",
       "Chrome TLS with ECH (outer SNI cloudflare-ech.com) to a Cloudflare address never seen in DNS: "
       "no AI service can be named.", [])
def _ech_blind(rng: random.Random) -> list[Packet]:
    return list(_tls(rng, _path("104.18.7.77"), w.ECH_PUBLIC_NAME, ech=True))


@trace("proxy-connect-claude", "Explicit proxy 10.10.0.8:8080: CONNECT claude.ai:443, 200, then TLS in the tunnel.",
       [_expect("claude.ai", "anthropic_claude", "http-connect", "tcp", w.PROXY_PORT)])
def _connect(rng: random.Random) -> list[Packet]:
    return list(_proxied(rng, "claude.ai"))


@trace("http-host-plain-deepl", "Plain HTTP/1.1 GET to www.deepl.com on port 80, answered with a redirect.",
       [_expect("www.deepl.com", "deepl", "http-host", "tcp", 80)])
def _http(rng: random.Random) -> list[Packet]:
    conv = TcpConversation(_path(_addr("www.deepl.com")), 51200, 80, t0=T0, rtt=RTT, rng=rng)
    pkts = list(conv.handshake())
    pkts += conv.send(True, b.http_request("GET", "/translator", "www.deepl.com", headers=(("Accept", "*/*"),)))
    pkts += conv.send(False, b.http_response(301, "Moved Permanently", 0,
                                             headers=(("Location", "https://www.deepl.com/translator"),)))
    pkts += conv.close()
    return pkts


@trace("dns-over-tcp-pipelined-split",
       "DNS over TCP to the resolver: two queries (chatgpt.com, claude.ai) in one segment; the answers "
       "come as the first plus the start of the second in one segment and the rest in another.",
       [_dns_expect("chatgpt.com", "openai_chatgpt"), _dns_expect("claude.ai", "anthropic_claude")])
def _dns_tcp(rng: random.Random) -> list[Packet]:
    conv = TcpConversation(_path(w.RESOLVER, server_ttl=64), 51300, 53, t0=T0, rtt=0.0015, rng=rng)
    msgs = []
    for txid, name in ((0x1111, "chatgpt.com"), (0x2222, "claude.ai")):
        addrs = w.site_addresses(w.SITES_BY_HOST[name])
        msgs.append((b.dns_tcp_frame(b.dns_query(txid, name, 1)),
                     b.dns_tcp_frame(b.dns_response(txid, name, 1, [(name, 1, 300, a) for a in addrs]))))
    answers = msgs[0][1] + msgs[1][1]
    cut = len(msgs[0][1]) + 20
    pkts = list(conv.handshake())
    pkts += conv.send(True, msgs[0][0] + msgs[1][0])
    pkts += conv.send(False, answers, chunks=[(0, cut), (cut, len(answers) - cut)], chunk_gap=0.0004)
    pkts += conv.close()
    return pkts


@trace("dns-ipv4-fragmented-response-chatgpt",
       "A DNS answer with 110 A records (EDNS, ~1.8 kB) arriving as two IPv4 fragments.",
       [_dns_expect("chatgpt.com", "openai_chatgpt")])
def _dns_frag(rng: random.Random) -> list[Packet]:
    path = _path(w.RESOLVER, server_ttl=64)
    q = b.dns_query(0x3333, "chatgpt.com", 1)
    r = b.dns_response(0x3333, "chatgpt.com", 1, [("chatgpt.com", 1, 60, f"104.18.{i // 200}.{1 + i % 200}")
                                                  for i in range(110)])
    src, dst = path.ends(False)
    datagram = b.udp(src, dst, 53, 53000, r)
    pkts = [(T0, path.udp(True, 53000, 53, q), 0)]
    for i, frag in enumerate(b.ipv4_fragments(src, dst, b.UDP_PROTO, datagram, mtu=1500, ident=0x4242)):
        pkts.append((T0 + 0.0021 + i * 0.00001, path.frame_ip(False, frag), 0))
    return pkts


@trace("dns-ipv4-fragmented-answer-then-ech-chatgpt",
       "The fragmented chatgpt.com answer above, then Chrome TLS with ECH to one of its addresses: only "
       "the reassembled answer names the flow.",
       [_dns_expect("chatgpt.com", "openai_chatgpt"), _expect("chatgpt.com", "openai_chatgpt", "dns-cache", "tcp", 443)])
def _dns_frag_ech(rng: random.Random) -> list[Packet]:
    return _dns_frag(rng) + list(_tls(rng, _path("104.18.0.77"), w.ECH_PUBLIC_NAME, t0=T0 + 0.05, ech=True))


@trace("shared-address-gemini-and-search",
       "One Google front-end address serves gemini.google.com and, on a second connection from the same "
       "client, www.google.com with a larger download: only the Gemini flow is AI.",
       [_expect("gemini.google.com", "google_gemini", "tls-sni", "tcp", 443)])
def _shared_address(rng: random.Random) -> list[Packet]:
    return _two_on_one_address(rng, _path(_addr("gemini.google.com")))


@trace("shared-address-gemini-and-search-vlan", "The same two connections on 802.1Q VLAN 120.",
       [_expect("gemini.google.com", "google_gemini", "tls-sni", "tcp", 443)])
def _shared_address_vlan(rng: random.Random) -> list[Packet]:
    return _two_on_one_address(rng, _path(_addr("gemini.google.com"), wrap=tunnels.Vlan(120)))


def _two_on_one_address(rng: random.Random, path: Path) -> list[Packet]:
    ai = list(_tls(rng, path, "gemini.google.com"))
    other = list(_tls(rng, path, "www.google.com", sport=51001, t0=T0 + 0.02, turns=((600, 60000, False, 0.0),)))
    return sorted(ai + other, key=lambda p: p[0])


@trace("vlan-8021q-tls-mistral", "TLS to chat.mistral.ai on 802.1Q VLAN 120.", [MISTRAL])
def _vlan(rng: random.Random) -> list[Packet]:
    return list(_tls(rng, _path(_addr("chat.mistral.ai"), wrap=tunnels.Vlan(120)), "chat.mistral.ai"))


@trace("qinq-8021ad-tls-mistral", "TLS to chat.mistral.ai with QinQ tags (802.1ad S-VLAN 200, C-VLAN 120).",
       [MISTRAL])
def _qinq(rng: random.Random) -> list[Packet]:
    return list(_tls(rng, _path(_addr("chat.mistral.ai"), wrap=tunnels.Vlan(200, 120)), "chat.mistral.ai"))


for _tname, _cls, _what in (("gre", tunnels.Gre, "plain GRE (IP in GRE)"),
                            ("erspan2", tunnels.Erspan2, "ERSPAN type II (GRE 0x88be)"),
                            ("erspan3", tunnels.Erspan3, "ERSPAN type III (GRE 0x22eb)"),
                            ("vxlan", tunnels.Vxlan, "VXLAN (UDP 4789, VNI 5001)"),
                            ("geneve", tunnels.Geneve, "GENEVE (UDP 6081, VNI 7001)")):
    def _tunnel_trace(rng: random.Random, _c: type = _cls) -> list[Packet]:
        return _tunnelled(rng, _c())
    trace(f"{_tname}-tls-perplexity",
          f"TLS to www.perplexity.ai mirrored through {_what} from 192.0.2.1 to the sensor at 192.0.2.100.",
          [PERPLEXITY])(_tunnel_trace)


@trace("pcapng-ether-and-sll-chatgpt-claude",
       "pcapng with two interfaces: Ethernet (TLS to chatgpt.com) and Linux cooked SLL (TLS to claude.ai).",
       [CHATGPT, _expect("claude.ai", "anthropic_claude", "tls-sni", "tcp", 443)], pcapng=True, sll_ports=(51600,))
def _pcapng(rng: random.Random) -> list[Packet]:
    pkts = list(_tls(rng, _path(_addr("chatgpt.com")), "chatgpt.com"))
    pkts += _tls(rng, _path(_addr("claude.ai")), "claude.ai", t0=T0 + 0.01, sport=51600)
    pkts.sort(key=lambda p: p[0])
    return pkts


@trace("doh-dns-google", "Chrome secure DNS: DNS A for dns.google, then TLS (ALPN h2) to 8.8.8.8:443.",
       [_dns_expect("dns.google", "google_public_dns"),
        _expect("dns.google", "google_public_dns", "tls-sni", "tcp", 443, kind="encrypted-dns")])
def _doh(rng: random.Random) -> list[Packet]:
    return _lookup(rng, "dns.google") + list(_tls(rng, _path("8.8.8.8"), "dns.google", t0=T0 + 0.03))


@trace("dot-cloudflare-853-no-sni", "DNS over TLS to 1.1.1.1:853 from a stub that sends no SNI "
       "(only the resolver address and port tell).",
       [_expect(None, "cloudflare_dns", "ip-range", "tcp", 853, kind="encrypted-dns")])
def _dot(rng: random.Random) -> list[Packet]:
    turns = ((120, 280, False, 0.0), (110, 300, False, 0.5))
    return list(_tls(rng, _path("1.1.1.1"), None, profile="curl", port=853, turns=turns, alpn=("dot",)))


@trace("ipv6-extension-headers-tls-chatgpt",
       "IPv6 TLS to chatgpt.com with Hop-by-Hop and Destination Options headers before TCP.",
       [_expect("chatgpt.com", "openai_chatgpt", "tls-sni", "tcp", 443)])
def _ipv6_ext(rng: random.Random) -> list[Packet]:
    server = w.site_addresses(w.SITES_BY_HOST["chatgpt.com"], v6=True)[0]
    ext = ((0, b""), (60, b""))  # Hop-by-Hop, Destination Options (PadN only)
    return list(_tls(rng, _path(server, client=CLIENT6, v6_ext=ext), "chatgpt.com"))


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _seed(name: str) -> random.Random:
    return random.Random(f"golden-{name}")


def _sll(frame: bytes) -> bytes:
    """Re-frame an Ethernet frame as Linux cooked capture (outgoing when the source is ours)."""
    return b.linux_sll(4, frame[6:12], int.from_bytes(frame[12:14], "big"), frame[14:])


def write_trace(t: Trace, directory: FsPath) -> FsPath:
    """Write one trace into `directory`; returns its path."""
    from detector.capture.pcapfile import PcapNgWriter, PcapWriter

    pkts = t.build(_seed(t.name))
    out = directory / t.filename
    if t.pcapng:
        with PcapNgWriter(out) as wr:
            eth = wr.add_interface(LINKTYPE_ETHERNET)
            sll = wr.add_interface(LINKTYPE_LINUX_SLL)
            for ts, frame, _ in pkts:
                ports = (int.from_bytes(frame[34:36], "big"), int.from_bytes(frame[36:38], "big"))
                if t.sll_ports and set(ports) & set(t.sll_ports):
                    wr.write(ts, _sll(frame), sll)
                else:
                    wr.write(ts, frame, eth)
    else:
        with PcapWriter(out, linktype=LINKTYPE_ETHERNET) as wr:
            for ts, frame, _ in pkts:
                wr.write(ts, frame)
    return out


def manifest() -> dict[str, Any]:
    """What each trace holds and what the sensor should report for it."""
    return {"format": 1, "generator": "python -m detector.synth golden",
            "traces": {t.filename: {"description": t.description, "expect": t.expect} for t in TRACES}}


def readme() -> str:
    """The traces' README (generated, so it always lists what is there)."""
    lines = [
        "# Golden traces",
        "",
        "Tiny captures, one per case the sensor must handle, written by the project's own generator",
        "(`detector/synth`). Do not edit them by hand: regenerate with",
        "",
        "    python -m detector.synth golden tests/golden/traces",
        "",
        "which rewrites every file byte for byte (fixed seeds, fixed timestamps from",
        "2026-11-02 09:00:00 UTC). Client 10.20.1.23 (Sociaal Domein) unless stated, resolver",
        "10.10.0.53, proxy 10.10.0.8:8080. `MANIFEST.json` lists for each trace the events the",
        "sensor should emit (name, catalogue service, evidence, transport, server port);",
        "an empty list means: no AI service may be reported.",
        "",
        "| file | what it holds | expected |",
        "| --- | --- | --- |",
    ]
    for t in TRACES:
        exp = "; ".join(f"{e['kind']} {e['name'] or '-'} → {e['service'] or '-'} ({e['evidence'] or 'address+port'})"
                        for e in t.expect) or "nothing"
        lines.append(f"| `{t.filename}` | {t.description} | {exp} |")
    return "\n".join(lines) + "\n"


def write_golden(directory: str | FsPath) -> list[FsPath]:
    """Write every golden trace, README.md and MANIFEST.json into `directory`."""
    d = FsPath(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = [write_trace(t, d) for t in TRACES]
    (d / "MANIFEST.json").write_text(json.dumps(manifest(), indent=1) + "\n")
    (d / "README.md").write_text(readme())
    return out
