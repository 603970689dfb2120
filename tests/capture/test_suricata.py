"""Tests for detector.capture.suricata: each EVE event type and DNS format, link-header bytes,
malformed events, the flow_id join, several files, gzip; then EVE files written from the bundled
sample's truth, through the real pipeline, against the truth and against the capture itself."""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path
from typing import Any

import _log_writers as W
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.capture.logjoin import DnsItem, FlowItem, FlowRow, NameRow
from detector.capture.suricata import ANOMALIES, eve_row, iter_records, parse_eve_line, skippable
from detector.model import TCP, UDP, Anomaly, DnsAnswer, EndReason, Evidence, Stats


def ip(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


T0 = "2026-11-02T09:00:02.269365+0000"  # = 1793610002.269365
E0 = 1793610002.269365


def event(kind: str, body: dict[str, Any] | None = None, **head: Any) -> dict[str, Any]:
    ev = {"timestamp": T0, "flow_id": 1471882934410, "in_iface": "eth1", "event_type": kind,
          "src_ip": "10.10.1.17", "src_port": 63990, "dest_ip": "104.18.23.73", "dest_port": 443, "proto": "TCP"}
    ev.update(head)
    if body is not None:
        ev[kind] = body
    return ev


FLOW = event("flow", {
    "pkts_toserver": 20, "pkts_toclient": 21,
    "bytes_toserver": 6649,  # 6369 IP bytes + 20 Ethernet headers of 14 bytes
    "bytes_toclient": 11163,  # 10869 + 21 * 14
    "start": T0, "end": "2026-11-02T09:00:25.804780+0000", "age": 23, "state": "closed", "reason": "timeout",
    "alerted": False}, app_proto="tls",
    tcp={"tcp_flags": "1b", "tcp_flags_ts": "1b", "tcp_flags_tc": "1b", "syn": True, "fin": True, "psh": True,
         "ack": True, "state": "closed"})
TLS = event("tls", {"sni": "ChatGPT.com", "version": "TLS 1.3", "ja4": "t13d1516h2_8daaf6152771_e5627efa2ab1",
                    "client_alpns": ["h2", "http/1.1"]}, timestamp="2026-11-02T09:00:02.300000+0000")


def row(ev: dict[str, Any], **kw: Any) -> Any:
    return eve_row(ev, **kw)


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


def test_flow_event_is_a_flow_record_without_link_headers() -> None:
    out = row(FLOW)
    assert isinstance(out, FlowRow) and out.key == 1471882934410
    rec = out.rec
    assert (rec.client, rec.client_port, rec.server, rec.server_port, rec.proto) == (
        ip("10.10.1.17"), 63990, ip("104.18.23.73"), 443, TCP)
    assert rec.first_ts == E0 and rec.last_ts == pytest.approx(1793610025.80478)
    assert (rec.bytes_up, rec.bytes_down, rec.packets) == (6369, 10869, 41)
    assert (rec.app, rec.saw_start, rec.reason, rec.transport) == ("tls", True, EndReason.FIN, "tcp")


def test_flow_bytes_as_suricata_counts_them_with_link_header_len_zero() -> None:
    rec = row(FLOW, link_header_len=0).rec
    assert (rec.bytes_up, rec.bytes_down) == (6649, 11163)


@pytest.mark.parametrize(("tcp", "saw_start"), [
    ({"tcp_flags_ts": "18", "syn": True}, False),  # only the server's SYN-ACK was seen: picked up mid-flow
    ({"tcp_flags_ts": "1b"}, True),
    ({"syn": True}, True),  # no per-direction flags: the combined one
    ({}, False),
])
def test_flow_saw_start_from_the_clients_syn(tcp: dict[str, Any], saw_start: bool) -> None:
    assert row({**FLOW, "tcp": tcp}).rec.saw_start is saw_start


def test_udp_flow_event() -> None:
    out = row({**FLOW, "proto": "UDP", "app_proto": "quic", "tcp": None})
    assert (out.rec.proto, out.rec.app, out.rec.saw_start) == (UDP, "quic", True)


def test_icmp_flow_and_other_event_types_are_nothing() -> None:
    assert row({**FLOW, "proto": "ICMP"}) is None
    for kind in ("alert", "stats", "fileinfo", "anomaly", "netflow"):
        assert row(event(kind, {})) is None


def test_tls_event_gives_the_sni_ja4_and_alpn() -> None:
    assert row(TLS) == NameRow(1471882934410, 1793610002.3, "tls", "chatgpt.com", ip("10.10.1.17"), ip("104.18.23.73"),
                               63990, 443, ja4="t13d1516h2_8daaf6152771_e5627efa2ab1", alpn=("h2", "http/1.1"))


def test_tls_event_with_ja4_as_an_object() -> None:
    out = row(event("tls", {"sni": "claude.ai", "ja4": {"hash": "t13d1516h2_a_b", "raw": "…"}}))
    assert out.ja4 == "t13d1516h2_a_b"


def test_quic_event_gives_the_sni_and_alpn() -> None:
    out = row(event("quic", {"version": "1", "sni": "gemini.google.com", "ja4": "q13d0310h3_55b375c5d22e_cd85d2d88918",
                             "extensions": [{"name": "server_name", "type": 0},
                                            {"name": "alpn", "type": 16, "values": ["h3"]}]}, proto="UDP"))
    assert (out.kind, out.name, out.alpn, out.ja4) == ("quic", "gemini.google.com", ("h3",),
                                                       "q13d0310h3_55b375c5d22e_cd85d2d88918")


@pytest.mark.parametrize(("http", "kind", "name"), [
    ({"hostname": "www.msftconnecttest.com", "url": "/connecttest.txt", "http_method": "GET"}, "http",
     "www.msftconnecttest.com"),
    ({"hostname": "capi.grammarly.com", "url": "capi.grammarly.com:443", "http_method": "CONNECT"}, "connect",
     "capi.grammarly.com"),
    ({"url": "chatgpt.com:443", "http_method": "connect"}, "connect", "chatgpt.com"),
    ({"url": "/", "http_method": "GET"}, "http", None),
])
def test_http_event_gives_the_host_or_the_connect_authority(http: dict[str, Any], kind: str, name: str | None) -> None:
    out = row(event("http", {**http, "http_user_agent": "curl/8.5"}, dest_ip="10.10.0.8", dest_port=8080))
    assert (out.kind, out.name, out.user_agent) == (kind, name, "curl/8.5")


# DNS: a lookup of chat.openai.com by 10.90.1.14 from the resolver 10.10.0.53.
Q = {"src_ip": "10.90.1.14", "src_port": 58381, "dest_ip": "10.10.0.53", "dest_port": 53, "proto": "UDP"}
A = {"src_ip": "10.10.0.53", "src_port": 53, "dest_ip": "10.90.1.14", "dest_port": 58381, "proto": "UDP"}
DETAILED = [{"rrname": "chat.openai.com", "rrtype": "CNAME", "ttl": 60, "rdata": "chat.openai.com.cdn.cloudflare.net"},
            {"rrname": "chat.openai.com.cdn.cloudflare.net", "rrtype": "A", "ttl": 300, "rdata": "104.18.23.73"},
            {"rrname": "chat.openai.com.cdn.cloudflare.net", "rrtype": "AAAA", "ttl": 300, "rdata": "2606:4700::6812:1749"},
            {"rrname": "chat.openai.com.cdn.cloudflare.net", "rrtype": "TXT", "ttl": 300, "rdata": "v=spf1 -all"}]
ANSWERS = (DnsAnswer("chat.openai.com", 5, 60, "chat.openai.com.cdn.cloudflare.net"),
           DnsAnswer("chat.openai.com.cdn.cloudflare.net", 1, 300, "104.18.23.73"),
           DnsAnswer("chat.openai.com.cdn.cloudflare.net", 28, 300, "2606:4700::6812:1749"))


def dns(body: dict[str, Any], ends: dict[str, Any] = A) -> DnsItem:
    out = row(event("dns", body, **ends))
    assert isinstance(out, DnsItem), out
    return out


def test_dns_v2_query() -> None:
    item = dns({"type": "query", "id": 4660, "rrname": "Chat.OpenAI.com", "rrtype": "A", "tx_id": 0}, Q)
    assert (item.client, item.server, item.port, item.transport) == (ip("10.90.1.14"), ip("10.10.0.53"), 53, "udp")
    assert (item.msg.txid, item.msg.is_response, item.msg.questions) == (4660, False, (("chat.openai.com", 1),))


def test_dns_v2_answer_detailed_logged_in_the_packets_direction() -> None:
    item = dns({"version": 2, "type": "answer", "id": 4660, "flags": "8180", "qr": True, "rrname": "chat.openai.com",
                "rrtype": "A", "rcode": "NOERROR", "answers": DETAILED})
    assert (item.client, item.server, item.port) == (ip("10.90.1.14"), ip("10.10.0.53"), 53)
    assert item.msg.is_response and item.msg.answers == ANSWERS  # the TXT record is not kept


def test_dns_v2_answer_grouped_has_no_ttls() -> None:
    item = dns({"version": 2, "type": "answer", "id": 4660, "rrname": "chat.openai.com", "rrtype": "A",
                "rcode": "NOERROR", "grouped": {"A": ["104.18.23.73"], "CNAME": ["chat.openai.com.cdn.cloudflare.net"]}})
    assert item.msg.answers == (DnsAnswer("chat.openai.com", 1, 0, "104.18.23.73"),
                                DnsAnswer("chat.openai.com", 5, 0, "chat.openai.com.cdn.cloudflare.net"))


def test_dns_v3_request_and_response() -> None:
    req = dns({"version": 3, "type": "request", "tx_id": 0, "id": 4660, "rcode": "NOERROR",
               "queries": [{"rrname": "chat.openai.com", "rrtype": "HTTPS"}]}, Q)
    resp = dns({"version": 3, "type": "response", "tx_id": 0, "id": 4660, "rcode": "NXDOMAIN",
                "queries": [{"rrname": "chat.openai.com", "rrtype": "TYPE65"}], "answers": DETAILED})
    assert req.msg.questions == resp.msg.questions == (("chat.openai.com", 65),)
    assert (req.msg.is_response, resp.msg.is_response, resp.msg.rcode) == (False, True, 3)
    assert resp.msg.answers == ANSWERS and (resp.client, req.client) == (ip("10.90.1.14"),) * 2


def test_dns_v1_answer_record() -> None:
    item = dns({"type": "answer", "id": 4660, "rrname": "claude.ai", "rrtype": "A", "ttl": 300, "rdata": "160.79.104.10"})
    assert item.msg.answers == (DnsAnswer("claude.ai", 1, 300, "160.79.104.10"),)


def test_dns_answer_logged_in_the_flows_direction_keeps_the_client() -> None:
    item = dns({"version": 2, "type": "answer", "id": 1, "rrname": "claude.ai", "rrtype": "A", "rcode": "NOERROR"}, Q)
    assert (item.client, item.server) == (ip("10.90.1.14"), ip("10.10.0.53"))


def test_dns_over_tcp_and_without_a_question() -> None:
    item = dns({"type": "query", "id": 1, "rrname": "claude.ai", "rrtype": "A"}, {**Q, "proto": "TCP"})
    assert item.transport == "tcp"
    assert row(event("dns", {"version": 3, "type": "request", "id": 1}, **Q)) is None


@pytest.mark.parametrize(("line", "kind"), [
    ("{\"event_type\": \"flow\"", "suricata.json_invalid"),
    ("\"flow\"", "suricata.json_invalid"),
])
def test_line_that_is_not_an_object_is_an_anomaly(line: str, kind: str) -> None:
    assert parse_eve_line(line) == Anomaly(kind)


@pytest.mark.parametrize(("ev", "kind"), [
    ({**FLOW, "flow_id": None}, "suricata.missing_field"),
    ({k: v for k, v in FLOW.items() if k != "flow"}, "suricata.missing_field"),
    ({**TLS, "src_ip": "10.10.1"}, "suricata.bad_value"),
    ({**TLS, "timestamp": "02/11/2026-09:00:02"}, "suricata.bad_value"),
    ({**TLS, "flow_id": "17"}, "suricata.bad_value"),
    ({**TLS, "tls": "chatgpt.com"}, "suricata.bad_value"),
    ({**FLOW, "flow": {**FLOW["flow"], "pkts_toserver": -1}}, "suricata.bad_value"),
])
def test_event_with_a_missing_or_bad_field_is_an_anomaly(ev: dict[str, Any], kind: str) -> None:
    ev = {k: v for k, v in ev.items() if v is not None}
    assert row(ev) == Anomaly(kind)


def test_every_anomaly_name_is_documented() -> None:
    assert set(ANOMALIES) == {"suricata.json_invalid", "suricata.missing_field", "suricata.bad_value",
                              "suricata.names_evicted", "suricata.flow_missing", "suricata.read_error"}


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def eve_file(path: Path, *events: dict[str, Any] | str) -> Path:
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events))
    return path


def items_of(*paths: Path) -> tuple[list[DnsItem | FlowItem], Stats]:
    stats = Stats()
    return list(iter_records(list(paths), stats)), stats


def test_tls_event_names_its_flow_event(tmp_path: Path) -> None:
    stats_event = {"timestamp": T0, "event_type": "stats", "stats": {"uptime": 10}}
    items, stats = items_of(eve_file(tmp_path / "eve.json", stats_event, TLS, "not json", FLOW))
    [item] = items
    rec = item.rec
    assert (rec.server_name, rec.evidence, rec.ja4, rec.bytes_up) == (
        "chatgpt.com", Evidence.TLS_SNI, "t13d1516h2_8daaf6152771_e5627efa2ab1", 6369)
    assert stats.anomalies == {"suricata.json_invalid": 1}


def test_events_of_several_files_are_merged_by_time(tmp_path: Path) -> None:
    dns_query = event("dns", {"type": "query", "id": 1, "rrname": "chatgpt.com", "rrtype": "A"}, **Q,
                      timestamp="2026-11-02T09:00:02.200000+0000")
    # Two worker threads' files: the lookup in one, the connection in the other.
    items, _ = items_of(eve_file(tmp_path / "eve.json.1", TLS, FLOW), eve_file(tmp_path / "eve.json.2", dns_query))
    assert [type(i).__name__ for i in items] == ["DnsItem", "FlowItem"]
    assert items[1].rec.server_name == "chatgpt.com"


def test_gzip_eve_in_a_directory(tmp_path: Path) -> None:
    (tmp_path / "eve-2026-11-02.json.gz").write_bytes(gzip.compress((json.dumps(TLS) + "\n" + json.dumps(FLOW)).encode()))
    (tmp_path / "suricata.log").write_text("<Notice> - This is Suricata version 7.0.3 RELEASE\n")
    items, stats = items_of(tmp_path)
    assert [i.rec.server_name for i in items] == ["chatgpt.com"] and stats.files_read == 1


def test_dns_flow_events_make_no_flows(tmp_path: Path) -> None:
    dns_flow = {**FLOW, **Q, "app_proto": "dns", "tcp": None}
    items, stats = items_of(eve_file(tmp_path / "eve.json", {k: v for k, v in dns_flow.items() if v is not None}))
    assert items == [] and stats.anomalies == {}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from([FLOW, TLS, event("dns", {"type": "answer", "rrname": "a.b", "answers": []}),
                             event("quic", {"sni": "a.b"}), event("http", {"hostname": "a.b"})]),
       key=st.sampled_from(["flow", "tls", "quic", "http", "dns", "src_ip", "src_port", "timestamp", "flow_id", "proto"]),
       inner=st.sampled_from(["start", "bytes_toserver", "sni", "ja4", "extensions", "http_method", "url", "type",
                              "queries", "answers", "grouped", "rrtype", "rcode", "id"]),
       value=JSON_VALUES, inner_value=JSON_VALUES)
def test_mutated_events_give_a_row_none_or_an_anomaly(base: dict[str, Any], key: str, inner: str, value: Any,
                                                      inner_value: Any) -> None:
    ev = json.loads(json.dumps(base))
    body = ev[ev["event_type"]]
    body[inner] = inner_value  # a field inside the event's object …
    out = eve_row(ev)
    assert out is None or isinstance(out, (Anomaly, FlowRow, NameRow, DnsItem))
    ev[key] = value  # … and one of the event's own
    out = eve_row(ev)
    assert out is None or isinstance(out, (Anomaly, FlowRow, NameRow, DnsItem))


# ---------------------------------------------------------------------------
# EVE files written from the sample capture's truth, through the real pipeline
# ---------------------------------------------------------------------------


sample = W.sample  # fixture: (capture, truth)
pcap_events = W.pcap_events  # fixture: the capture's own AI events


@pytest.mark.parametrize("dns_version", [2, 3])
def test_eve_of_the_sample_gives_the_truths_ai_services_names_and_bytes(
        sample: tuple[Path, dict], tmp_path: Path, dns_version: int) -> None:
    records = sample[1]["records"]
    extra = [{"timestamp": T0, "event_type": "stats", "stats": {"uptime": 1}},
             {**TLS, "event_type": "alert", "alert": {"signature_id": 2000001}}]
    path = W.write_eve(records, tmp_path / "eve.json.gz", dns_version, gzip=True, extra=extra)
    stats = Stats()
    events, pipe_stats = W.run_items(iter_records([path], stats), W.config(tmp_path))
    assert stats.anomalies == {}
    assert W.event_flows(events) == W.truth_flows(records)
    assert W.event_lookups(events) == W.truth_lookups(records)
    assert pipe_stats.flows_total == sum(r["kind"] != "dns" for r in records)


def test_eve_of_the_sample_gives_the_same_events_as_the_capture(
        sample: tuple[Path, dict], pcap_events: list, tmp_path: Path) -> None:
    path = W.write_eve(sample[1]["records"], tmp_path / "eve.json", 2)
    events, _stats = W.run_items(iter_records([path]), W.config(tmp_path))
    assert W.event_flows(events) == W.event_flows(pcap_events)
    assert W.event_lookups(events) == W.event_lookups(pcap_events)


@pytest.mark.parametrize(("line", "skip"), [
    ('{"timestamp":"x","flow_id":1,"event_type":"alert","alert":{"signature":"\\"event_type\\":\\"tls\\""}}', True),
    ('{"timestamp":"x","flow_id":1,"event_type":"tls","tls":{}}', False),
    ('{"timestamp": "x", "event_type": "alert"}', False),  # not compact: parsed in full, then ignored
    ("not json at all", False),
])
def test_events_the_sensor_does_not_read_are_skipped_unparsed(line: str, skip: bool) -> None:
    assert skippable(line) is skip
