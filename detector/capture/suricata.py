"""Suricata EVE JSON (eve.json; plain or gzip) as lookups and flows.

For links faster than Python can follow: an existing Suricata deployment parses the packets and
the sensor reads its EVE log instead. `iter_records` takes eve files and directories holding
them (eve*.json*) and yields `DnsItem`s and `FlowItem`s for Pipeline.feed_dns / feed_flow, in
timestamp order; events of one connection are joined by `flow_id` (see logjoin for the joining,
the ordering and the bounds).

Mapping:
  flow   flow.start/end → first_ts/last_ts, src/dest → client/server (EVE writes flows in the
         flow's direction), flow.bytes_toserver/bytes_toclient → bytes_up/down less the link
         header of each packet (see below), pkts_toserver+pkts_toclient → packets, the client's
         SYN (tcp.tcp_flags_ts, else tcp.syn; UDP always) → saw_start, app_proto → app.
         UDP flows on DNS ports are left out (the packet path makes lookups of them, not flows).
  tls    tls.sni → tls-sni, tls.ja4 → ja4, tls.client_alpns → alpn.
  quic   quic.sni → quic-sni, quic.ja4 → ja4, the alpn extension → alpn.
  http   http.hostname → http-host; http_method CONNECT → http-connect with the url's authority.
  dns    every EVE DNS format: version 3 (type request/response, dns.queries[], dns.answers[]),
         version 2 (type query/answer, rrname/rrtype, answers[] "detailed" or grouped{}) and
         version 1 (one answer event per record, rrname/rrtype/ttl/rdata). The client is the side
         that is not on a DNS port (EVE logs answers in the packet's direction in some versions).
Other event types (alert, stats, fileinfo, anomaly …) are ignored.

Byte counts: Suricata counts each packet's whole length, link header included (flow.c adds
GET_PKT_LEN(p), the captured frame), while the sensor counts from the IP header on. The reader
takes `link_header_len` bytes off per packet: 14 (Ethernet) by default; 18 on a VLAN-tagged span
port; 0 keeps Suricata's numbers.

Times are ISO 8601 with an offset ("2026-11-02T09:00:04.840790+0000"). Malformed lines are
counted under the names in ANOMALIES and skipped; nothing raises after the paths are checked.

References:
  Suricata User Guide, "Eve JSON Format" and "Eve JSON Output" (dns version 2/3, formats
    detailed/grouped); src/flow.c (flow byte counters); rust/src/dns/log.rs (DNS record layout);
    rust/src/quic/logger.rs; src/output-json-tls.c; src/output-json-http.c.
  RFC 1035 §3.2.2 (TYPE values), RFC 6895 §2.3 (RCODE values), RFC 9460 (SVCB/HTTPS types).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from detector.capture import logjoin as lj
from detector.capture.pcapfile import expand_paths
from detector.capture.logjoin import DnsItem, FlowItem, LogItem, detect_format, feed
from detector.model import SYN, TCP, UDP, Anomaly, DnsAnswer, DnsMessage, EndReason, FlowRecord, Stats

__all__ = [
    "ANOMALIES", "DnsItem", "FlowItem", "LogItem", "detect_format", "eve_row", "feed", "iter_records",
    "parse_eve", "parse_eve_line",
]

PREFIX = "suricata"

ANOMALIES: dict[str, str] = lj.reader_anomalies(PREFIX, "flow event", "tls/quic/http event")
JSON_INVALID = Anomaly("suricata.json_invalid")
MISSING_FIELD = Anomaly("suricata.missing_field")
BAD_VALUE = Anomaly("suricata.bad_value")

# Link header bytes per packet taken off Suricata's flow byte counts: an Ethernet header.
ETHERNET_HEADER_LEN = 14

_PROTO = {"TCP": TCP, "UDP": UDP, "6": TCP, "17": UDP}

_APP = {"tls": "tls", "quic": "quic", "http": "http", "http1": "http", "http2": "http", "dns": "dns"}

_REASON = {"timeout": EndReason.IDLE, "shutdown": EndReason.EOF, "forced": EndReason.EVICTED}

# Ports a DNS server answers on (DNS, DoT, mDNS, LLMNR, local forwarders): the side on one of
# them is the server whatever direction the event was logged in.
DNS_SERVER_PORTS = lj.DNS_UDP_PORTS | {853, 5353, 5355}

# rrtype names as Suricata prints them (dns_rrtype_string); others come as "TYPE<n>" or digits.
RRTYPES = {
    "A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "HINFO": 13, "MX": 15, "TXT": 16, "AAAA": 28,
    "SRV": 33, "NAPTR": 35, "DNAME": 39, "OPT": 41, "DS": 43, "SSHFP": 44, "RRSIG": 46, "NSEC": 47,
    "DNSKEY": 48, "NSEC3": 50, "TLSA": 52, "SVCB": 64, "HTTPS": 65, "ANY": 255, "CAA": 257,
}
RCODES = {
    "NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5,
    "YXDOMAIN": 6, "YXRRSET": 7, "NXRRSET": 8, "NOTAUTH": 9, "NOTZONE": 10, "BADVERS": 16,
}
_CNAME = 5
_RESPONSE_TYPES = frozenset({"answer", "response"})


# ---------------------------------------------------------------------------
# Lines and events (pure)
# ---------------------------------------------------------------------------


def parse_eve_line(line: str) -> dict[str, Any] | Anomaly:
    """One EVE line as a dict, or suricata.json_invalid."""
    return lj.parse_json_object(line, JSON_INVALID)


_TYPE_MARK = '"event_type":"'


def skippable(line: str) -> bool:
    """Whether a line is an event the sensor does not read, told without parsing it: Suricata
    writes compact JSON, so the type's text follows the mark (alerts, fileinfo, stats and netflow
    are most of a busy EVE log). A line without the mark is parsed in full."""
    i = line.find(_TYPE_MARK)
    if i < 0:
        return False
    i += len(_TYPE_MARK)
    return line[i:line.find('"', i)] not in EVENT_BUILDERS


def parse_eve(line: str, link_header_len: int = ETHERNET_HEADER_LEN) -> lj.Row | Anomaly | None:
    """The row one EVE line stands for (see `eve_row`); None for blank lines and events the
    sensor does not read, suricata.json_invalid for a line that is not a JSON object."""
    if line.isspace() or skippable(line):
        return None
    event = parse_eve_line(line)
    if type(event) is not dict:
        return event  # type: ignore[return-value]
    return eve_row(event, link_header_len)


def eve_row(event: Mapping[str, Any], link_header_len: int = ETHERNET_HEADER_LEN) -> lj.Row | Anomaly | None:
    """The row an EVE event stands for; None for event types (and transports) the sensor does
    not read; an Anomaly if the event is broken."""
    builder = EVENT_BUILDERS.get(event.get("event_type"))  # type: ignore[arg-type]
    if builder is None:
        return None
    return lj.build_row(builder, event, link_header_len, MISSING_FIELD, BAD_VALUE)  # type: ignore[arg-type]


def _ends(ev: Mapping[str, Any]) -> tuple[bytes, bytes, int, int]:
    src, dst = lj.packed(ev["src_ip"]), lj.packed(ev["dest_ip"])
    return src, dst, lj.port(ev.get("src_port", 0)), lj.port(ev.get("dest_port", 0))


def _flow_id(ev: Mapping[str, Any]) -> int:
    fid = ev["flow_id"]
    if type(fid) is not int:
        raise ValueError("flow_id")
    return fid


def _text(obj: Mapping[str, Any], key: str) -> str | None:
    v = obj.get(key)
    if type(v) is dict:  # some versions log {"hash": …, "string": …} objects for fingerprints
        v = v.get("hash")
    return v if type(v) is str and v else None


def _flow(ev: Mapping[str, Any], link: int) -> lj.FlowRow | None:
    proto = _PROTO.get(str(ev.get("proto", "")).upper())
    if proto is None:
        return None
    f = ev["flow"]
    start = lj.iso_ts(f.get("start") or ev["timestamp"])
    end = lj.iso_ts(f["end"]) if f.get("end") else start
    client, server, cport, sport = _ends(ev)
    p_up, p_down = lj.count(f.get("pkts_toserver", 0)), lj.count(f.get("pkts_toclient", 0))
    up = max(0, lj.count(f.get("bytes_toserver", 0)) - link * p_up)
    down = max(0, lj.count(f.get("bytes_toclient", 0)) - link * p_down)
    tcp = ev.get("tcp")
    saw_start = True
    reason = _REASON.get(f.get("reason", ""), EndReason.IDLE)
    if proto == TCP and type(tcp) is dict:
        flags = tcp.get("tcp_flags_ts")
        saw_start = bool(int(flags, 16) & SYN) if type(flags) is str and flags else bool(tcp.get("syn"))
        if tcp.get("state") == "closed":
            reason = EndReason.FIN
    rec = FlowRecord(start, end, client, server, cport, sport, proto, up, down, p_up + p_down, reason,
                     transport="tcp" if proto == TCP else "udp", saw_start=saw_start,
                     app=_APP.get(str(ev.get("app_proto", "")).lower(), ""))
    return lj.FlowRow(_flow_id(ev), rec)


def _name_row(ev: Mapping[str, Any], kind: str, name: str | None, **extra: Any) -> lj.NameRow:
    client, server, cport, sport = _ends(ev)
    ts = lj.iso_ts(ev["timestamp"])
    return lj.NameRow(_flow_id(ev), ts, kind, name, client, server, cport, sport, **extra)  # type: ignore[arg-type]


def _tls(ev: Mapping[str, Any], link: int) -> lj.NameRow:
    t = ev["tls"]
    alpns = t.get("client_alpns")
    return _name_row(ev, "tls", lj.hostname(t.get("sni")), ja4=_text(t, "ja4"),
                     alpn=tuple(str(a) for a in alpns) if type(alpns) is list else ())


def _quic(ev: Mapping[str, Any], link: int) -> lj.NameRow:
    q = ev["quic"]
    alpn: tuple[str, ...] = ()
    for ext in q.get("extensions") or ():
        if type(ext) is dict and (ext.get("name") == "alpn" or ext.get("type") == 16):
            alpn = tuple(str(v) for v in ext.get("values") or ())
            break
    return _name_row(ev, "quic", lj.hostname(q.get("sni")), ja4=_text(q, "ja4"), alpn=alpn)


def _http(ev: Mapping[str, Any], link: int) -> lj.NameRow:
    h = ev["http"]
    kind, name = lj.http_name(h.get("http_method"), h.get("hostname"), h.get("url"))
    return _name_row(ev, kind, name, user_agent=_text(h, "http_user_agent"))


def _dns(ev: Mapping[str, Any], link: int) -> DnsItem | None:
    d = ev["dns"]
    is_response = d.get("type") in _RESPONSE_TYPES
    questions = dns_questions(d)
    if not questions:
        return None
    src, dst, sport, dport = _ends(ev)
    src_server, dst_server = sport in DNS_SERVER_PORTS, dport in DNS_SERVER_PORTS
    # The server is the side on a DNS port; when that says nothing, an answer came from its src.
    swap = src_server if src_server != dst_server else is_response
    client, server, server_port = (dst, src, sport) if swap else (src, dst, dport)
    msg = DnsMessage(
        txid=lj.count(d.get("id", 0)) & 0xFFFF,
        is_response=is_response,
        rcode=rcode_number(d.get("rcode", "NOERROR")) if is_response else 0,
        questions=questions,
        answers=dns_answers(d, questions[0][0]) if is_response else (),
    )
    transport = "tcp" if str(ev.get("proto", "")).upper() in ("TCP", "6") else "udp"
    return DnsItem(lj.iso_ts(ev["timestamp"]), client, server, server_port, msg, transport)


def rrtype_number(value: Any) -> int:
    """An rrtype as Suricata prints it ("AAAA", "TYPE65", "65") as a number; 0 if unknown."""
    if type(value) is int:
        return value
    text = str(value).upper()
    if text in RRTYPES:
        return RRTYPES[text]
    text = text.removeprefix("TYPE")
    return int(text) if text.isdigit() else 0


def rcode_number(value: Any) -> int:
    """An rcode as Suricata prints it ("NXDOMAIN", or digits) as a number."""
    if type(value) is int:
        return value
    text = str(value).upper()
    return RCODES[text] if text in RCODES else int(text) if text.isdigit() else 0


def dns_questions(d: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """The questions of an EVE dns object: v3 queries[], else the v1/v2 rrname/rrtype."""
    queries = d.get("queries")
    if type(queries) is list:
        out = []
        for q in queries:
            name = lj.hostname(q.get("rrname")) if type(q) is dict else None
            if name is not None:
                out.append((name, rrtype_number(q.get("rrtype", 0))))
        return tuple(out)
    name = lj.hostname(d.get("rrname"))
    return ((name, rrtype_number(d.get("rrtype", 0))),) if name is not None else ()


def dns_answers(d: Mapping[str, Any], qname: str) -> tuple[DnsAnswer, ...]:
    """The A/AAAA/CNAME answers of an EVE dns object in any format: answers[] (v2/v3
    "detailed"), grouped{} (no TTLs: 0), or v1's one record per event (rdata at the top)."""
    out: list[DnsAnswer] = []
    answers = d.get("answers")
    if type(answers) is list:
        for a in answers:
            if type(a) is dict:
                _answer(out, lj.hostname(a.get("rrname")) or qname, a.get("rrtype"), a.get("ttl", 0), a.get("rdata"))
    elif type(d.get("grouped")) is dict:
        owner = qname
        for rrtype, values in d["grouped"].items():
            for value in values if type(values) is list else ():
                _answer(out, owner, rrtype, 0, value)
    elif "rdata" in d:
        _answer(out, qname, d.get("rrtype"), d.get("ttl", 0), d.get("rdata"))
    return tuple(out)


def _answer(out: list[DnsAnswer], owner: str, rrtype: Any, ttl: Any, rdata: Any) -> None:
    if type(rdata) is not str:
        return
    rtype = rrtype_number(rrtype)
    if rtype in (1, 28):
        if lj.address_family_rtype(rdata) == rtype:
            out.append(DnsAnswer(owner, rtype, lj.count(ttl), rdata))
    elif rtype == _CNAME:
        target = lj.hostname(rdata)
        if target is not None:
            out.append(DnsAnswer(owner, _CNAME, lj.count(ttl), target))


EVENT_BUILDERS: dict[str, Callable[[Mapping[str, Any], int], lj.Row | None]] = {
    "flow": _flow, "tls": _tls, "quic": _quic, "http": _http, "dns": _dns,
}


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def is_eve_log(path: Path) -> bool:
    """A file in a log directory that the reader takes: eve.json, eve.json.1, eve-….json.gz."""
    name = path.name
    return name.startswith("eve") and ".json" in name


def iter_records(
    paths: Sequence[Path],
    stats: Stats | None = None,
    *,
    link_header_len: int = ETHERNET_HEADER_LEN,
    window: float = lj.REORDER_WINDOW,
    max_names: int = lj.MAX_PENDING_NAMES,
) -> Iterator[LogItem]:
    """DnsItems and FlowItems from EVE files and directories of them, in timestamp order.

    Several files are merged by time (per-thread eve files overlap; rotated ones follow one
    another). Counts files and anomalies into `stats`. Raises CaptureError here, before anything
    is read, for a path that does not exist; never raises afterwards.
    """
    files = expand_paths(paths, is_eve_log)
    stats = stats if stats is not None else Stats()
    parse = functools.partial(parse_eve, link_header_len=link_header_len)
    streams = [lj.file_rows(f, PREFIX, stats, parse) for f in files]
    return lj.joined(lj.merged(streams), lj.Joiner(PREFIX, stats, window, max_names=max_names))
