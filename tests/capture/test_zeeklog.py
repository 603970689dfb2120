"""Tests for detector.capture.zeeklog (and the join in logjoin): each log's line formats (TSV and
JSON), malformed lines, missing fields, gzip, unknown logs, the uid join, ordering and bounds;
then Zeek logs written from the bundled sample's truth, through the real pipeline, against the
truth and against the analysis of the capture itself."""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path

import _log_writers as W
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.capture import zeeklog
from detector.capture.logjoin import DnsItem, FlowItem, FlowRow, NameRow, detect_format
from detector.capture.pcapfile import CaptureError
from detector.capture.zeeklog import (
    ANOMALIES,
    TsvHeader,
    iter_records,
    parse_json_row,
    parse_tsv_header,
    parse_tsv_row,
    zeek_row,
)
from detector.model import TCP, UDP, Anomaly, DnsAnswer, EndReason, Evidence, Stats


def ip(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


ID = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"]
CONN_FIELDS = [*ID, "proto", "service", "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig",
               "local_resp", "missed_bytes", "history", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
               "tunnel_parents"]
SSL_FIELDS = [*ID, "version", "cipher", "curve", "server_name", "resumed", "last_alert", "next_protocol", "established",
              "ssl_history", "ja4"]
DNS_FIELDS = [*ID, "proto", "trans_id", "rtt", "query", "qclass", "qclass_name", "qtype", "qtype_name", "rcode",
              "rcode_name", "AA", "TC", "RD", "RA", "Z", "answers", "TTLs", "rejected"]
HTTP_FIELDS = [*ID, "trans_depth", "method", "host", "uri", "user_agent"]
QUIC_FIELDS = [*ID, "version", "client_initial_dcid", "client_scid", "server_scid", "server_name", "client_protocol",
               "history"]


def tsv(path: str, fields: list[str], *rows: str) -> str:
    """A Zeek ASCII log as the writer makes it (types elided: the reader ignores #types)."""
    head = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-",
            f"#path\t{path}", "#open\t2026-11-02-09-00-00", "#fields\t" + "\t".join(fields),
            "#types\t" + "\t".join("string" for _ in fields)]
    return "\n".join([*head, *rows, "#close\t2026-11-02-10-00-00"]) + "\n"


def row(*cells: str) -> str:
    return "\t".join(cells)


def header(path: str, fields: list[str]) -> TsvHeader:
    h = TsvHeader()
    for line in tsv(path, fields).splitlines()[:-1]:
        h = parse_tsv_header(line, h)
    return h


# A TCP connection 10.10.1.17:63990 → 104.18.23.73:443, 23.5 s, closed with FIN.
CONN_TLS = row("1793610002.269365", "CabC1", "10.10.1.17", "63990", "104.18.23.73", "443", "tcp", "ssl",
               "23.535415",  # duration
               "5000", "9000",  # orig_bytes, resp_bytes (payload)
               "SF", "T", "F", "0",
               "ShADadFf",  # history: the originator's SYN first
               "20", "6369",  # orig_pkts, orig_ip_bytes
               "21", "10869",  # resp_pkts, resp_ip_bytes
               "(empty)")
SSL_TLS = row("1793610002.300000", "CabC1", "10.10.1.17", "63990", "104.18.23.73", "443", "TLSv13",
              "TLS_AES_128_GCM_SHA256", "x25519", "ChatGPT.com.", "F", "-", "h2", "T", "CsiI",
              "t13d1516h2_8daaf6152771_e5627efa2ab1")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def items_of(*paths: Path, **kw: object) -> tuple[list[DnsItem | FlowItem], Stats]:
    stats = Stats()
    return list(iter_records(list(paths), stats, **kw)), stats  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# TSV headers and rows
# ---------------------------------------------------------------------------


def test_tsv_header_sets_separators_path_and_the_columns_the_log_needs() -> None:
    h = header("conn", CONN_FIELDS)
    assert (h.separator, h.set_separator, h.empty, h.unset, h.path) == ("\t", ",", "(empty)", "-", "conn")
    assert h.fields == tuple(CONN_FIELDS)
    assert ("orig_ip_bytes", 17) in h.columns
    assert "local_orig" not in dict(h.columns)  # a column no builder reads is not kept


def test_tsv_header_with_another_separator() -> None:
    h = parse_tsv_header("#separator \\x7c", TsvHeader())  # "|"
    h = parse_tsv_header("#path|ssl", h)
    h = parse_tsv_header("#fields|ts|uid|server_name", h)
    assert h.separator == "|" and h.path == "ssl" and h.columns == (("ts", 0), ("uid", 1), ("server_name", 2))


def test_tsv_row_leaves_out_unset_fields_and_empties_empty_ones() -> None:
    h = header("conn", CONN_FIELDS)
    cells = CONN_TLS.split("\t")
    cells[7] = "-"  # service unset
    cells[15] = "(empty)"  # history empty
    fields = parse_tsv_row("\t".join(cells), h)
    assert isinstance(fields, dict)
    assert "service" not in fields and fields["history"] == "" and fields["uid"] == "CabC1"


def test_tsv_row_with_a_column_too_few_or_before_any_header_is_an_anomaly() -> None:
    h = header("conn", CONN_FIELDS)
    assert parse_tsv_row(CONN_TLS.rsplit("\t", 1)[0], h) == Anomaly("zeek.tsv_field_count")
    assert parse_tsv_row(CONN_TLS, TsvHeader()) == Anomaly("zeek.tsv_no_header")


# ---------------------------------------------------------------------------
# Rows of each log
# ---------------------------------------------------------------------------


def conn_row(line: str = CONN_TLS) -> FlowRow:
    fields = parse_tsv_row(line, header("conn", CONN_FIELDS))
    out = zeek_row("conn", fields)  # type: ignore[arg-type]
    assert isinstance(out, FlowRow)
    return out


def test_conn_row_is_a_flow_record_with_ip_byte_counts() -> None:
    r = conn_row()
    rec = r.rec
    assert r.key == "CabC1"
    assert (rec.client, rec.client_port, rec.server, rec.server_port, rec.proto) == (
        ip("10.10.1.17"), 63990, ip("104.18.23.73"), 443, TCP)
    assert rec.first_ts == 1793610002.269365 and rec.last_ts == pytest.approx(1793610002.269365 + 23.535415)
    assert (rec.bytes_up, rec.bytes_down, rec.packets) == (6369, 10869, 41)
    assert (rec.app, rec.transport, rec.saw_start, rec.reason) == ("tls", "tcp", True, EndReason.FIN)
    assert rec.server_name is None and rec.evidence is None


def test_conn_row_without_ip_byte_counts_falls_back_to_payload_bytes() -> None:
    cells = CONN_TLS.split("\t")
    cells[17] = cells[19] = "-"  # orig_ip_bytes, resp_ip_bytes unset
    rec = conn_row("\t".join(cells)).rec
    assert (rec.bytes_up, rec.bytes_down) == (5000, 9000)


@pytest.mark.parametrize(("proto", "history", "state", "saw_start"), [
    ("tcp", "ShADadFf", "SF", True),
    ("tcp", "DadA", "OTH", False),  # picked up mid-flow: no SYN from the originator
    ("tcp", "-", "S0", True),  # no history: the state decides
    ("udp", "Dd", "SF", True),
    ("udp", "Dd", "OTH", False),
])
def test_conn_row_saw_start_from_history_or_state(proto: str, history: str, state: str, saw_start: bool) -> None:
    cells = CONN_TLS.split("\t")
    cells[6], cells[15], cells[11] = proto, history, state
    assert conn_row("\t".join(cells)).rec.saw_start is saw_start


@pytest.mark.parametrize(("service", "app"), [("quic,ssl", "quic"), ("http", "http"), ("dns", "dns"), ("-", ""), ("ftp", "")])
def test_conn_service_gives_the_app(service: str, app: str) -> None:
    cells = CONN_TLS.split("\t")
    cells[7] = service
    assert conn_row("\t".join(cells)).rec.app == app


def test_icmp_conn_row_is_nothing() -> None:
    cells = CONN_TLS.split("\t")
    cells[6] = "icmp"
    assert zeek_row("conn", parse_tsv_row("\t".join(cells), header("conn", CONN_FIELDS))) is None  # type: ignore[arg-type]


def test_ssl_row_gives_the_sni_lower_cased_alpn_and_ja4() -> None:
    out = zeek_row("ssl", parse_tsv_row(SSL_TLS, header("ssl", SSL_FIELDS)))  # type: ignore[arg-type]
    assert out == NameRow("CabC1", 1793610002.3, "tls", "chatgpt.com", ip("10.10.1.17"), ip("104.18.23.73"), 63990, 443,
                          ja4="t13d1516h2_8daaf6152771_e5627efa2ab1", alpn=("h2",))


def test_quic_row_gives_the_sni() -> None:
    line = row("1793610004.9", "Cq1", "10.90.1.14", "50576", "142.250.116.245", "443", "1", "0102", "-", "0a0b",
               "gemini.google.com", "h3", "ISisH")
    out = zeek_row("quic", parse_tsv_row(line, header("quic", QUIC_FIELDS)))  # type: ignore[arg-type]
    assert isinstance(out, NameRow) and (out.kind, out.name, out.alpn) == ("quic", "gemini.google.com", ("h3",))


@pytest.mark.parametrize(("method", "host", "uri", "kind", "name"), [
    ("GET", "www.msftconnecttest.com", "/connecttest.txt", "http", "www.msftconnecttest.com"),
    ("GET", "Example.org:8080", "/", "http", "example.org"),  # the port is not part of the name
    ("CONNECT", "-", "capi.grammarly.com:443", "connect", "capi.grammarly.com"),
    ("CONNECT", "proxy.local", "[2001:db8::1]:443", "connect", "2001:db8::1"),  # the authority, not the Host
])
def test_http_row_gives_host_or_connect_authority(method: str, host: str, uri: str, kind: str, name: str) -> None:
    line = row("1793610002.3", "Ch1", "10.10.1.17", "63990", "10.10.0.8", "8080", "1", method, host, uri, "Mozilla/5.0")
    out = zeek_row("http", parse_tsv_row(line, header("http", HTTP_FIELDS)))  # type: ignore[arg-type]
    assert isinstance(out, NameRow) and (out.kind, out.name, out.user_agent) == (kind, name, "Mozilla/5.0")


def dns_item(*cells: str) -> DnsItem:
    out = zeek_row("dns", parse_tsv_row(row(*cells), header("dns", DNS_FIELDS)))  # type: ignore[arg-type]
    assert isinstance(out, DnsItem)
    return out


def test_dns_row_is_a_response_with_a_cname_chain_and_addresses() -> None:
    item = dns_item("1793610004.84079", "Cd1", "10.90.1.14", "58381", "10.10.0.53", "53", "udp",
                    "4660",  # trans_id
                    "0.001", "Chat.OpenAI.com.", "1", "C_INTERNET", "1", "A", "0", "NOERROR", "F", "F", "T", "T", "0",
                    "chat.openai.com.cdn.cloudflare.net,104.18.23.73,2606:4700::6812:1749",  # answers
                    "60.000000,300.000000,300.000000",  # TTLs
                    "F")
    assert (item.ts, item.client, item.server, item.port, item.transport) == (
        1793610004.84079, ip("10.90.1.14"), ip("10.10.0.53"), 53, "udp")
    msg = item.msg
    assert (msg.txid, msg.is_response, msg.rcode, msg.questions) == (4660, True, 0, (("chat.openai.com", 1),))
    assert msg.answers == (
        DnsAnswer("chat.openai.com", 5, 60, "chat.openai.com.cdn.cloudflare.net"),
        DnsAnswer("chat.openai.com.cdn.cloudflare.net", 1, 300, "104.18.23.73"),
        DnsAnswer("chat.openai.com.cdn.cloudflare.net", 28, 300, "2606:4700::6812:1749"),
    )


def test_dns_row_without_an_answer_is_a_query() -> None:
    item = dns_item("1793610004.8", "Cd2", "10.90.1.14", "58381", "10.10.0.53", "53", "udp", "7", "-", "claude.ai",
                    "1", "C_INTERNET", "28", "AAAA", "-", "-", "F", "F", "T", "F", "0", "-", "-", "F")
    assert not item.msg.is_response and item.msg.questions == (("claude.ai", 28),) and item.msg.answers == ()


def test_dns_row_skips_answers_that_are_neither_addresses_nor_names() -> None:
    item = dns_item("1793610004.8", "Cd3", "10.90.1.14", "58381", "10.10.0.53", "53", "tcp", "7", "0.01", "example.org",
                    "1", "C_INTERNET", "16", "TXT", "0", "NOERROR", "F", "F", "T", "T", "0",
                    "TXT 11 v=spf1\\x2c -all,example.net", "60.0,60.0", "F")  # an escaped comma inside the TXT answer
    assert item.transport == "tcp"
    assert item.msg.answers == (DnsAnswer("example.org", 5, 60, "example.net"),)


def test_dns_row_without_a_query_is_nothing() -> None:
    line = row("1793610004.8", "Cd4", "10.90.1.14", "58381", "10.10.0.53", "53", "udp", "7", "-", "-", "-", "-",
               "-", "-", "-", "-", "F", "F", "F", "F", "0", "-", "-", "F")
    assert zeek_row("dns", parse_tsv_row(line, header("dns", DNS_FIELDS))) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# JSON rows
# ---------------------------------------------------------------------------


def test_json_conn_row_equals_the_tsv_one() -> None:
    obj = {"ts": 1793610002.269365, "uid": "CabC1", "id.orig_h": "10.10.1.17", "id.orig_p": 63990,
           "id.resp_h": "104.18.23.73", "id.resp_p": 443, "proto": "tcp", "service": "ssl", "duration": 23.535415,
           "orig_bytes": 5000, "resp_bytes": 9000, "conn_state": "SF", "local_orig": True, "local_resp": False,
           "missed_bytes": 0, "history": "ShADadFf", "orig_pkts": 20, "orig_ip_bytes": 6369, "resp_pkts": 21,
           "resp_ip_bytes": 10869}
    fields = parse_json_row(json.dumps(obj))
    assert isinstance(fields, dict)
    assert zeek_row("conn", fields) == conn_row()


def test_json_row_with_nested_id_and_iso_time() -> None:
    line = json.dumps({"ts": "2026-11-02T09:00:02.300000Z", "uid": "CabC1",
                       "id": {"orig_h": "10.10.1.17", "orig_p": 63990, "resp_h": "104.18.23.73", "resp_p": 443},
                       "server_name": "chatgpt.com", "ja4": "t13d1516h2_8daaf6152771_e5627efa2ab1"})
    out = zeek_row("ssl", parse_json_row(line))  # type: ignore[arg-type]
    assert isinstance(out, NameRow)
    assert (out.ts, out.client, out.server_port, out.name) == (1793610002.3, ip("10.10.1.17"), 443, "chatgpt.com")


def test_json_dns_row_with_lists() -> None:
    line = json.dumps({"ts": 1793610004.84, "uid": "Cd1", "id.orig_h": "10.90.1.14", "id.orig_p": 58381,
                       "id.resp_h": "10.10.0.53", "id.resp_p": 53, "proto": "udp", "trans_id": 4660, "query": "claude.ai",
                       "qtype": 1, "rcode": 0, "answers": ["160.79.104.10"], "TTLs": [300.0]})
    item = zeek_row("dns", parse_json_row(line))  # type: ignore[arg-type]
    assert isinstance(item, DnsItem) and item.msg.answers == (DnsAnswer("claude.ai", 1, 300, "160.79.104.10"),)


@pytest.mark.parametrize(("line", "kind"), [
    ('{"ts": 1.0, "uid": "C1"', "zeek.json_invalid"),  # cut off
    ("[1, 2]", "zeek.json_invalid"),  # not an object
])
def test_json_line_that_is_not_an_object_is_an_anomaly(line: str, kind: str) -> None:
    assert parse_json_row(line) == Anomaly(kind)


@pytest.mark.parametrize(("change", "kind"), [
    ({"uid": None}, "zeek.missing_field"),
    ({"id.resp_h": None}, "zeek.missing_field"),
    ({"id.resp_h": "104.18.23"}, "zeek.bad_value"),
    ({"id.orig_p": "http"}, "zeek.bad_value"),
    ({"ts": "yesterday"}, "zeek.bad_value"),
    ({"orig_ip_bytes": -5}, "zeek.bad_value"),
    ({"uid": 17}, "zeek.bad_value"),
])
def test_conn_row_with_a_missing_or_bad_field_is_an_anomaly(change: dict[str, object], kind: str) -> None:
    obj: dict[str, object] = {"ts": 1.0, "uid": "C1", "id.orig_h": "10.0.0.1", "id.orig_p": 1, "id.resp_h": "10.0.0.2",
                              "id.resp_p": 443, "proto": "tcp", "orig_ip_bytes": 10}
    obj.update(change)
    assert zeek_row("conn", {k: v for k, v in obj.items() if v is not None}) == Anomaly(kind)


def test_every_anomaly_name_is_documented() -> None:
    assert set(ANOMALIES) == {
        "zeek.json_invalid", "zeek.missing_field", "zeek.bad_value", "zeek.names_evicted", "zeek.flow_missing",
        "zeek.read_error", "zeek.tsv_no_header", "zeek.tsv_field_count"}
    assert all(ANOMALIES.values())


# ---------------------------------------------------------------------------
# Files: join by uid, ordering, malformed lines, gzip, unknown logs, directories
# ---------------------------------------------------------------------------


def flows(items: list[DnsItem | FlowItem]) -> list:
    return [i.rec for i in items if isinstance(i, FlowItem)]


def test_ssl_row_names_its_conn_row(tmp_path: Path) -> None:
    write(tmp_path, "conn.log", tsv("conn", CONN_FIELDS, CONN_TLS))
    write(tmp_path, "ssl.log", tsv("ssl", SSL_FIELDS, SSL_TLS))
    items, stats = items_of(tmp_path)
    [rec] = flows(items)
    assert (rec.server_name, rec.evidence, rec.ja4, rec.alpn, rec.bytes_up) == (
        "chatgpt.com", Evidence.TLS_SNI, "t13d1516h2_8daaf6152771_e5627efa2ab1", ("h2",), 6369)
    assert stats.anomalies == {} and stats.files_read == 2


def test_udp_flow_named_by_ssl_and_quic_rows_is_quic(tmp_path: Path) -> None:
    conn = row("1793610004.9", "Cq1", "10.90.1.14", "50576", "142.250.116.245", "443", "udp", "quic,ssl", "1.5", "8000",
               "8000", "SF", "T", "F", "0", "Dd", "10", "8921", "10", "8509", "(empty)")
    ssl = row("1793610004.95", "Cq1", "10.90.1.14", "50576", "142.250.116.245", "443", "TLSv13", "-", "-",
              "gemini.google.com", "F", "-", "h3", "T", "Cs", "-")
    quic = row("1793610004.95", "Cq1", "10.90.1.14", "50576", "142.250.116.245", "443", "1", "0102", "-", "0a0b",
               "gemini.google.com", "h3", "ISisH")
    write(tmp_path, "conn.log", tsv("conn", CONN_FIELDS, conn))
    write(tmp_path, "ssl.log", tsv("ssl", SSL_FIELDS, ssl))
    write(tmp_path, "quic.log", tsv("quic", QUIC_FIELDS, quic))
    [rec] = flows(items_of(tmp_path)[0])
    assert (rec.proto, rec.transport, rec.app, rec.evidence, rec.server_name) == (
        UDP, "quic", "quic", Evidence.QUIC_SNI, "gemini.google.com")


def test_connect_names_a_proxied_flow_before_the_tls_inside_it(tmp_path: Path) -> None:
    conn = CONN_TLS.replace("104.18.23.73\t443", "10.10.0.8\t8080").replace("\tssl\t", "\thttp\t")
    ssl = SSL_TLS.replace("104.18.23.73\t443", "10.10.0.8\t8080").replace("ChatGPT.com.", "inner.example")
    http = row("1793610002.29", "CabC1", "10.10.1.17", "63990", "10.10.0.8", "8080", "1", "CONNECT", "chatgpt.com",
               "chatgpt.com:443", "Mozilla/5.0")
    write(tmp_path, "conn.log", tsv("conn", CONN_FIELDS, conn))
    write(tmp_path, "ssl.log", tsv("ssl", SSL_FIELDS, ssl))
    write(tmp_path, "http.log", tsv("http", HTTP_FIELDS, http))
    [rec] = flows(items_of(tmp_path)[0])
    assert (rec.server_name, rec.evidence, rec.app, rec.user_agent) == (
        "chatgpt.com", Evidence.HTTP_CONNECT, "http", "Mozilla/5.0")


def test_ech_outer_name_leaves_the_flow_to_the_dns_cache(tmp_path: Path) -> None:
    write(tmp_path, "conn.log", tsv("conn", CONN_FIELDS, CONN_TLS))
    write(tmp_path, "ssl.log", tsv("ssl", SSL_FIELDS, SSL_TLS.replace("ChatGPT.com.", "cloudflare-ech.com")))
    [rec] = flows(items_of(tmp_path)[0])
    assert rec.server_name is None and rec.evidence is None and rec.ech


def test_ssl_row_without_conn_row_is_a_flow_without_counts_at_the_end(tmp_path: Path) -> None:
    write(tmp_path, "ssl.log", tsv("ssl", SSL_FIELDS, SSL_TLS))
    items, stats = items_of(tmp_path)
    [rec] = flows(items)
    assert (rec.server_name, rec.bytes_up, rec.packets, rec.reason, rec.proto) == ("chatgpt.com", 0, 0, EndReason.EOF, TCP)
    assert stats.anomalies == {"zeek.flow_missing": 1}


def test_pending_names_are_bounded(tmp_path: Path) -> None:
    ssl2 = SSL_TLS.replace("CabC1", "CabC2").replace("63990", "63991")
    write(tmp_path, "ssl.log", tsv("ssl", SSL_FIELDS, SSL_TLS, ssl2))
    write(tmp_path, "conn.log", tsv("conn", CONN_FIELDS, CONN_TLS))
    items, stats = items_of(tmp_path, max_names=1)
    recs = flows(items)
    # CabC1's name row was pushed out by CabC2's: it is reported on its own, and its conn row nameless.
    assert sorted((r.server_name or "", r.bytes_up) for r in recs) == [("", 6369), ("chatgpt.com", 0), ("chatgpt.com", 0)]
    assert stats.anomalies == {"zeek.names_evicted": 1, "zeek.flow_missing": 1}


def test_udp_dns_conn_rows_and_icmp_make_no_flows(tmp_path: Path) -> None:
    dns_conn = row("1793610004.8", "Cd1", "10.90.1.14", "58381", "10.10.0.53", "53", "udp", "dns", "0.001", "40", "80",
                   "SF", "T", "T", "0", "Dd", "1", "68", "1", "108", "(empty)")
    icmp = row("1793610005.0", "Ci1", "10.90.1.14", "8", "10.10.0.1", "0", "icmp", "-", "0.001", "56", "56",
               "OTH", "T", "T", "0", "-", "1", "84", "1", "84", "(empty)")
    write(tmp_path, "conn.log", tsv("conn", CONN_FIELDS, dns_conn, icmp))
    items, stats = items_of(tmp_path)
    assert items == [] and stats.anomalies == {}


def test_dns_rows_come_before_the_flows_that_start_after_them(tmp_path: Path) -> None:
    dns = row("1793610002.2", "Cd1", "10.10.1.17", "58381", "10.10.0.53", "53", "udp", "7", "0.001", "chatgpt.com",
              "1", "C_INTERNET", "1", "A", "0", "NOERROR", "F", "F", "T", "T", "0", "104.18.23.73", "300.0", "F")
    late_dns = dns.replace("1793610002.2", "1793610030.0").replace("Cd1", "Cd2")
    write(tmp_path, "conn.log", tsv("conn", CONN_FIELDS, CONN_TLS))  # written at 1793610025.8, its end
    write(tmp_path, "dns.log", tsv("dns", DNS_FIELDS, dns, late_dns))
    items, _stats = items_of(tmp_path)
    assert [type(i).__name__ for i in items] == ["DnsItem", "FlowItem", "DnsItem"]
    assert [i.ts for i in items] == sorted(i.ts for i in items)


def test_malformed_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    bad_addr = CONN_TLS.replace("104.18.23.73", "104.18.23.999").replace("CabC1", "Cbad")
    write(tmp_path, "conn.log", tsv("conn", CONN_FIELDS, "garbage", bad_addr, CONN_TLS, CONN_TLS[:40]))
    write(tmp_path, "ssl.json", "\n".join([
        "{not json",
        json.dumps({"_path": "ssl", "ts": 1793610002.3, "uid": "CabC1", "id.orig_h": "10.10.1.17", "id.orig_p": 63990,
                    "id.resp_h": "104.18.23.73", "id.resp_p": 443, "server_name": "chatgpt.com"}),
        json.dumps({"_path": "ssl", "ts": 1793610002.3, "uid": "Cx"}),  # no addresses
        "",
    ]))
    items, stats = items_of(tmp_path / "conn.log", tmp_path / "ssl.json")
    assert [(r.server_name, r.bytes_up) for r in flows(items)] == [("chatgpt.com", 6369)]
    assert stats.anomalies == {"zeek.tsv_field_count": 2, "zeek.bad_value": 1, "zeek.json_invalid": 1,
                               "zeek.missing_field": 1}


def test_gzip_rotated_logs_and_an_hour_out_of_name_order(tmp_path: Path) -> None:
    early = CONN_TLS
    late = CONN_TLS.replace("1793610002.269365", "1793613602.0").replace("CabC1", "CabC2")
    day = tmp_path / "2026-11-02"
    day.mkdir()
    # Names that sort the wrong way round: the reader orders a log's files by their first row.
    (day / "conn.b.log.gz").write_bytes(gzip.compress(tsv("conn", CONN_FIELDS, early).encode()))
    (day / "conn.a.log.gz").write_bytes(gzip.compress(tsv("conn", CONN_FIELDS, late).encode()))
    items, stats = items_of(day)
    assert [i.ts for i in items] == [1793610002.269365, 1793613602.0]
    assert stats.files_read == 2  # peeking at a file's first row is not a read
    assert stats.anomalies == {}


def test_a_log_root_with_a_folder_per_day_is_one_input(tmp_path: Path) -> None:
    for day, uid, ts in (("2026-11-02", "CabC1", "1793610002.269365"), ("2026-11-03", "CabC2", "1793696402.0")):
        folder = tmp_path / day
        folder.mkdir()
        (folder / "conn.09:00:00-10:00:00.log.gz").write_bytes(
            gzip.compress(tsv("conn", CONN_FIELDS, CONN_TLS.replace("CabC1", uid).replace("1793610002.269365", ts)).encode()))
        write(folder, "conn-summary.09:00:00-10:00:00.log", "not read\n")
    (tmp_path / ".state").mkdir()
    write(tmp_path / ".state", "conn.log", "not read\n")
    items, stats = items_of(tmp_path)
    assert [i.ts for i in items] == [1793610002.269365, 1793696402.0] and stats.anomalies == {}


def test_cut_gzip_keeps_the_whole_lines_before_the_cut_and_counts_it(tmp_path: Path) -> None:
    rows = [CONN_TLS.replace("CabC1", f"C{i}").replace("63990", str(40000 + i)) for i in range(400)]
    data = gzip.compress(tsv("conn", CONN_FIELDS, *rows).encode())
    path = tmp_path / "conn.log.gz"
    path.write_bytes(data[: len(data) // 2])
    items, stats = items_of(path)
    assert 0 < len(items) < 400
    assert stats.anomalies.get("zeek.read_error") == 1


def test_unknown_logs_are_ignored(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    write(logs, "x509.log", tsv("x509", ["ts", "id", "certificate.subject"], row("1.0", "F1", "CN=x")))
    write(logs, "weird.log", tsv("weird", ["ts", "uid", "name"], row("1.0", "C1", "bad_TCP_checksum")))
    write(logs, "conn.log", tsv("conn", CONN_FIELDS, CONN_TLS))
    files_json = write(tmp_path, "files.json", json.dumps({"_path": "files", "ts": 1.0, "fuid": "F1"}) + "\n")
    items, stats = items_of(logs, files_json)
    assert len(items) == 1 and stats.anomalies == {}
    assert stats.files_read == 2  # conn.log from the directory, files.json given by name


def test_a_path_that_does_not_exist_raises_before_reading(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="no such file"):
        iter_records([tmp_path / "nope"])


def test_detect_format(tmp_path: Path) -> None:
    tsv_file = write(tmp_path, "conn.log", tsv("conn", CONN_FIELDS, CONN_TLS))
    json_file = write(tmp_path, "j.log", json.dumps({"ts": 1.0, "uid": "C1"}) + "\n")
    eve = write(tmp_path, "eve.json", json.dumps({"timestamp": "2026-11-02T09:00:00+0000", "event_type": "dns"}) + "\n")
    gz = tmp_path / "dns.log.gz"
    gz.write_bytes(gzip.compress(tsv("dns", DNS_FIELDS).encode()))
    other = write(tmp_path, "notes.txt", "hello\n")
    zdir = tmp_path / "zeek"
    zdir.mkdir()
    write(zdir, "conn.log", tsv("conn", CONN_FIELDS))
    assert [detect_format(p) for p in (tsv_file, json_file, eve, gz, other, zdir, tmp_path / "missing")] == [
        "zeek", "zeek", "suricata", "zeek", None, "zeek", None]


# ---------------------------------------------------------------------------
# Never raises
# ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(
    st.text(max_size=120),
    st.sampled_from([CONN_TLS, SSL_TLS, "#fields\tts\tuid", "#separator \\x2c", "#path\tssl", "{}", "{\"_path\": \"dns\"}"]),
    st.builds(lambda s, i, c: s[:i] + c + s[i + 1:], st.sampled_from([CONN_TLS, SSL_TLS]),
              st.integers(0, 200), st.characters()),
), max_size=12))
def test_any_lines_give_items_or_counted_anomalies_never_an_exception(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "conn.log"
    path.write_text("\n".join(lines), errors="surrogatepass")
    items, _stats = items_of(path)
    assert all(isinstance(i, (DnsItem, FlowItem)) for i in items)


@given(st.dictionaries(st.sampled_from(sorted(zeeklog.FIELDS["conn"] | zeeklog.FIELDS["dns"] | zeeklog.FIELDS["http"])),
                       st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=20), st.lists(st.text(max_size=5)),
                                 st.booleans())))
def test_row_builders_return_a_row_none_or_an_anomaly(fields: dict[str, object]) -> None:
    for path in zeeklog.ROW_BUILDERS:
        out = zeek_row(path, fields)
        assert out is None or isinstance(out, (Anomaly, FlowRow, NameRow, DnsItem))


# ---------------------------------------------------------------------------
# Logs written from the sample capture's truth, through the real pipeline
# ---------------------------------------------------------------------------


sample = W.sample  # fixture: (capture, truth)
pcap_events = W.pcap_events  # fixture: the capture's own AI events


@pytest.mark.parametrize(("fmt", "gz"), [("tsv", False), ("json", False), ("tsv", True)], ids=["tsv", "json", "tsv-gzip"])
def test_zeek_logs_of_the_sample_give_the_truths_ai_services_names_and_bytes(
        sample: tuple[Path, dict], tmp_path: Path, fmt: str, gz: bool) -> None:
    records = sample[1]["records"]
    W.write_zeek(records, tmp_path / "logs", fmt, gzip=gz)
    stats = Stats()
    events, pipe_stats = W.run_items(iter_records([tmp_path / "logs"], stats), W.config(tmp_path))
    assert stats.anomalies == {}
    assert W.event_flows(events) == W.truth_flows(records)
    assert W.event_lookups(events) == W.truth_lookups(records)
    assert pipe_stats.flows_total == sum(r["kind"] != "dns" for r in records)


def test_zeek_logs_of_the_sample_give_the_same_events_as_the_capture(
        sample: tuple[Path, dict], pcap_events: list, tmp_path: Path) -> None:
    W.write_zeek(sample[1]["records"], tmp_path / "logs", "tsv")
    events, _stats = W.run_items(iter_records([tmp_path / "logs"]), W.config(tmp_path))
    assert W.event_flows(events) == W.event_flows(pcap_events)
    assert W.event_lookups(events) == W.event_lookups(pcap_events)
