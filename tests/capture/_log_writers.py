"""Test-only writers of Zeek logs (TSV, JSON; plain or gzip) and Suricata EVE files, made from a
truth manifest of `detector.synth` (what the generated capture holds), as those sensors would
write them for the same traffic: names at handshake time, counts when the flow ends, every file
in its sensor's write order.

The truth has no flow durations; flows here last `duration(rec)` seconds (deterministic), so
events made from these logs have other durations than the capture's, and nothing else differs.

Also here, shared by test_zeeklog and test_suricata: the sample fixtures, running items and
captures through the real pipeline, and the event/truth keys the tests compare.
"""

from __future__ import annotations

import gzip as gz
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from detector.app import build_classifier
from detector.capture.logjoin import LogItem, feed
from detector.config import Config, load
from detector.model import Stats, UsageEvent
from detector.pipeline import Pipeline
from detector.synth.office import generate_sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_helpers import run_capture

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_PCAP = ROOT / "samples" / "office-sample.pcap"
SAMPLE_TRUTH = ROOT / "samples" / "office-sample.truth.json"

QTYPES = {"A": 1, "AAAA": 28, "CNAME": 5, "HTTPS": 65}
TTL = 300  # the truth has no TTLs; long enough for every flow that follows its lookup
RTT = 0.02  # seconds from a connection's first packet to its ClientHello / request
ETHERNET = 14


def sample_files(tmp_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The bundled sample capture and its truth; generated into tmp_dir when the repository has none."""
    pcap, truth = SAMPLE_PCAP, SAMPLE_TRUTH
    if not (pcap.exists() and truth.exists()):
        pcap, truth = tmp_dir / "office-sample.pcap", tmp_dir / "office-sample.truth.json"
        generate_sample(pcap, truth)
    return pcap, json.loads(truth.read_text())


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Fixture: (sample capture, its truth document)."""
    return sample_files(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def pcap_events(sample: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> list[UsageEvent]:
    """Fixture: the AI events of the sample capture analysed packet by packet."""
    return run_pcap(sample[0], config(tmp_path_factory.mktemp("cfg")))


def epoch_of(iso: str) -> float:
    """A truth time ("2026-11-02T09:00:02.269365Z") as epoch seconds."""
    return datetime.fromisoformat(iso).timestamp()


def duration(rec: Mapping[str, Any]) -> float:
    """How long a truth flow lasts in these logs."""
    return 2.0 + rec["id"] % 5


def _split(total: int) -> tuple[int, int]:
    return total - total // 2, total // 2


def _is_quic(rec: Mapping[str, Any]) -> bool:
    return rec["transport"] == "quic"


# ---------------------------------------------------------------------------
# Zeek
# ---------------------------------------------------------------------------

_ID_FIELDS = [("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
              ("id.resp_h", "addr"), ("id.resp_p", "port")]

ZEEK_SCHEMAS: dict[str, list[tuple[str, str]]] = {
    "conn": [*_ID_FIELDS, ("proto", "enum"), ("service", "string"), ("duration", "interval"),
             ("orig_bytes", "count"), ("resp_bytes", "count"), ("conn_state", "string"), ("local_orig", "bool"),
             ("local_resp", "bool"), ("missed_bytes", "count"), ("history", "string"), ("orig_pkts", "count"),
             ("orig_ip_bytes", "count"), ("resp_pkts", "count"), ("resp_ip_bytes", "count"),
             ("tunnel_parents", "set[string]")],
    "ssl": [*_ID_FIELDS, ("version", "string"), ("cipher", "string"), ("curve", "string"), ("server_name", "string"),
            ("resumed", "bool"), ("last_alert", "string"), ("next_protocol", "string"), ("established", "bool"),
            ("ssl_history", "string"), ("cert_chain_fps", "vector[string]"), ("client_cert_chain_fps", "vector[string]"),
            ("sni_matches_cert", "bool"), ("ja4", "string")],
    "quic": [*_ID_FIELDS, ("version", "string"), ("client_initial_dcid", "string"), ("client_scid", "string"),
             ("server_scid", "string"), ("server_name", "string"), ("client_protocol", "string"), ("history", "string")],
    "http": [*_ID_FIELDS, ("trans_depth", "count"), ("method", "string"), ("host", "string"), ("uri", "string"),
             ("referrer", "string"), ("version", "string"), ("user_agent", "string"), ("origin", "string"),
             ("request_body_len", "count"), ("response_body_len", "count"), ("status_code", "count"),
             ("status_msg", "string"), ("tags", "set[enum]"), ("proxied", "set[string]")],
    "dns": [*_ID_FIELDS, ("proto", "enum"), ("trans_id", "count"), ("rtt", "interval"), ("query", "string"),
            ("qclass", "count"), ("qclass_name", "string"), ("qtype", "count"), ("qtype_name", "string"),
            ("rcode", "count"), ("rcode_name", "string"), ("AA", "bool"), ("TC", "bool"), ("RD", "bool"),
            ("RA", "bool"), ("Z", "count"), ("answers", "vector[string]"), ("TTLs", "vector[interval]"),
            ("rejected", "bool")],
}


def _ids(uid: str, ts: float, rec: Mapping[str, Any]) -> dict[str, Any]:
    return {"ts": ts, "uid": uid, "id.orig_h": rec["client"], "id.orig_p": rec["client_port"],
            "id.resp_h": rec["server_ip"], "id.resp_p": rec["server_port"]}


def zeek_rows(records: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows Zeek would log for the truth's lookups and flows, per log, in its write order."""
    logs: dict[str, list[tuple[float, dict[str, Any]]]] = {name: [] for name in ZEEK_SCHEMAS}
    for rec in records:
        uid = f"C{rec['id']:05d}zk"
        ts = epoch_of(rec["ts"])
        up_pkts, down_pkts = _split(rec["packets"])
        if rec["kind"] == "dns":
            end = ts + 0.001
            logs["conn"].append((end, {**_ids(uid, ts, rec), "proto": "udp", "service": "dns", "duration": 0.001,
                                       "orig_bytes": rec["bytes_up"] - 28, "resp_bytes": rec["bytes_down"] - 28,
                                       "conn_state": "SF", "history": "Dd", "orig_pkts": 1, "orig_ip_bytes": rec["bytes_up"],
                                       "resp_pkts": 1, "resp_ip_bytes": rec["bytes_down"]}))
            answers = [*rec["cnames"], *rec["answers"]]
            logs["dns"].append((ts, {**_ids(uid, ts, rec), "proto": "udp", "trans_id": rec["id"] * 7 & 0xFFFF,
                                     "rtt": 0.001, "query": rec["name"], "qclass": 1, "qclass_name": "C_INTERNET",
                                     "qtype": QTYPES[rec["qtype"]], "qtype_name": rec["qtype"], "rcode": 0,
                                     "rcode_name": "NOERROR", "AA": False, "TC": False, "RD": True, "RA": True, "Z": 0,
                                     "answers": answers, "TTLs": [float(TTL)] * len(answers), "rejected": False}))
            continue
        quic = _is_quic(rec)
        end = ts + duration(rec)
        service = {"quic-sni": "quic,ssl", "http-host": "http", "http-connect": "http"}.get(rec["evidence"], "ssl")
        logs["conn"].append((end, {**_ids(uid, ts, rec), "proto": "udp" if quic else "tcp", "service": service,
                                   "duration": duration(rec), "orig_bytes": max(0, rec["bytes_up"] - 52 * up_pkts),
                                   "resp_bytes": max(0, rec["bytes_down"] - 52 * down_pkts), "conn_state": "SF",
                                   "local_orig": True, "local_resp": False, "missed_bytes": 0,
                                   "history": "Dd" if quic else "ShADadFf", "orig_pkts": up_pkts,
                                   "orig_ip_bytes": rec["bytes_up"], "resp_pkts": down_pkts,
                                   "resp_ip_bytes": rec["bytes_down"], "tunnel_parents": []}))
        t_hello = ts + RTT
        if rec["evidence"] in ("http-host", "http-connect"):
            connect = rec["evidence"] == "http-connect"
            logs["http"].append((t_hello, {**_ids(uid, t_hello, rec), "trans_depth": 1,
                                           "method": "CONNECT" if connect else "GET", "host": rec["name"],
                                           "uri": f"{rec['name']}:443" if connect else "/", "version": "1.1",
                                           "user_agent": "Mozilla/5.0", "request_body_len": 0,
                                           "response_body_len": 0, "status_code": 200, "status_msg": "OK",
                                           "tags": []}))
        if "sni" in rec:  # a TLS ClientHello (direct, or inside the proxy tunnel), or a QUIC Initial
            t_tls = t_hello + (RTT if rec["evidence"] == "http-connect" else 0.0)
            logs["ssl"].append((t_tls, {**_ids(uid, t_tls, rec), "version": "TLSv13", "cipher": "TLS_AES_128_GCM_SHA256",
                                        "server_name": rec["sni"], "resumed": False, "next_protocol": "h3" if quic else "h2",
                                        "established": True, "ssl_history": "CsiI", "cert_chain_fps": [],
                                        "client_cert_chain_fps": [], "sni_matches_cert": True,
                                        "ja4": f"{'q' if quic else 't'}13d1516h2_8daaf6152771_e5627efa2ab1"}))
            if quic:
                logs["quic"].append((t_tls, {**_ids(uid, t_tls, rec), "version": "1", "client_initial_dcid": "0102030405060708",
                                             "client_scid": "", "server_scid": "0a0b", "server_name": rec["sni"],
                                             "client_protocol": "h3", "history": "ISisH"}))
    return {name: [row for _t, row in sorted(rows, key=lambda r: r[0])] for name, rows in logs.items()}


def _tsv_value(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind.startswith(("set[", "vector[")):
        return ",".join(_tsv_value(v, kind[kind.index("[") + 1:-1]) for v in value) if value else "(empty)"
    if kind == "bool":
        return "T" if value else "F"
    if kind in ("time", "interval"):
        return f"{value:.6f}"
    text = str(value)
    return text.replace("\t", "\\x09").replace(",", "\\x2c") if text else "(empty)"


def zeek_tsv(path_name: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """A whole Zeek ASCII log: headers, rows, #close."""
    schema = ZEEK_SCHEMAS[path_name]
    lines = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-",
             f"#path\t{path_name}", "#open\t2026-11-02-09-00-00",
             "#fields\t" + "\t".join(f for f, _ in schema), "#types\t" + "\t".join(t for _, t in schema)]
    lines += ["\t".join(_tsv_value(row.get(f), t) for f, t in schema) for row in rows]
    lines.append("#close\t2026-11-02-10-00-00")
    return "\n".join(lines) + "\n"


def zeek_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """JSON lines as LogAscii::use_json writes them (unset fields left out)."""
    return "".join(json.dumps({k: v for k, v in row.items() if v is not None}, separators=(",", ":")) + "\n"
                   for row in rows)


def write_zeek(records: Iterable[Mapping[str, Any]], out_dir: Path, fmt: str = "tsv", *, gzip: bool = False) -> list[Path]:
    """One file per log (conn.log …, or rotated names ending .log.gz when gzip) in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in zeek_rows(records).items():
        text = zeek_tsv(name, rows) if fmt == "tsv" else zeek_json(rows)
        if gzip:
            path = out_dir / f"{name}.09:00:00-10:00:00.log.gz"
            path.write_bytes(gz.compress(text.encode()))
        else:
            path = out_dir / f"{name}.log"
            path.write_text(text)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------
# Suricata EVE
# ---------------------------------------------------------------------------


def iso(ts: float) -> str:
    """An EVE timestamp: "2026-11-02T09:00:04.840790+0000"."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def _head(ts: float, fid: int, kind: str, rec: Mapping[str, Any], *, reverse: bool = False, proto: str = "") -> dict[str, Any]:
    ends = [("src_ip", rec["client"]), ("src_port", rec["client_port"]),
            ("dest_ip", rec["server_ip"]), ("dest_port", rec["server_port"])]
    if reverse:
        ends = [("src_ip", rec["server_ip"]), ("src_port", rec["server_port"]),
                ("dest_ip", rec["client"]), ("dest_port", rec["client_port"])]
    proto = proto or ("UDP" if rec["kind"] == "dns" or _is_quic(rec) else "TCP")
    return {"timestamp": iso(ts), "flow_id": fid, "in_iface": "eth1", "event_type": kind, **dict(ends), "proto": proto}


def _dns_events(rec: Mapping[str, Any], ts: float, fid: int, version: int) -> list[tuple[float, dict[str, Any]]]:
    txid = rec["id"] * 7 & 0xFFFF
    qtype = rec["qtype"]
    answers = []
    owner = rec["name"]
    for target in rec["cnames"]:
        answers.append({"rrname": owner, "rrtype": "CNAME", "ttl": TTL, "rdata": target})
        owner = target
    for addr in rec["answers"]:
        answers.append({"rrname": owner, "rrtype": "AAAA" if ":" in addr else "A", "ttl": TTL, "rdata": addr})
    t_ans = ts + 0.001
    if version == 3:
        query = {"version": 3, "type": "request", "tx_id": 0, "id": txid, "flags": "100", "rd": True, "opcode": 0,
                 "rcode": "NOERROR", "queries": [{"rrname": rec["name"], "rrtype": qtype}]}
        answer = {"version": 3, "type": "response", "tx_id": 0, "id": txid, "flags": "8180", "qr": True, "rd": True,
                  "ra": True, "opcode": 0, "rcode": "NOERROR", "queries": [{"rrname": rec["name"], "rrtype": qtype}]}
    else:
        query = {"type": "query", "id": txid, "rrname": rec["name"], "rrtype": qtype, "tx_id": 0, "opcode": 0}
        answer = {"version": 2, "type": "answer", "id": txid, "flags": "8180", "qr": True, "rd": True, "ra": True,
                  "opcode": 0, "rrname": rec["name"], "rrtype": qtype, "rcode": "NOERROR"}
    if answers and version == 2 and rec["id"] % 2:  # every other v2 answer in the "grouped" format
        grouped: dict[str, list[str]] = {}
        for a in answers:
            grouped.setdefault(a["rrtype"], []).append(a["rdata"])
        answer["grouped"] = grouped
    elif answers:
        answer["answers"] = answers
    return [(ts, {**_head(ts, fid, "dns", rec), "dns": query}),
            (t_ans, {**_head(t_ans, fid, "dns", rec, reverse=True), "dns": answer})]


def eve_events(records: Iterable[Mapping[str, Any]], dns_version: int = 2,
               link_header_len: int = ETHERNET) -> list[dict[str, Any]]:
    """The events Suricata would write for the truth, in its write order (flows at their end)."""
    out: list[tuple[float, dict[str, Any]]] = []
    for rec in records:
        fid = 1_000_000_000 + rec["id"]
        ts = epoch_of(rec["ts"])
        up_pkts, down_pkts = _split(rec["packets"])
        if rec["kind"] == "dns":
            out += _dns_events(rec, ts, fid, dns_version)
            end, app = ts + 0.001, "dns"
        else:
            quic = _is_quic(rec)
            end = ts + duration(rec)
            t_hello = ts + RTT
            app = "quic" if quic else "http" if rec["evidence"] in ("http-host", "http-connect") else "tls"
            if rec["evidence"] in ("http-host", "http-connect"):
                connect = rec["evidence"] == "http-connect"
                out.append((t_hello, {**_head(t_hello, fid, "http", rec), "http": {
                    "hostname": rec["name"], "url": f"{rec['name']}:443" if connect else "/",
                    "http_user_agent": "Mozilla/5.0", "http_method": "CONNECT" if connect else "GET",
                    "protocol": "HTTP/1.1", "status": 200, "length": 0}}))
            if "sni" in rec:
                tls = {"version": "TLS 1.3", "ja4": f"{'q' if quic else 't'}13d1516h2_8daaf6152771_e5627efa2ab1"}
                if rec["sni"]:
                    tls["sni"] = rec["sni"]
                if quic:
                    out.append((t_hello, {**_head(t_hello, fid, "quic", rec), "quic": {
                        "version": "1", **tls, "extensions": [{"name": "alpn", "type": 16, "values": ["h3"]}]}}))
                else:
                    t_tls = t_hello + (RTT if rec["evidence"] == "http-connect" else 0.0)
                    out.append((t_tls, {**_head(t_tls, fid, "tls", rec), "tls": tls}))
        flow = {"pkts_toserver": up_pkts, "pkts_toclient": down_pkts,
                "bytes_toserver": rec["bytes_up"] + link_header_len * up_pkts,
                "bytes_toclient": rec["bytes_down"] + link_header_len * down_pkts,
                "start": iso(ts), "end": iso(end), "age": int(end - ts), "state": "closed", "reason": "timeout",
                "alerted": False}
        event = {**_head(ts, fid, "flow", rec), "app_proto": app, "flow": flow}
        if event["proto"] == "TCP":
            event["tcp"] = {"tcp_flags": "1b", "tcp_flags_ts": "1b", "tcp_flags_tc": "1b", "syn": True, "fin": True,
                            "psh": True, "ack": True, "state": "closed"}
        out.append((end, event))
    out.sort(key=lambda e: e[0])
    return [e for _t, e in out]


def write_eve(records: Iterable[Mapping[str, Any]], path: Path, dns_version: int = 2, *, gzip: bool = False,
              extra: Sequence[Mapping[str, Any]] = ()) -> Path:
    """An eve.json of the truth's events (plus `extra` events first, e.g. stats or alerts)."""
    events = [*extra, *eve_events(records, dns_version)]
    text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
    if gzip:
        path.write_bytes(gz.compress(text.encode()))
    else:
        path.write_text(text)
    return path


# ---------------------------------------------------------------------------
# Running logs and captures through the real pipeline, and what to compare
# ---------------------------------------------------------------------------


def config(tmp_dir: Path) -> Config:
    """Defaults, no database, raw client addresses (so events compare with the truth)."""
    return load(None, {"privacy.key_file": str(tmp_dir / "key"), "store.path": "", "sensor.name": "test",
                       "privacy.raw_clients": True})


def run_items(items: Iterable[LogItem], cfg: Config) -> tuple[list[UsageEvent], Stats]:
    """The events the pipeline makes of log items (AI services only), and its counters."""
    events: list[UsageEvent] = []
    stats = Stats()
    pipe = Pipeline(cfg, build_classifier(cfg), events.append, stats)
    feed(items, pipe)
    pipe.finish()
    return events, stats


def run_pcap(path: Path, cfg: Config) -> list[UsageEvent]:
    """The events the pipeline makes of the capture itself (AI services only)."""
    events, _stats = run_capture(path, cfg, include_all=False)
    return events


FlowKey = tuple[str, str, str, int, str, str, str, str, int, int, int]


def event_flows(events: Iterable[UsageEvent]) -> Counter[FlowKey]:
    """Flow events as (kind, client, server, port, service, name, transport, evidence, bytes up/down, packets)."""
    return Counter((e.kind, e.client, e.server_ip, e.server_port, e.service, e.server_name, e.transport, e.evidence,
                    e.bytes_up, e.bytes_down, e.packets) for e in events if e.kind != "dns")


def truth_flows(records: Iterable[Mapping[str, Any]]) -> Counter[FlowKey]:
    """The truth's AI flows in the shape of `event_flows`."""
    return Counter((r["kind"], r["client"], r["server_ip"], r["server_port"], r["service"], r["name"], r["transport"],
                    r["evidence"], r["bytes_up"], r["bytes_down"], r["packets"])
                   for r in records if r["kind"] != "dns" and r["service"])


def event_lookups(events: Iterable[UsageEvent]) -> Counter[tuple[str, str, str]]:
    """DNS events as (client, service, name)."""
    return Counter((e.client, e.service, e.server_name) for e in events if e.kind == "dns")


def truth_lookups(records: Sequence[Mapping[str, Any]]) -> Counter[tuple[str, str, str]]:
    """The truth's AI lookups as `event_lookups`; a resolver's own name (dns.google before a DoH
    flow) is not a lookup event: only the flow to the resolver is reported."""
    resolvers = {r["service"] for r in records if r["kind"] == "encrypted-dns"}
    return Counter((r["client"], r["service"], r["name"]) for r in records
                   if r["kind"] == "dns" and r["service"] and r["service"] not in resolvers)
