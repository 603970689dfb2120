"""Zeek logs (conn, ssl, quic, http, dns; TSV or JSON; plain or gzip) as lookups and flows.

For links faster than Python can follow: an existing Zeek deployment parses the packets, and the
sensor reads its logs instead. `iter_records` takes log files and directories of a log set
(/opt/zeek/logs/current, a rotated day folder, several of them) and yields `DnsItem`s and
`FlowItem`s for Pipeline.feed_dns / feed_flow, in timestamp order (see logjoin for how rows are
joined by uid and ordered, and for the bounds).

Mapping (the packet path's meaning for each FlowRecord field):
  conn.log  ts → first_ts, ts+duration → last_ts, id.orig_h/p → client, id.resp_h/p → server,
            orig_ip_bytes/resp_ip_bytes → bytes_up/down (orig_bytes/resp_bytes, payload only,
            when the IP counts are absent), orig_pkts+resp_pkts → packets, history starting
            with 'S' (TCP; else conn_state other than OTH) → saw_start, service → app.
            UDP rows on DNS ports are left out (the packet path makes lookups of them, not flows).
  ssl.log   server_name → tls-sni (quic-sni on UDP: Zeek's QUIC analyzer hands the CRYPTO
            frames to its SSL analyzer, which writes an ssl.log row with the same uid),
            next_protocol → alpn, ja4 (FoxIO JA4 package) → ja4.
  quic.log  server_name → quic-sni, client_protocol → alpn.
  http.log  host → http-host; method CONNECT → http-connect with the uri's authority.
            A CONNECT names a proxied flow before the TLS inside it (as the packet path does).
  dns.log   one row per query: a response DnsMessage when the row has an rcode or answers,
            else a query. Zeek does not log each answer's type: an answer that parses as an
            IP address is A/AAAA by its family, a name is a CNAME (target of the chain so far),
            anything with spaces (TXT, SOA …) is skipped.
Other logs (files, x509, weird, conn-summary …) are ignored, rows and files alike.

Both Zeek writers are read: ASCII TSV with its `#separator`/`#set_separator`/`#empty_field`/
`#unset_field`/`#path`/`#fields`/`#types`/`#close` headers (headers may recur, e.g. in
concatenated files) and JSON lines (LogAscii::use_json; `_path` when several logs share a file,
else the file name says which log it is; times as epoch numbers or ISO 8601 strings).

Malformed lines are counted under the names in ANOMALIES and skipped; nothing raises after
the input paths have been checked.

References:
  Zeek documentation, "Logging Framework" / "Zeek Log Formats" (ASCII writer headers, \\xHH
    escapes, LogAscii::use_json, json_timestamps); base/protocols/conn/main.zeek (history,
    conn_state, orig_ip_bytes), ssl/main.zeek, quic/main.zeek, http/main.zeek, dns/main.zeek.
  FoxIO JA4 Zeek package (ja4 in ssl.log).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from detector.capture import logjoin as lj
from detector.capture.pcapfile import expand_paths
from detector.capture.logjoin import DnsItem, FlowItem, LogItem, detect_format, feed
from detector.model import TCP, UDP, Anomaly, DnsAnswer, DnsMessage, EndReason, FlowRecord, Stats

__all__ = [
    "ANOMALIES",
    "DnsItem",
    "FlowItem",
    "LineParser",
    "LogItem",
    "TsvHeader",
    "detect_format",
    "feed",
    "iter_records",
    "log_path_of",
    "parse_json_row",
    "parse_tsv_header",
    "parse_tsv_row",
    "zeek_row",
]

PREFIX = "zeek"

ANOMALIES: dict[str, str] = {
    **lj.reader_anomalies(PREFIX, "conn.log row", "ssl/quic/http.log"),
    "zeek.tsv_no_header": "a TSV data line came before any #fields header",
    "zeek.tsv_field_count": "a TSV line has another number of columns than its #fields header",
}
JSON_INVALID = Anomaly("zeek.json_invalid")
MISSING_FIELD = Anomaly("zeek.missing_field")
BAD_VALUE = Anomaly("zeek.bad_value")
TSV_NO_HEADER = Anomaly("zeek.tsv_no_header")
TSV_FIELD_COUNT = Anomaly("zeek.tsv_field_count")

_ID = ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p")

# The fields each log's row builder reads (TSV rows keep only these columns).
FIELDS: dict[str, frozenset[str]] = {
    "conn": frozenset((*_ID, "proto", "service", "duration", "orig_bytes", "resp_bytes", "conn_state",
                       "history", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes")),
    "ssl": frozenset((*_ID, "server_name", "next_protocol", "ja4")),
    "quic": frozenset((*_ID, "server_name", "client_protocol", "ja4")),
    "http": frozenset((*_ID, "method", "host", "uri", "user_agent")),
    "dns": frozenset((*_ID, "proto", "trans_id", "query", "qtype", "rcode", "answers", "TTLs")),
}

_PROTO = {"tcp": TCP, "udp": UDP}

# conn_state values of a connection that ended with FIN or RST (Zeek conn/main.zeek).
_CLOSED_STATES = frozenset({"SF", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR"})

CNAME = 5  # RFC 1035 §3.2.2


# ---------------------------------------------------------------------------
# TSV: headers and rows (pure)
# ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class TsvHeader:
    """The state a Zeek ASCII log's header lines set; `columns` are the (field, index) pairs
    the row builder of `path` reads."""

    separator: str = "\t"
    set_separator: str = ","
    empty: str = "(empty)"
    unset: str = "-"
    path: str = ""
    fields: tuple[str, ...] = ()
    columns: tuple[tuple[str, int], ...] = ()
    names: tuple[str, ...] = ()  # the names of `columns`
    pick: Callable[[list[str]], tuple[str, ...]] | None = None  # the values of `columns` from a split line


def parse_tsv_header(line: str, header: TsvHeader) -> TsvHeader:
    """The header after one '#' line (unknown directives such as #open, #types leave it as is)."""
    if line.startswith("#separator"):
        sep = lj.unescape(line[len("#separator"):].strip(" "))
        return dataclasses.replace(header, separator=sep or "\t")
    key, _, value = line[1:].partition(header.separator)
    if key == "set_separator":
        return dataclasses.replace(header, set_separator=lj.unescape(value))
    if key == "empty_field":
        return dataclasses.replace(header, empty=value)
    if key == "unset_field":
        return dataclasses.replace(header, unset=value)
    if key == "path":
        return _with_columns(dataclasses.replace(header, path=value))
    if key == "fields":
        return _with_columns(dataclasses.replace(header, fields=tuple(value.split(header.separator))))
    return header


def _with_columns(header: TsvHeader) -> TsvHeader:
    wanted = FIELDS.get(header.path, frozenset())
    cols = tuple((name, i) for i, name in enumerate(header.fields) if name in wanted)
    return dataclasses.replace(header, columns=cols, names=tuple(n for n, _ in cols),
                               pick=itemgetter(*(i for _, i in cols)) if len(cols) > 1 else None)


def parse_tsv_row(line: str, header: TsvHeader) -> dict[str, str] | Anomaly:
    """The fields of one data line that the path's builder reads; unset fields are left out,
    empty ones are "" (still escaped: builders unescape after splitting sets)."""
    if not header.fields:
        return TSV_NO_HEADER
    parts = line.split(header.separator)
    if len(parts) != len(header.fields):
        return TSV_FIELD_COUNT
    if header.pick is None:  # one column or none: no builder reads so little
        return {name: parts[i] for name, i in header.columns}
    values = header.pick(parts)
    unset, empty = header.unset, header.empty
    if unset in values or empty in values:
        return {name: "" if v == empty else v for name, v in zip(header.names, values) if v != unset}
    return dict(zip(header.names, values))


def parse_json_row(line: str) -> dict[str, Any] | Anomaly:
    """One JSON log line as a flat dict ("id.orig_h" keys; a nested "id" object is flattened)."""
    obj = lj.parse_json_object(line, JSON_INVALID)
    if type(obj) is dict:
        nested = obj.get("id")
        if type(nested) is dict:
            del obj["id"]
            for k, v in nested.items():
                obj["id." + k] = v
    return obj


# ---------------------------------------------------------------------------
# Rows (pure): one parsed line of a known log → NameRow | FlowRow | DnsItem | None
# ---------------------------------------------------------------------------


def zeek_row(path: str, fields: Mapping[str, Any], set_separator: str = ",") -> lj.Row | Anomaly | None:
    """The row one line of log `path` stands for; None for a row that cannot matter (ICMP,
    a DNS row without a query) or a log the sensor does not read; an Anomaly if it is broken."""
    builder = ROW_BUILDERS.get(path)
    if builder is None:
        return None
    return lj.build_row(builder, fields, set_separator, MISSING_FIELD, BAD_VALUE)  # type: ignore[arg-type]


def _ends(d: Mapping[str, Any]) -> tuple[bytes, bytes, int, int]:
    return lj.packed(d["id.orig_h"]), lj.packed(d["id.resp_h"]), lj.port(d["id.orig_p"]), lj.port(d["id.resp_p"])


def _uid(d: Mapping[str, Any]) -> str:
    uid = d["uid"]
    if type(uid) is not str or not uid:
        raise ValueError("uid")
    return uid


def _text(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    return lj.unescape(v) if type(v) is str and v else None


def _strings(value: Any, sep: str) -> list[str]:
    """A set/vector field: a JSON list, or a TSV cell split on the set separator."""
    if type(value) is list:
        return [lj.unescape(str(v)) for v in value]
    if not value:
        return []
    return [lj.unescape(v) for v in value.split(sep)]


def _conn(d: Mapping[str, Any], sep: str) -> lj.FlowRow | None:
    get = d.get
    proto = _PROTO.get(get("proto"))
    if proto is None:
        return None  # ICMP and unknown transports carry no names
    ts = lj.epoch(d["ts"])
    client, server, cport, sport = _ends(d)
    up = lj.count(get("orig_ip_bytes") or get("orig_bytes") or 0)
    down = lj.count(get("resp_ip_bytes") or get("resp_bytes") or 0)
    pkts = lj.count(get("orig_pkts") or 0) + lj.count(get("resp_pkts") or 0)
    state = get("conn_state") or ""
    history = get("history") or ""
    saw_start = history[0] == "S" if proto == TCP and history else state != "OTH"
    rec = FlowRecord(ts, ts + float(get("duration") or 0.0), client, server, cport, sport, proto, up, down, pkts,
                     EndReason.FIN if state in _CLOSED_STATES else EndReason.IDLE,
                     transport="tcp" if proto == TCP else "udp", saw_start=saw_start,
                     app=_app_of_service(get("service") or ""))
    return lj.FlowRow(_uid(d), rec)


@functools.lru_cache(maxsize=64)
def _app_of_service(service: str) -> str:
    """conn.log `service` ("ssl", "quic,ssl", "http", "dns" …) as FlowRecord.app."""
    if not service:
        return ""
    names = service.lower().split(",")
    for svc, app in (("quic", "quic"), ("ssl", "tls"), ("http", "http"), ("dns", "dns")):
        if svc in names:
            return app
    return ""


def _name_row(d: Mapping[str, Any], kind: str, name: str | None, **extra: Any) -> lj.NameRow:
    client, server, cport, sport = _ends(d)
    ts = lj.epoch(d["ts"])
    return lj.NameRow(_uid(d), ts, kind, name, client, server, cport, sport, **extra)  # type: ignore[arg-type]


def _ssl(d: Mapping[str, Any], sep: str) -> lj.NameRow:
    alpn = _text(d, "next_protocol")
    return _name_row(d, "tls", lj.hostname(d.get("server_name")), ja4=_text(d, "ja4"), alpn=(alpn,) if alpn else ())


def _quic(d: Mapping[str, Any], sep: str) -> lj.NameRow:
    alpn = _text(d, "client_protocol")
    return _name_row(d, "quic", lj.hostname(d.get("server_name")), ja4=_text(d, "ja4"), alpn=(alpn,) if alpn else ())


def _http(d: Mapping[str, Any], sep: str) -> lj.NameRow:
    kind, name = lj.http_name(d.get("method"), d.get("host"), d.get("uri"))
    return _name_row(d, kind, name, user_agent=_text(d, "user_agent"))


def _dns(d: Mapping[str, Any], sep: str) -> DnsItem | None:
    query = lj.hostname(d.get("query"))
    if query is None:
        return None  # no question: nothing to attribute
    client, server, _cport, sport = _ends(d)
    values = _strings(d.get("answers"), sep)
    ttls = _strings(d.get("TTLs"), sep)
    rcode = d.get("rcode")
    msg = DnsMessage(
        txid=lj.count(d.get("trans_id", 0) or 0) & 0xFFFF,
        is_response=rcode is not None or bool(values),
        rcode=lj.count(rcode or 0),
        questions=((query, lj.count(d.get("qtype", 0) or 0)),),
        answers=zeek_answers(query, values, ttls),
    )
    return DnsItem(lj.epoch(d["ts"]), client, server, sport, msg, "tcp" if d.get("proto") == "tcp" else "udp")


def zeek_answers(query: str, values: Sequence[str], ttls: Sequence[str | float]) -> tuple[DnsAnswer, ...]:
    """dns.log `answers`/`TTLs` as records: an address is A/AAAA by family, a name is the
    next CNAME of the chain that starts at `query`, anything else (TXT, SOA text) is skipped."""
    out: list[DnsAnswer] = []
    owner = query
    for i, value in enumerate(values):
        ttl = int(float(ttls[i])) if i < len(ttls) else 0
        rtype = lj.address_family_rtype(value)
        if rtype:
            out.append(DnsAnswer(owner, rtype, ttl, value))
            continue
        if " " in value:
            continue
        target = lj.hostname(value)
        if target is not None:
            out.append(DnsAnswer(owner, CNAME, ttl, target))
            owner = target
    return tuple(out)


ROW_BUILDERS: dict[str, Callable[[Mapping[str, Any], str], lj.Row | None]] = {
    "conn": _conn, "ssl": _ssl, "quic": _quic, "http": _http, "dns": _dns,
}


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def log_path_of(filename: str) -> str:
    """The log a file holds by its name: conn.log, conn.2026-11-02-09-00-00.log.gz,
    conn.09:00:00-10:00:00.log.gz and json_streaming_conn.1.log are all "conn"."""
    return filename.split(".", 1)[0].removeprefix("json_streaming_")


def is_zeek_log(path: Path) -> bool:
    """A file in a log directory that the reader takes (its name is one of the logs it reads)."""
    return log_path_of(path.name) in ROW_BUILDERS


class LineParser:
    """Turns the lines of one Zeek log file into rows, one at a time; its only state is the
    TSV header that the file's '#' lines set (a file may hold several, e.g. concatenated)."""

    __slots__ = ("builder", "default", "header")

    def __init__(self, filename: str) -> None:
        self.default = log_path_of(filename)  # which log the file holds when its lines don't say
        self.header = TsvHeader(path=self.default)
        self.builder = ROW_BUILDERS.get(self.default)

    def __call__(self, line: str) -> lj.Row | Anomaly | None:
        """The row of one line: None for header lines and logs the sensor does not read."""
        first = line[0]
        if first == "#":
            self.header = parse_tsv_header(line, self.header)
            self.builder = ROW_BUILDERS.get(self.header.path)
            return None
        if first == "{":
            obj = parse_json_row(line)
            if type(obj) is not dict:
                return obj  # type: ignore[return-value]
            return zeek_row(obj.get("_path", self.default), obj)
        if self.builder is None:
            return None  # a log the sensor does not read: not even split
        fields = parse_tsv_row(line, self.header)
        if type(fields) is not dict:
            return fields  # type: ignore[return-value]
        return lj.build_row(self.builder, fields, self.header.set_separator, MISSING_FIELD, BAD_VALUE)


def _rows(path: Path, stats: Stats) -> Iterator[lj.Row]:
    return lj.file_rows(path, PREFIX, stats, LineParser(path.name))


def _first_write_time(path: Path) -> float:
    """When the file's first row was written (to put rotated files of one log in order)."""
    rows = _rows(path, Stats())
    try:
        first = next(rows, None)
    finally:
        rows.close()
    return lj.write_time(first) if first is not None else float("inf")


def iter_records(
    paths: Sequence[Path],
    stats: Stats | None = None,
    *,
    window: float = lj.REORDER_WINDOW,
    max_names: int = lj.MAX_PENDING_NAMES,
) -> Iterator[LogItem]:
    """DnsItems and FlowItems from Zeek log files and log directories, in timestamp order.

    Files of one log (conn, ssl …) are read one after another in the order of their first row,
    the logs side by side. Counts files and anomalies into `stats`. Raises CaptureError here, before
    anything is read, for a path that does not exist; never raises afterwards.
    """
    files = expand_paths(paths, is_zeek_log)
    return _records(files, stats if stats is not None else Stats(), window, max_names)


def _records(files: list[Path], stats: Stats, window: float, max_names: int) -> Iterator[LogItem]:
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(log_path_of(f.name), []).append(f)
    streams = []
    for group in groups.values():
        if len(group) > 1:
            group.sort(key=_first_write_time)
        streams.append(itertools.chain.from_iterable(_rows(f, stats) for f in group))
    yield from lj.joined(lj.merged(streams), lj.Joiner(PREFIX, stats, window, max_names=max_names))
