"""Flow records and DNS lookups -> UsageEvents: service, policy, department, pseudonym.

A `Classifier` is immutable once built (its memos aside): on SIGHUP the daemon builds a new
one from freshly loaded rules and swaps the reference, so in-flight work finishes on the old
rules and no lock is needed.

Conventions of the events it makes (the jsonl/csv contract of DESIGN.md):
- `ts`: ISO 8601 in UTC with microseconds and a "Z" suffix, e.g. "2025-03-01T09:15:02.250000Z".
- `event_id`: 32 hex digits of BLAKE2b over (client address, server address, client port,
  server port, protocol, start timestamp, kind[, question name]); the same capture analysed twice
  gives the same ids, and the sensor name is left out so two sensors seeing one flow agree.
- unattributed events (only with include_unmatched / include_candidates) have empty service,
  vendor, category, jurisdiction and policy; their kind is "candidate" when the name looks like
  an AI service (candidates.py), else "flow" / "dns".
- encrypted-DNS events: service = the resolver id, category "encrypted_dns", policy from the
  policy file like any service.
"""

from __future__ import annotations

import functools
import hashlib
import math
import socket
import struct
import time
from typing import Any

from detector.classify.candidates import candidate_reason
from detector.classify.catalogue import Catalogue
from detector.classify.matcher import MAX_NAME_LEN
from detector.classify.policy import PolicyConfig
from detector.classify.pseudonym import Pseudonymiser
from detector.model import TCP, UDP, DnsMessage, EventKind, Evidence, FlowRecord, Match, UsageEvent

# Names seen but not in the catalogue recur just like matched ones; same bound as the matcher's.
CANDIDATE_CACHE_SIZE = 8192
# datetime cannot represent years past 9999; pcapng allows 64-bit timestamps that far out.
_MAX_TS = 253402300799.0

_UNATTRIBUTED = ("", "", "", "")  # vendor, category, jurisdiction, policy
_TRANSPORT_PROTO = {"udp": UDP, "tcp": TCP, "quic": UDP}
_PORTS = struct.Struct("!HHB")
_LENGTHS = struct.Struct("!BB")


class Classifier:
    """Attributes flows and DNS lookups to catalogue services under one policy."""

    __slots__ = (
        "_attribution",
        "_candidate",
        "_matcher",
        "_pseudonymiser",
        "_raw_clients",
        "_resolver_ports",
        "_resolvers",
        "_sensor",
        "_steps",
        "_steps_resolver_port",
        "catalogue",
        "policy",
    )

    def __init__(
        self,
        catalogue: Catalogue,
        policy: PolicyConfig,
        pseudonymiser: Pseudonymiser,
        raw_clients: bool = False,
        sensor: str = "",
    ) -> None:
        self.catalogue = catalogue
        self.policy = policy
        self._pseudonymiser = pseudonymiser
        self._raw_clients = raw_clients
        self._sensor = sensor
        self._matcher = catalogue.matcher
        self._resolvers = catalogue.resolver_matcher
        self._resolver_ports = catalogue.resolver_ports
        # Flow attribution: by name then address, catalogue first, resolvers only on their ports.
        self._steps = ((self._matcher, EventKind.FLOW),)
        self._steps_resolver_port = (*self._steps, (self._resolvers, EventKind.ENCRYPTED_DNS))
        # Per owner id, what every event about it carries: vendor, category, jurisdiction, policy.
        owners = [*catalogue.services.values(), *catalogue.resolvers.values()]
        self._attribution = {
            o.id: (o.vendor, o.category, o.jurisdiction, policy.policy_for(o.id).value) for o in owners
        }
        self._candidate = functools.lru_cache(maxsize=CANDIDATE_CACHE_SIZE)(_is_candidate_name)

    # -- flows ----------------------------------------------------------------------------------

    def classify_flow(
        self, rec: FlowRecord, include_unmatched: bool = False, include_candidates: bool = False
    ) -> UsageEvent | None:
        """The event for a finished flow, or None if it reached no catalogue service or resolver.

        Order: the flow's server_name against the catalogue; else the server address against
        catalogue ip_ranges (evidence "ip-range"); else, on a resolver port, the name or address
        against encrypted_dns.yaml (kind "encrypted-dns"). include_unmatched returns every other
        flow too; include_candidates only those whose name looks like AI.
        """
        name = rec.server_name or ""
        match, kind, by_address = self._attribute_flow(name, rec.server, rec.server_port)
        if match is None:
            kind = self._unmatched_kind(name, EventKind.FLOW, include_unmatched, include_candidates)
            if kind is None:
                return None
        if by_address:
            evidence = Evidence.IP_RANGE.value
        else:
            evidence = rec.evidence.value if rec.evidence is not None else ""
        event_id = _event_id(
            rec.client, rec.server, rec.client_port, rec.server_port, rec.proto, rec.first_ts, kind.value
        )
        return self._event(
            match,
            kind,
            rec.first_ts,
            rec.client,
            rec.server,
            event_id,
            server_name=name,
            server_port=rec.server_port,
            transport=rec.transport,
            evidence=evidence,
            bytes_up=rec.bytes_up,
            bytes_down=rec.bytes_down,
            packets=rec.packets,
            duration=max(0.0, rec.last_ts - rec.first_ts),
            ja4=rec.ja4 or "",
            alpn=",".join(rec.alpn),
        )

    def _attribute_flow(
        self, name: str, server: bytes, server_port: int
    ) -> tuple[Match | None, EventKind, bool]:
        """(match, kind, matched by address) for a flow, in the order classify_flow documents."""
        steps = self._steps_resolver_port if server_port in self._resolver_ports else self._steps
        for matcher, kind in steps:
            match = matcher.match(name) if name else None
            if match is not None:
                return match, kind, False
            match = matcher.match_ip(server)
            if match is not None:
                return match, kind, True
        return None, EventKind.FLOW, False

    # -- DNS ------------------------------------------------------------------------------------

    def classify_dns(
        self,
        ts: float,
        client: bytes,
        server: bytes,
        server_port: int,
        msg: DnsMessage,
        wire_len: int,
        include_unmatched: bool = False,
        *,
        transport: str = "udp",
        client_port: int = 0,
        include_candidates: bool = False,
    ) -> list[UsageEvent]:
        """One event per distinct question name that matches the catalogue (evidence "dns").

        `client` is the side that asked. Pass queries; pass a response only when its query was not
        seen (one-sided capture), else each lookup is counted twice. A query's wire_len counts as
        bytes_up, a response's as bytes_down. Resolver host names (dns.google) are not reported
        here: only flows to resolvers are encrypted DNS.
        """
        events: list[UsageEvent] = []
        seen: list[str] = []
        proto = _TRANSPORT_PROTO.get(transport, UDP)
        for qname, _qtype in msg.questions:
            if qname in seen:
                continue
            seen.append(qname)
            match = self._matcher.match(qname)
            kind = (
                EventKind.DNS
                if match
                else self._unmatched_kind(qname, EventKind.DNS, include_unmatched, include_candidates)
            )
            if kind is None:
                continue
            extra = f"{msg.txid}/{qname}"  # one id per question of one message
            event_id = _event_id(client, server, client_port, server_port, proto, ts, kind.value, extra)
            event = self._event(
                match,
                kind,
                ts,
                client,
                server,
                event_id,
                server_name=qname,
                server_port=server_port,
                transport=transport,
                evidence=Evidence.DNS.value,
                bytes_up=0 if msg.is_response else wire_len,
                bytes_down=wire_len if msg.is_response else 0,
                packets=1,
            )
            events.append(event)
        return events

    def _event(
        self,
        match: Match | None,
        kind: EventKind,
        ts: float,
        client: bytes,
        server: bytes,
        event_id: str,
        **fields: Any,
    ) -> UsageEvent:
        """The fields every event shares: attribution, policy, client, department, ids."""
        if match is None:
            service, pattern, (vendor, category, jurisdiction, policy) = "", "", _UNATTRIBUTED
        else:
            service, pattern = match.service, match.pattern
            vendor, category, jurisdiction, policy = self._attribution.get(service, _UNATTRIBUTED)
        return UsageEvent(
            ts=_iso(ts),
            kind=kind.value,
            client=self._client(client),
            department=self.policy.department(client),
            service=service,
            vendor=vendor,
            category=category,
            jurisdiction=jurisdiction,
            policy=policy,
            server_ip=_addr_text(server),
            pattern=pattern,
            sensor=self._sensor,
            event_id=event_id,
            **fields,
        )

    # -- candidates and explanations -------------------------------------------------------------

    def is_candidate(self, name: str) -> bool:
        """A name that looks like an AI service but matches no catalogue pattern."""
        return bool(name) and self._matcher.match(name) is None and self._looks_like_ai(name)

    def explain(self, hostname: str) -> str:
        """`shadowai rules match HOSTNAME`: catalogue patterns considered, resolvers, candidate verdict."""
        lines = [f"catalogue {self.catalogue.version}:", self._matcher.explain(hostname)]
        resolver = self._resolvers.match(hostname)
        lines.append(
            "encrypted-DNS resolvers: "
            + (
                f"{resolver.service} via {resolver.kind} pattern {resolver.pattern!r}"
                if resolver
                else "no match"
            )
        )
        if self._matcher.match(hostname) is None:
            reason = candidate_reason(hostname)
            lines.append("candidate: " + (f"yes ({reason})" if reason else "no"))
        return "\n".join(lines)

    # -- helpers --------------------------------------------------------------------------------

    def _unmatched_kind(
        self, name: str, plain: EventKind, include_unmatched: bool, include_candidates: bool
    ) -> EventKind | None:
        """The kind of an event for an unattributed name, or None if it should not be reported."""
        if not (include_unmatched or include_candidates):
            return None
        if name and self._looks_like_ai(name):
            return EventKind.CANDIDATE
        return plain if include_unmatched else None

    def _looks_like_ai(self, name: str) -> bool:
        # Over-long names are no hostnames; keeping them out of the memo bounds its memory.
        return len(name) <= MAX_NAME_LEN and self._candidate(name)

    def _client(self, addr: bytes) -> str:
        return _addr_text(addr) if self._raw_clients else self._pseudonymiser.pseudonym(addr)


def _is_candidate_name(name: str) -> bool:
    return bool(candidate_reason(name))


def _iso(ts: float) -> str:
    """ISO 8601 UTC with microseconds and "Z"; out-of-range timestamps are clamped, not raised."""
    ts = min(max(ts, 0.0), _MAX_TS) if ts == ts else 0.0  # NaN -> epoch
    # Split like datetime.fromtimestamp does (fraction rounded half-even to microseconds), so
    # the text equals what the standard library would print for the same float.
    frac, whole = math.modf(ts)
    micros = round(frac * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_second_text(int(whole))}.{micros:06d}Z"


@functools.lru_cache(maxsize=1024)
def _second_text(secs: int) -> str:
    # Events cluster in time: formatting each second once is what keeps _iso cheap
    # (datetime.strftime per event cost ~10 µs).
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


def _addr_text(addr: bytes) -> str:
    """Dotted quad / RFC 5952 text of a packed address; hex for any other length."""
    if len(addr) == 4:
        return socket.inet_ntop(socket.AF_INET, addr)
    if len(addr) == 16:
        return socket.inet_ntop(socket.AF_INET6, addr)
    return addr.hex()


def _event_id(
    client: bytes,
    server: bytes,
    client_port: int,
    server_port: int,
    proto: int,
    ts: float,
    kind: str,
    extra: str = "",
) -> str:
    # Length prefixes keep the fields apart whatever bytes they hold.
    data = b"".join(
        (
            _LENGTHS.pack(len(client) & 0xFF, len(server) & 0xFF),
            client,
            server,
            _PORTS.pack(client_port & 0xFFFF, server_port & 0xFFFF, proto & 0xFF),
            f"{ts!r}|{kind}|{extra}".encode(),
        )
    )
    return hashlib.blake2b(data, digest_size=16).hexdigest()
