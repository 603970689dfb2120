"""Record types that cross stage boundaries (source → decode → flows → classify → sinks).

Stdlib only. Decoder outputs are slotted dataclasses; the per-packet record
(`L4Packet`) is mutable-free and built once per packet. Addresses travel as packed
bytes (4 or 16) and are turned into text only when an event is made.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# Frames are plain tuples on the hot path: (ts_seconds, linktype, frame_bytes).
Frame = tuple[float, int, bytes]


# ---------------------------------------------------------------------------
# Decoder results that are not records
# ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Anomaly:
    """A malformed input, named stably; counted as shadowai_decode_anomalies_total{kind}."""

    kind: str


@dataclass(slots=True, frozen=True)
class NeedMore:
    """The input is a truncated prefix of a valid message; `needed` bytes in total, or 0 if unknown."""

    needed: int = 0


# ---------------------------------------------------------------------------
# Network layer
# ---------------------------------------------------------------------------

TCP = 6
UDP = 17

# Tag protocol identifiers: 802.1Q C-TAG, 802.1ad S-TAG, legacy QinQ (0x9100, 0x9200).
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))

# Browsers send 1-4 kB HTTP request heads, up to ~8 kB with many cookies; nginx and Apache
# refuse lines over 8 kB by default. 16 KiB passes every head a server would take and bounds
# what one flow may make us buffer before we give up.
MAX_HTTP_HEAD_LEN = 16 * 1024

# Where the IPv4 header starts, per link type (DLT), before any VLAN tag: the link types
# whose frames the fast paths fold (flows.heads).
IPV4_OFFSETS = {1: 14, 113: 16, 276: 20, 12: 0, 14: 0, 101: 0, 0: 4, 108: 4}

# UDP ports carrying plain DNS: the standard one and 8053, where local forwarders
# (dnscrypt-proxy, Pi-hole set-ups) listen. mDNS/LLMNR carry only local names.
DNS_UDP_PORTS = frozenset({53, 8053})

# Public names that ECH providers put in the outer SNI while the real one is encrypted
# (draft-ietf-tls-esni §6.1 `public_name`); a flow showing one of them is hidden.
ECH_PUBLIC_NAMES = frozenset({"cloudflare-ech.com", "encryptedsni.com", "public.ech.defo.ie"})

# TCP flag bits as in the header.
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass(slots=True)
class L4Packet:
    """One TCP or UDP segment after link, tunnel and IP decoding.

    src/dst: packed addresses (4 bytes IPv4, 16 bytes IPv6).
    ip_len: bytes on the wire from the innermost IP header on (what flows count).
    flags/seq: TCP only (0 for UDP).
    payload: transport payload (may be empty).
    """

    ts: float
    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int
    ip_len: int
    flags: int
    seq: int
    payload: bytes


@dataclass(slots=True, frozen=True)
class IPFragment:
    """A non-first or non-last IPv4 fragment, for bounded reassembly in flows."""

    ts: float
    src: bytes
    dst: bytes
    proto: int
    ident: int
    offset: int  # in bytes
    more: bool
    data: bytes  # the fragment's payload (after the IP header)


# ---------------------------------------------------------------------------
# Application-layer records (pure decoder outputs)
# ---------------------------------------------------------------------------


# Parser records that are made per packet are not frozen: a frozen dataclass sets each
# field through object.__setattr__, several times slower, and nothing mutates them.
@dataclass(slots=True)
class DnsAnswer:
    """One resource record from an answer section: A/AAAA (value = address text) or CNAME (value = target)."""

    name: str
    rtype: int
    ttl: int
    value: str


@dataclass(slots=True)
class DnsMessage:
    """A DNS message: lower-cased names without trailing dot."""

    txid: int
    is_response: bool
    rcode: int
    questions: tuple[tuple[str, int], ...]  # (qname, qtype)
    answers: tuple[DnsAnswer, ...] = ()


@dataclass(slots=True, frozen=True)
class ClientHello:
    """The fields of a TLS ClientHello that the sensor uses (RFC 8446 §4.1.2).

    sni: the server_name host, lower-cased, or None.
    alpn: the offered protocols in order.
    versions: supported_versions (or the legacy version when absent), GREASE removed.
    ech: an encrypted_client_hello extension (0xfe0d) was present.
    ja4: the JA4 fingerprint, with "t" for TCP; QUIC callers replace the first letter with "q".
    """

    sni: str | None
    alpn: tuple[str, ...]
    versions: tuple[int, ...]
    ech: bool
    ja4: str


@dataclass(slots=True, frozen=True)
class QuicInitial:
    """The decrypted CRYPTO frames of one QUIC Initial packet (client side)."""

    version: int
    dcid: bytes
    scid: bytes
    crypto: tuple[tuple[int, bytes], ...]  # (offset, data) in packet order
    # The DCID the Initial keys came from: the client's first (or post-Retry) DCID,
    # which later Initials keep after the server picks a new one (RFC 9001 §5.2).
    # Empty when unknown; flows passes it back as parse_quic_initials(key_dcid=...).
    key_dcid: bytes = b""


@dataclass(slots=True, frozen=True)
class HttpRequest:
    """An HTTP/1.x request head.

    host: the Host header (port removed), or for CONNECT the authority's host.
    connect_port: the port of a CONNECT request, else 0.
    """

    method: str
    host: str | None
    target: str
    user_agent: str | None
    connect_port: int = 0


AppRecord = DnsMessage | ClientHello | QuicInitial | HttpRequest


# ---------------------------------------------------------------------------
# Flow-level records (from flows)
# ---------------------------------------------------------------------------


class Evidence(str, enum.Enum):
    """How a name was tied to traffic; the `evidence` field of every event."""

    DNS = "dns"
    TLS_SNI = "tls-sni"
    QUIC_SNI = "quic-sni"
    HTTP_HOST = "http-host"
    HTTP_CONNECT = "http-connect"
    DNS_CACHE = "dns-cache"
    IP_RANGE = "ip-range"


class EndReason(str, enum.Enum):
    """Why a flow record was emitted."""

    IDLE = "idle"
    ACTIVE = "active"
    FIN = "fin"
    EVICTED = "evicted"
    EOF = "eof"


@dataclass(slots=True)
class FlowRecord:
    """A finished (or timed-out) flow, client side first.

    client/server: packed addresses; the client is the side that opened the flow
    (SYN sender, or the first packet's sender towards the lower port / well-known port).
    server_name: the name seen in the flow (SNI/Host/CONNECT), or from the DNS cache.
    evidence: how server_name was obtained, or None when the flow stayed nameless.
    """

    first_ts: float
    last_ts: float
    client: bytes
    server: bytes
    client_port: int
    server_port: int
    proto: int
    bytes_up: int
    bytes_down: int
    packets: int
    reason: EndReason
    server_name: str | None = None
    evidence: Evidence | None = None
    transport: str = "tcp"  # tcp | udp | quic
    alpn: tuple[str, ...] = ()
    ja4: str | None = None
    ech: bool = False  # ECH hid the real name (outer SNI was a provider's public name)
    tls_versions: tuple[int, ...] = ()
    user_agent: str | None = None
    saw_start: bool = True  # the handshake start was seen (False = mid-flow start)
    app: str = ""  # tls | quic | http | dns when the first bytes were recognised


# ---------------------------------------------------------------------------
# Classification and events (classify → sinks)
# ---------------------------------------------------------------------------


class Policy(str, enum.Enum):
    """What the municipality decided about a service."""

    SANCTIONED = "sanctioned"
    TOLERATED = "tolerated"
    UNSANCTIONED = "unsanctioned"
    BLOCKED = "blocked"


class EventKind(str, enum.Enum):
    """What an event describes."""

    FLOW = "flow"  # a TCP/UDP/QUIC flow
    DNS = "dns"  # a DNS lookup
    ENCRYPTED_DNS = "encrypted-dns"  # a flow to a public DoH/DoT resolver
    CANDIDATE = "candidate"  # an AI-looking name that is not in the catalogue


@dataclass(slots=True, frozen=True)
class Match:
    """A hostname's match in the catalogue."""

    service: str
    pattern: str  # the pattern as written in rules/, e.g. "full:api.openai.com"
    kind: str  # "full" | "domain" | "regexp" | "ip-range"


@dataclass(slots=True)
class UsageEvent:
    """One attributed flow or DNS lookup: the record every sink consumes.

    Field names are the jsonl/csv contract of DESIGN.md; `service` is empty for
    unattributed names shown with --all.
    """

    ts: str  # ISO 8601 UTC of the flow start / lookup
    kind: str  # EventKind value
    client: str  # pseudonym (or raw address when enabled)
    department: str
    service: str
    vendor: str
    category: str
    jurisdiction: str
    policy: str
    server_name: str
    server_ip: str
    server_port: int
    transport: str
    evidence: str
    bytes_up: int
    bytes_down: int
    packets: int
    duration: float = 0.0
    ja4: str = ""
    alpn: str = ""
    pattern: str = ""
    sensor: str = ""
    event_id: str = ""


EVENT_FIELDS: tuple[str, ...] = tuple(UsageEvent.__slots__)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Counters (plain ints on the hot path; metrics read them at scrape time)
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class Stats:
    """Plain counters the pipeline increments and the metrics collector reads."""

    packets: int = 0
    bytes: int = 0
    frames_skipped: int = 0  # non-IP or uninteresting link frames
    anomalies: dict[str, int] = field(default_factory=dict)
    flows_total: int = 0
    flows_evicted: int = 0
    flows_named: int = 0  # TLS/QUIC/HTTP flows with a name of their own
    flows_dns_only: int = 0  # attributed through the DNS cache
    flows_blind: dict[str, int] = field(default_factory=dict)  # reason -> count
    reassembly_overflows: int = 0
    dns_cache_evictions: int = 0
    events: int = 0
    files_read: int = 0
    files_failed: int = 0

    def anomaly(self, kind: str) -> None:
        """Count one anomaly by name."""
        self.anomalies[kind] = self.anomalies.get(kind, 0) + 1
