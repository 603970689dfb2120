"""What the Zeek and Suricata log readers share: the items they yield, field converters, line
reading (plain or gzip), and the join of name rows with flow rows into time-ordered records.

Both sensors log a connection in pieces: the name (Zeek ssl/quic/http.log, Suricata tls/quic/http
events) when the handshake is seen, the byte counts (Zeek conn.log, Suricata flow events) when the
connection ends, and DNS when the answer comes. The readers parse each line into one of three
rows (a `NameRow`, a `FlowRow` or a finished `DnsItem`) with pure functions; this module merges
the rows of all files by the time they were written, keeps name rows by connection id until the
flow row comes, and hands out `DnsItem`s and `FlowItem`s (a joined `FlowRecord`) in timestamp
order, within a bounded reorder window.

Ordering: rows are merged across files by their write time (a flow row's end, every other row's
own time), so a connection's name rows are always read before its flow row. Items then wait in a
heap keyed by their own time (a lookup's time, a flow's start) until the newest write time read
is `window` seconds past it. A flow longer than the window comes out when its row is read, at its
end, as the packet path reports flows when they end; everything else comes out in time order.

Bounds: name rows waiting for their flow row (`max_names`, oldest out first) and items in the
reorder heap (`max_items`, oldest out early). A name row that never meets its flow row (evicted,
or still waiting at the end of the input, e.g. flow logging off or the flow's row in the next
rotated file) is reported as a flow of its own, without counts, and counted.
"""

from __future__ import annotations

import gzip
import heapq
import json
import math
import re
import socket
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

from detector.model import Anomaly, DNS_UDP_PORTS, DnsMessage, ECH_PUBLIC_NAMES, EndReason, Evidence, FlowRecord, Stats, TCP, UDP

# Seconds an item waits in the reorder heap after the newest row read: Zeek and Suricata write
# a name row within a second or so of the handshake and flush their logs about once a second,
# so a few seconds puts every lookup before the flows that use it.
REORDER_WINDOW = 5.0

# Items held for reordering at most: the window's worth on a busy 10 Gbit/s link (~40 k rows/s)
# in about 60 MB; beyond it the oldest leaves early (order gets looser, memory stays bounded).
MAX_REORDER_ITEMS = 200_000

# Connections whose name row waits for its flow row: a site's concurrent TLS/QUIC connections
# (tens of thousands) with room for long-lived ones; beyond it the oldest is reported without counts.
MAX_PENDING_NAMES = 100_000

# Name rows kept per connection: the first TLS, QUIC and HTTP rows say all there is; a
# keep-alive HTTP connection writes one row per request.
MAX_NAMES_PER_FLOW = 4

# The logs do not show the ECH extension, so a flow whose SNI is an ECH provider's outer name
# (model.ECH_PUBLIC_NAMES) is marked ECH and left nameless for the pipeline's DNS cache to
# name, as the packet path does. UDP flows on model.DNS_UDP_PORTS are left out: the packet
# path turns those datagrams into lookups, never into flows.

# Bytes of a line beyond which it is not a log line but garbage (a Zeek row with a large
# certificate chain is a few KB; Suricata's stats events reach ~100 KB).
MAX_LINE = 1 << 20


# ---------------------------------------------------------------------------
# Items (what the readers yield) and rows (what their line parsers return)
# ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class DnsItem:
    """One DNS query or answer seen by the other sensor: the arguments of Pipeline.feed_dns.

    client: the side that asked (packed); server/port: the resolver; transport: "udp" | "tcp".
    """

    ts: float
    client: bytes
    server: bytes
    port: int
    msg: DnsMessage
    transport: str = "udp"


@dataclass(slots=True, frozen=True)
class FlowItem:
    """One finished flow seen by the other sensor: the argument of Pipeline.feed_flow."""

    rec: FlowRecord

    @property
    def ts(self) -> float:
        """The flow's start."""
        return self.rec.first_ts


LogItem = DnsItem | FlowItem


class LogSink(Protocol):
    """What the readers feed (Pipeline has both methods)."""

    def feed_dns(
        self, ts: float, client: bytes, server: bytes, port: int, msg: DnsMessage, transport: str = "udp"
    ) -> None: ...

    def feed_flow(self, rec: FlowRecord) -> None: ...


def feed(items: Iterable[LogItem], sink: LogSink) -> int:
    """Hand every item to `sink` (a Pipeline); returns how many there were."""
    n = 0
    feed_dns, feed_flow = sink.feed_dns, sink.feed_flow
    for item in items:
        if type(item) is DnsItem:
            feed_dns(item.ts, item.client, item.server, item.port, item.msg, item.transport)
        else:
            feed_flow(item.rec)  # type: ignore[union-attr]
        n += 1
    return n


NameKind = Literal["tls", "quic", "http", "connect"]


@dataclass(slots=True)
class NameRow:
    """What an application-layer row says about a connection (Zeek ssl/quic/http.log,
    Suricata tls/quic/http events), keyed by the connection id (Zeek uid, Suricata flow_id).

    kind: "tls" | "quic" | "http" | "connect" (an HTTP CONNECT request to a proxy).
    name: the SNI / Host / CONNECT authority, lower-cased, without port or trailing dot.
    """

    key: str | int
    ts: float
    kind: NameKind
    name: str | None
    client: bytes
    server: bytes
    client_port: int
    server_port: int
    ja4: str | None = None
    alpn: tuple[str, ...] = ()
    user_agent: str | None = None


@dataclass(slots=True)
class FlowRow:
    """A finished connection's counts (Zeek conn.log, Suricata flow event), names still to join."""

    key: str | int
    rec: FlowRecord


Row = NameRow | FlowRow | DnsItem


def write_time(row: Row) -> float:
    """When the other sensor wrote the row: a flow row at the flow's end, the others at their own time."""
    return row.rec.last_ts if type(row) is FlowRow else row.ts  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# Field converters (raise ValueError/TypeError/KeyError/OSError; the parsers turn them into Anomaly)
# ---------------------------------------------------------------------------

def packed(addr: str) -> bytes:
    """An address in text (v4 or v6) as packed bytes; OSError/TypeError if it is not one."""
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def address_family_rtype(value: str) -> int:
    """1 (A) or 28 (AAAA) if `value` is an IP address, else 0."""
    try:
        if ":" in value:
            socket.inet_pton(socket.AF_INET6, value)
            return 28
        socket.inet_pton(socket.AF_INET, value)
        return 1
    except (OSError, TypeError):
        return 0


def iso_ts(text: str) -> float:
    """An ISO 8601 time ("2026-11-02T09:00:04.840790+0000", "...Z") as epoch seconds; naive is UTC."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def epoch(value: object) -> float:
    """A time as epoch seconds from a number, a numeric string or an ISO 8601 string."""
    if type(value) is float or type(value) is int:
        t = float(value)  # type: ignore[arg-type]
    elif type(value) is str:
        try:
            t = float(value)
        except ValueError:
            return iso_ts(value)
    else:
        raise TypeError("time")
    if not math.isfinite(t):
        raise ValueError("time")
    return t


def count(value: object) -> int:
    """A non-negative integer field (ports, byte and packet counts)."""
    n = int(value)  # type: ignore[call-overload]
    if n < 0:
        raise ValueError("negative count")
    return n


def port(value: object) -> int:
    """A TCP/UDP port number."""
    n = int(value)  # type: ignore[call-overload]
    if not 0 <= n <= 0xFFFF:
        raise ValueError("port")
    return n


_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def unescape(text: str) -> str:
    """Undo the \\xHH escapes Zeek writes for separators and non-printable bytes."""
    return _ESCAPE.sub(lambda m: chr(int(m[1], 16)), text) if "\\x" in text else text


def hostname(value: object) -> str | None:
    """A DNS name as the sensor keeps it: lower case, no trailing dot; None when empty."""
    if type(value) is not str:
        return None
    name = unescape(value).strip().rstrip(".").lower()
    return name or None


def host_of_authority(value: object) -> str | None:
    """The host of "host", "host:port", "[v6]:port" or an absolute URL, as `hostname`."""
    if type(value) is not str:
        return None
    text = value.strip()
    if "://" in text:
        text = text.split("://", 1)[1].split("/", 1)[0]
    if text.startswith("["):
        end = text.find("]")
        return hostname(text[1:end]) if end > 0 else None
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    return hostname(text)


def http_name(method: object, host: object, target: object) -> tuple[NameKind, str | None]:
    """What an HTTP request names, as the packet path's HTTP decoder reads it: a CONNECT its
    target's authority (the Host header if that is missing), any other method its Host header."""
    if str(method).upper() == "CONNECT":
        return "connect", host_of_authority(target) or host_of_authority(host)
    return "http", host_of_authority(host)


# ---------------------------------------------------------------------------
# Anomaly names shared by both readers (each module prefixes them with its own name)
# ---------------------------------------------------------------------------


def reader_anomalies(prefix: str, flow_log: str, name_logs: str) -> dict[str, str]:
    """The anomaly names every log reader counts, for a reader named `prefix`."""
    return {
        f"{prefix}.json_invalid": "a line of a JSON log is not a JSON object",
        f"{prefix}.missing_field": "a log row lacks a field the sensor needs (time, addresses, ports, id)",
        f"{prefix}.bad_value": "a log field does not parse (time, address, port, count)",
        f"{prefix}.names_evicted": f"a {name_logs} row waited past the pending bound for its {flow_log};"
                                   " reported without counts",
        f"{prefix}.flow_missing": f"a {name_logs} row had no {flow_log} by the end of the input;"
                                  " reported without counts",
        f"{prefix}.read_error": "a log file could not be read to its end (I/O error, corrupt gzip)",
    }


def parse_json_object(line: str, invalid: Anomaly) -> dict[str, Any] | Anomaly:
    """One JSON log line as a dict, or `invalid` if it is not a JSON object."""
    try:
        obj = json.loads(line)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes
        return invalid
    except RecursionError:
        return invalid
    return obj if type(obj) is dict else invalid


RowBuilder = Callable[..., "Row | None"]


def build_row(
    builder: RowBuilder, obj: dict[str, Any], arg: Any, missing: Anomaly, bad: Anomaly
) -> Row | Anomaly | None:
    """Call a row builder on one parsed line; a missing field or a value that does not parse
    becomes `missing` / `bad` instead of an exception."""
    try:
        return builder(obj, arg)
    except KeyError:
        return missing
    except (ValueError, TypeError, OSError, AttributeError, OverflowError, IndexError):
        return bad


# ---------------------------------------------------------------------------
# Join: name rows + flow rows -> FlowRecord (pure)
# ---------------------------------------------------------------------------

_PRIORITY = {"connect": 0, "tls": 1, "quic": 1, "http": 2}  # which row names a connection


def join_flow(rec: FlowRecord, names: Sequence[NameRow]) -> FlowRecord:
    """Fill `rec` (from a flow row) with what its name rows say, as the packet path would:
    a proxy CONNECT names the flow before the TLS inside it, TLS/QUIC SNI before a Host header;
    a UDP flow named by TLS is QUIC. Returns `rec`."""
    best: NameRow | None = None
    for row in names:
        if row.name is not None and (best is None or _PRIORITY[row.kind] < _PRIORITY[best.kind]):
            best = row
        if row.kind in ("tls", "quic"):
            rec.ja4 = rec.ja4 or row.ja4
            rec.alpn = rec.alpn or row.alpn
        elif row.user_agent and rec.user_agent is None:
            rec.user_agent = row.user_agent
    quic = rec.proto == UDP and (rec.app == "quic" or any(r.kind in ("tls", "quic") for r in names))
    if quic:
        rec.app, rec.transport = "quic", "quic"
    elif not rec.app and names:
        rec.app = "http" if names[0].kind in ("http", "connect") else "tls"
    if best is None:
        return rec
    if best.name in ECH_PUBLIC_NAMES:
        rec.ech = True  # the outer name of Encrypted Client Hello: the DNS cache may say more
        return rec
    rec.server_name = best.name
    if best.kind == "connect":
        rec.evidence = Evidence.HTTP_CONNECT
    elif best.kind == "http":
        rec.evidence = Evidence.HTTP_HOST
    else:
        rec.evidence = Evidence.QUIC_SNI if quic else Evidence.TLS_SNI
    return rec


def unjoined_flow(names: Sequence[NameRow]) -> FlowRecord:
    """A flow made from name rows alone (no flow row came): addresses and name, no counts."""
    first = names[0]
    proto = UDP if first.kind == "quic" else TCP
    rec = FlowRecord(first.ts, first.ts, first.client, first.server, first.client_port, first.server_port,
                     proto, 0, 0, 0, EndReason.EOF, transport="udp" if proto == UDP else "tcp")
    return join_flow(rec, names)


def is_dns_datagram_flow(rec: FlowRecord) -> bool:
    """A UDP flow on a DNS port: the packet path makes lookups of it, never a flow."""
    return rec.proto == UDP and (rec.server_port in DNS_UDP_PORTS or rec.client_port in DNS_UDP_PORTS)


# ---------------------------------------------------------------------------
# Joiner: the bounded state between rows and items
# ---------------------------------------------------------------------------


class Joiner:
    """Keeps name rows until their flow row, and items until their turn (see the module doc)."""

    __slots__ = ("_heap", "_names", "_seq", "max_items", "max_names", "now", "prefix", "stats", "window")

    def __init__(self, prefix: str, stats: Stats, window: float = REORDER_WINDOW,
                 max_items: int = MAX_REORDER_ITEMS, max_names: int = MAX_PENDING_NAMES) -> None:
        self.prefix = prefix
        self.stats = stats
        self.window = window
        self.max_items = max_items
        self.max_names = max_names
        self.now = float("-inf")  # the newest write time read
        self._names: OrderedDict[str | int, list[NameRow]] = OrderedDict()
        self._heap: list[tuple[float, int, FlowRow | DnsItem | FlowRecord]] = []
        self._seq = 0  # keeps equal times in arrival order

    def add(self, row: Row) -> None:
        """Take one row (in write-time order)."""
        t = write_time(row)
        self.now = max(self.now, t)
        if type(row) is NameRow:
            names = self._names.get(row.key)
            if names is None:
                self._names[row.key] = [row]
                if len(self._names) > self.max_names:
                    _key, old = self._names.popitem(last=False)
                    self.stats.anomaly(self.prefix + ".names_evicted")
                    self._push(old[0].ts, unjoined_flow(old))
            elif len(names) < MAX_NAMES_PER_FLOW:
                names.append(row)
        elif type(row) is FlowRow:
            if not is_dns_datagram_flow(row.rec):
                self._push(row.rec.first_ts, row)
        else:
            self._push(row.ts, row)  # type: ignore[union-attr]

    def _push(self, ts: float, item: FlowRow | DnsItem | FlowRecord) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (ts, self._seq, item))

    def ready(self) -> Iterator[LogItem]:
        """Items whose time is at least `window` before the newest row read (or over the bound)."""
        heap = self._heap
        limit = self.now - self.window
        while heap and (heap[0][0] <= limit or len(heap) > self.max_items):
            yield self._item(heapq.heappop(heap)[2])

    def drain(self) -> Iterator[LogItem]:
        """End of input: every item left; name rows that never met a flow row become flows."""
        heap = self._heap
        waiting = {entry.key for _ts, _seq, entry in heap if type(entry) is FlowRow}
        for key, names in list(self._names.items()):
            if key not in waiting:
                del self._names[key]
                self.stats.anomaly(self.prefix + ".flow_missing")
                self._push(names[0].ts, unjoined_flow(names))
        while heap:
            yield self._item(heapq.heappop(heap)[2])

    def _item(self, entry: FlowRow | DnsItem | FlowRecord) -> LogItem:
        if type(entry) is FlowRow:
            # Joined when it leaves the heap: by then every name row written before the
            # flow ended has been read, even from a file that lags behind.
            return FlowItem(join_flow(entry.rec, self._names.pop(entry.key, ())))
        if type(entry) is FlowRecord:
            return FlowItem(entry)
        return entry  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Files and lines
# ---------------------------------------------------------------------------

GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 16


def read_lines(path: Path, prefix: str, stats: Stats) -> Iterator[str]:
    """The lines of a plain or gzip (possibly multi-member) log file, without line ends.

    An unreadable file counts `files_failed`; an error part-way (I/O, corrupt or cut gzip)
    ends the file after its last whole line and counts `<prefix>.read_error`. Never raises.
    Bytes that are not UTF-8 are replaced (names are ASCII; nothing else is used).
    """
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        stats.files_failed += 1
        stats.anomaly(prefix + ".read_error")
        return
    stats.files_read += 1
    with raw:
        chunks = _gunzip(raw) if raw.peek(2)[:2] == GZIP_MAGIC else _plain(raw)
        rest = b""
        try:
            for chunk in chunks:
                data = rest + chunk if rest else chunk
                lines = data.split(b"\n")
                rest = lines.pop()
                if len(rest) > MAX_LINE:
                    rest = b""  # a runaway line: dropped (its tail then fails to parse and is counted)
                for line in lines:
                    yield line.decode("utf-8", "replace").rstrip("\r")
        except (OSError, EOFError, zlib.error):
            stats.anomaly(prefix + ".read_error")
            return
        if rest:
            yield rest.decode("utf-8", "replace").rstrip("\r")


def _plain(raw: BinaryIO) -> Iterator[bytes]:
    while chunk := raw.read(_READ_CHUNK):
        yield chunk


def _gunzip(raw: BinaryIO) -> Iterator[bytes]:
    """Decompressed chunks; members follow one another (rotated logs are often concatenated).
    A cut stream raises EOFError, a corrupt one OSError/zlib.error, after the good part."""
    with gzip.GzipFile(fileobj=raw) as z:
        while chunk := z.read1(_READ_CHUNK):
            yield chunk


ParseLine = Callable[[str], "Row | Anomaly | None"]


def file_rows(path: Path, prefix: str, stats: Stats, parse_line: ParseLine) -> Iterator[Row]:
    """The rows of one log file in file order: `parse_line` on every non-empty line, its
    anomalies counted, its Nones (lines that cannot matter) passed over."""
    anomaly = stats.anomaly
    for line in read_lines(path, prefix, stats):
        if not line:
            continue
        row = parse_line(line)
        if row is None:
            continue
        if type(row) is Anomaly:
            anomaly(row.kind)
        else:
            yield row  # type: ignore[misc]


def merged(streams: Sequence[Iterator[Row]]) -> Iterator[Row]:
    """Rows of several files in write-time order (each file is in its own write order)."""
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=write_time)


def joined(rows: Iterable[Row], joiner: Joiner) -> Iterator[LogItem]:
    """Items from time-ordered rows (see the module doc)."""
    add, heap, window, bound = joiner.add, joiner._heap, joiner.window, joiner.max_items
    for row in rows:
        add(row)
        if heap and (heap[0][0] <= joiner.now - window or len(heap) > bound):
            yield from joiner.ready()
    yield from joiner.drain()


# ---------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------

LogFormat = Literal["zeek", "suricata"]

# Files looked at in a directory before giving up on recognising it.
MAX_SNIFF_FILES = 32


def detect_format(path: Path) -> LogFormat | None:
    """"zeek" or "suricata" for a log file or a directory of them (from the first line's content),
    or None when it is neither (a capture, an empty file, anything else). Never raises."""
    path = Path(path)
    try:
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
            for f in files[:MAX_SNIFF_FILES]:
                found = _sniff(f)
                if found is not None:
                    return found
            return None
        return _sniff(path)
    except OSError:
        return None


def _sniff(path: Path) -> LogFormat | None:
    lines = read_lines(path, "sniff", Stats())
    try:
        for line in lines:
            if line.strip():
                return sniff_line(line.strip())
        return None
    finally:
        lines.close()


def sniff_line(line: str) -> LogFormat | None:
    """The format of a log's first line: Zeek TSV header, Zeek JSON row, Suricata EVE event."""
    if line.startswith(("#separator", "#fields", "#path")):
        return "zeek"
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if "event_type" in obj:
        return "suricata"
    if "uid" in obj or "_path" in obj or "id.orig_h" in obj or "id" in obj:
        return "zeek"
    return None
