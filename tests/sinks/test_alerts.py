"""SOC alerts: rules, dedup and rate limit; ECS, CEF and RFC 5424 formats; spool and delivery
to a webhook that fails and recovers; syslog over UDP, TCP and TLS into a real rsyslog."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.server
import json
import os
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from _store_helpers import make_event

from detector.model import Stats, UsageEvent
from detector.sinks.alert_format import (
    cef_header_escape,
    cef_message,
    cef_value_escape,
    ecs_document,
    octet_frame,
    syslog_message,
)
from detector.sinks.alert_transports import (
    DeliveryCounts,
    DeliveryError,
    FileTransport,
    SinkWorker,
    Spool,
    SyslogTransport,
    WebhookTransport,
    sign,
    tls_context,
    verify_signature,
)
from detector.sinks.alerts import (
    RULES,
    Alert,
    AlertEngine,
    AlertFileConfig,
    AlertsConfig,
    HealthSnapshot,
    SyslogConfig,
    WebhookConfig,
    alert_id,
    check_config,
)
from detector.sinks.soc import build_alert_service

# Overrides of the shared event factory: an unsanctioned DeepSeek flow from Burgerzaken.
DEEPSEEK = {
    "ts": "2025-03-03T09:00:00Z",
    "client": "p-7f3a9c",
    "department": "burgerzaken",
    "service": "deepseek",
    "vendor": "DeepSeek",
    "category": "chat_assistant",
    "jurisdiction": "CN",
    "policy": "unsanctioned",
    "server_name": "chat.deepseek.com",
    "server_ip": "104.18.0.9",
    "bytes_up": 4000,
    "bytes_down": 90000,
}

# A candidate event: an AI-looking name that matched no catalogue entry.
UNMATCHED = {"kind": "candidate", "service": "", "vendor": "", "category": "", "jurisdiction": "", "policy": ""}

MB = 1_000_000


def ev(**changes: Any) -> UsageEvent:
    return make_event(**{**DEEPSEEK, **changes})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def engine(cfg: AlertsConfig | None = None, clock: Clock | None = None) -> tuple[AlertEngine, list[Alert]]:
    out: list[Alert] = []
    return AlertEngine(cfg or AlertsConfig(), "sensor-1", out.append, clock or Clock()), out


def sample_alert(n: int = 0, **changes: Any) -> Alert:
    """A large-upload alert about the DeepSeek flow; `n` makes its id and message."""
    copied = ("department", "service", "vendor", "category", "jurisdiction", "policy", "client", "server_name")
    evidence = {"bytes_up": 12 * MB, "server_ip": "104.18.0.9", "server_port": 443, "transport": "tcp"}
    a = Alert(
        id=f"{n:032x}", rule="large-upload", severity="high", ts=DEEPSEEK["ts"], sensor="sensor-1",
        message=f"alert {n}", evidence=evidence, **{k: DEEPSEEK[k] for k in copied},
    )  # fmt: skip
    return replace(a, **changes)


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------


def test_first_use_of_unsanctioned_service_alerts_once_per_department_and_day() -> None:
    eng, out = engine()
    eng.handle(ev())
    eng.handle(ev(ts="2025-03-03T17:00:00Z", client="p-other", kind="dns"))  # same day: quiet
    eng.handle(ev(department="ict"))  # another department
    eng.handle(ev(ts="2025-03-04T08:00:00Z"))  # next (UTC) day
    first = [a for a in out if a.rule == "unsanctioned-first-use"]
    assert [(a.department, a.ts[:10]) for a in first] == [
        ("burgerzaken", "2025-03-03"),
        ("ict", "2025-03-03"),
        ("burgerzaken", "2025-03-04"),
    ]
    a = first[0]
    assert a.severity == "medium" and a.client == "p-7f3a9c" and a.vendor == "DeepSeek" and a.jurisdiction == "CN"
    assert a.evidence["server_name"] == "chat.deepseek.com" and a.evidence["day"] == "2025-03-03"


def test_first_use_of_blocked_service_is_high_and_sanctioned_never_alerts() -> None:
    eng, out = engine()
    eng.handle(ev(policy="blocked"))
    eng.handle(ev(service="copilot", policy="sanctioned"))
    eng.handle(ev(service="chatgpt", policy="tolerated"))
    assert [(a.rule, a.service, a.severity) for a in out] == [("unsanctioned-first-use", "deepseek", "high")]


def test_alert_ids_are_deterministic_across_runs() -> None:
    a, out_a = engine()
    b, out_b = engine()
    for e in (ev(), ev(bytes_up=20 * MB), ev(kind="candidate", service="", server_name="chat.newllm.example")):
        a.handle(e)
        b.handle(e)
    assert [x.id for x in out_a] == [x.id for x in out_b]
    assert len({x.id for x in out_a}) == 3
    assert out_a[0].id == alert_id("sensor-1", "unsanctioned-first-use", "burgerzaken", "deepseek", 20150)


def test_large_upload_in_one_flow() -> None:
    eng, out = engine(AlertsConfig(rules=("large-upload",)))
    eng.handle(ev(bytes_up=10 * MB))  # not above the threshold
    assert out == []
    eng.handle(ev(bytes_up=12 * MB))
    (a,) = out
    assert a.rule == "large-upload" and a.severity == "high"
    assert a.evidence["scope"] == "flow" and a.evidence["bytes_up"] == 12 * MB
    assert a.evidence["threshold_bytes"] == 10 * MB
    eng.handle(ev(bytes_up=15 * MB, ts="2025-03-03T09:30:00Z"))  # same client, service, hour
    assert len(out) == 1


def test_large_upload_per_client_and_hour() -> None:
    eng, out = engine(AlertsConfig(rules=("large-upload",)))
    for minute in range(6):  # 6 x 9 MB = 54 MB within 09:00-10:00
        eng.handle(ev(bytes_up=9 * MB, ts=f"2025-03-03T09:{minute * 10:02d}:00Z"))
    (a,) = out
    assert a.evidence["scope"] == "client-hour" and a.evidence["bytes_up"] == 54 * MB
    assert a.evidence["hour"] == "2025-03-03T09:00Z"
    # Another client's uploads are summed apart.
    eng.handle(ev(client="p-other", bytes_up=9 * MB))
    assert len(out) == 1


def test_large_upload_severity_follows_policy_and_policies_are_configurable() -> None:
    eng, out = engine(AlertsConfig(rules=("large-upload",)))
    for i, policy in enumerate(("sanctioned", "tolerated", "unsanctioned", "blocked")):
        eng.handle(ev(service=f"s{i}", policy=policy, bytes_up=11 * MB))
    assert [a.severity for a in out] == ["low", "medium", "high", "critical"]
    eng, out = engine(AlertsConfig(rules=("large-upload",), upload_policies=("unsanctioned",)))
    eng.handle(ev(policy="sanctioned", bytes_up=11 * MB))
    assert out == []


def test_new_candidate_alerts_once_per_name() -> None:
    eng, out = engine()
    cand = ev(**UNMATCHED, server_name="chat.newllm.example")
    eng.handle(cand)
    eng.handle(replace(cand, ts="2025-04-01T00:00:00Z", client="p-2"))
    eng.handle(replace(cand, server_name="api.otherllm.example"))
    assert [(a.rule, a.server_name, a.severity) for a in out] == [
        ("new-ai-candidate", "chat.newllm.example", "low"),
        ("new-ai-candidate", "api.otherllm.example", "low"),
    ]


def test_encrypted_dns_alerts_per_department_and_day() -> None:
    eng, out = engine()
    doh = ev(kind="encrypted-dns", service="cloudflare-dns", vendor="Cloudflare", category="encrypted_dns")
    doh = replace(doh, policy="", server_name="cloudflare-dns.com", server_ip="1.1.1.1")
    eng.handle(doh)
    eng.handle(replace(doh, client="p-2", server_name="dns.google", service="google-dns"))
    eng.handle(replace(doh, department="ict"))
    assert [(a.rule, a.department) for a in out] == [("encrypted-dns", "burgerzaken"), ("encrypted-dns", "ict")]
    assert out[0].evidence["resolver"] == "cloudflare-dns"


def snapshot(ts: float, packets: int, drops: int = 0, flows: int = 0, blind: int = 0) -> HealthSnapshot:
    return HealthSnapshot(ts=ts, packets=packets, drops=drops, flows=flows, blind=blind)


def test_sensor_blind_on_drop_share_over_the_window() -> None:
    eng, out = engine(AlertsConfig(blind_window=60, blind_drop_share=0.01, blind_min_packets=1000))
    eng.check_health(snapshot(0, 0))
    eng.check_health(snapshot(30, 50_000, drops=100))  # 0.2 %: fine
    assert out == []
    eng.check_health(snapshot(60, 100_000, drops=2_000))  # (2000) / (102000) = 1.96 %
    (a,) = out
    assert a.rule == "sensor-blind" and a.severity == "high" and a.client == "" and a.department == ""
    assert a.evidence["reason"] == "drops" and a.evidence["dropped"] == 2000
    eng.check_health(snapshot(90, 150_000, drops=5_000))  # still dropping: no repeat within blind_repeat
    assert len(out) == 1


def test_sensor_blind_on_blind_flow_share_needs_enough_flows() -> None:
    eng, out = engine(AlertsConfig(blind_window=60, blind_flow_share=0.5, blind_min_flows=100))
    eng.check_health(snapshot(0, 0))
    eng.check_health(snapshot(10, 1000, flows=50, blind=40))  # too few flows to judge
    assert out == []
    eng.check_health(snapshot(20, 2000, flows=300, blind=200))
    (a,) = out
    assert a.severity == "medium" and a.evidence["reason"] == "blind-flows"
    assert a.evidence["share"] == pytest.approx(200 / 300, abs=1e-6)


def test_health_snapshot_from_stats_and_capture_counters() -> None:
    stats = Stats(packets=10, flows_named=5, flows_dns_only=2)
    stats.flows_blind.update({"ech": 3, "no-sni": 1})
    snap = HealthSnapshot.take(stats, {"eth1": (100, 4, 1), "eth2": (50, 0, 0)}, ts=5.0)
    assert snap == HealthSnapshot(5.0, 150, 5, 11, 4)
    assert HealthSnapshot.take(stats, None, ts=5.0).packets == 10


def test_rate_limit_holds_back_alerts_until_tokens_return() -> None:
    clock = Clock()
    eng, out = engine(AlertsConfig(rate_per_minute=6, rate_burst=2), clock)
    for i in range(5):
        eng.handle(ev(kind="candidate", service="", server_name=f"n{i}.ai.example"))
    assert len(out) == 2 and eng.rate_limited == {"new-ai-candidate": 3}
    clock.now += 10  # one token per 10 s
    eng.handle(ev(kind="candidate", service="", server_name="n2.ai.example"))  # held back before: not marked
    assert [a.server_name for a in out][-1] == "n2.ai.example"
    assert eng.counts == {("new-ai-candidate", "low"): 3}


def test_min_severity_and_disabled_rules() -> None:
    eng, out = engine(AlertsConfig(min_severity="medium"))
    eng.handle(ev(kind="candidate", service="", server_name="chat.newllm.example"))  # low
    eng.handle(ev())  # medium
    assert [a.rule for a in out] == ["unsanctioned-first-use"]
    eng, out = engine(AlertsConfig(rules=("new-ai-candidate",)))
    eng.handle(ev(bytes_up=50 * MB))
    assert out == []
    eng, out = engine(AlertsConfig(enabled=False))
    eng.handle(ev(bytes_up=50 * MB))
    assert out == []


def test_check_config_names_every_problem() -> None:
    cfg = AlertsConfig(
        rules=("large-upload", "nope"),
        min_severity="urgent",
        upload_policies=("allowed",),
        syslog=SyslogConfig(address="siem", transport="sctp"),
        webhook=WebhookConfig(url="ftp://x"),
    )
    problems = "\n".join(check_config(cfg))
    for fragment in (
        "alerts.rules: unknown rule 'nope'",
        "alerts.min_severity",
        "alerts.upload_policies",
        "alerts.syslog.transport",
        "alerts.syslog.address",
        "alerts.webhook.url",
    ):
        assert fragment in problems
    assert check_config(AlertsConfig()) == []
    assert set(AlertsConfig().rules) == set(RULES)


# ---------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------

RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)) "
    r"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    r"(?P<sd>-|(\[.*?\])+) (?P<msg>.*)",
    re.DOTALL,
)


def parse_cef(text: str) -> tuple[list[str], dict[str, str]]:
    """Split a CEF record into its 7 header fields and unescaped extension pairs."""
    assert text.startswith("CEF:")
    fields, cur, i = [], "", 0
    while len(fields) < 7:
        c = text[i]
        if c == "\\":
            cur += text[i + 1]
            i += 2
            continue
        if c == "|":
            fields.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    ext_text = text[i:]
    ext: dict[str, str] = {}
    # A key starts where an unescaped "=" follows a space-separated word.
    parts = re.split(r"(?:^| )([A-Za-z0-9_]+)=(?<!\\=)", ext_text)
    for key, value in zip(parts[1::2], parts[2::2]):
        value = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), value)
        ext[key] = value
    return fields, ext


def test_cef_escaping_of_header_and_extension_values() -> None:
    assert cef_header_escape("a|b\\c") == "a\\|b\\\\c"  # pipe and backslash escaped in the header
    assert cef_header_escape("two\nlines") == "two lines"
    assert cef_value_escape("a=b\\c|d") == "a\\=b\\\\c|d"  # pipes need no escape in extensions
    assert cef_value_escape("l1\r\nl2\nl3\r") == "l1\\nl2\\nl3\\r"


def test_cef_record_round_trips_through_a_parser() -> None:
    a = sample_alert(message="path=C:\\temp | and\nmore", department="Sociaal|Domein")
    fields, ext = parse_cef(cef_message(a, version="1.2.3"))
    assert fields[:7] == [
        "CEF:0",
        "ShadowAI",
        "Detector",
        "1.2.3",
        "large-upload",
        "Large upload to an AI service",
        "8",
    ]
    assert ext["msg"] == "path=C:\\temp | and\nmore"
    assert ext["cs2"] == "Sociaal|Domein" and ext["cs2Label"] == "department"
    assert ext["cs1"] == "p-7f3a9c" and ext["cs1Label"] == "clientPseudonym"
    assert ext["externalId"] == a.id and ext["dhost"] == "chat.deepseek.com"
    assert ext["dst"] == "104.18.0.9" and ext["dpt"] == "443" and ext["out"] == str(12 * MB)
    assert ext["rt"] == str(int(dt.datetime(2025, 3, 3, 9, tzinfo=dt.UTC).timestamp() * 1000))
    assert json.loads(ext["flexString1"])["bytes_up"] == 12 * MB


def test_syslog_message_is_rfc5424_with_cef_payload_and_octet_framing() -> None:
    a = sample_alert()
    now = dt.datetime(2025, 3, 3, 9, 0, 1, 500000, tzinfo=dt.UTC)
    msg = syslog_message(a, facility=13, hostname="sensor 1\u00e9", now=now, procid="42")
    m = RFC5424.fullmatch(msg.decode())
    assert m is not None
    assert int(m["pri"]) == 13 * 8 + 3  # log audit, error (= high)
    assert m["ts"] == "2025-03-03T09:00:01.500Z"
    assert m["host"] == "sensor1"  # spaces and non-ASCII are not allowed in HOSTNAME
    assert (m["app"], m["procid"], m["msgid"], m["sd"]) == ("shadowai", "42", "large-upload", "-")
    assert m["msg"].startswith("CEF:0|ShadowAI|Detector|")
    # 00000000  36 32 37 20 3c 31 30 37 3e 31 ...   "627 <107>1" : MSG-LEN SP SYSLOG-MSG
    framed = octet_frame(msg)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) == len(msg) and rest == msg


def test_ecs_document_keeps_the_client_out_of_address_fields() -> None:
    a = sample_alert()
    doc = ecs_document(a, created="2025-03-03T09:00:02.000Z", version="1.2.3")
    assert doc["@timestamp"] == a.ts and doc["ecs"]["version"].startswith("8.")
    assert doc["event"]["kind"] == "alert" and doc["event"]["category"] == ["network"]
    assert doc["event"]["severity"] == 8 and doc["event"]["id"] == a.id
    assert doc["rule"]["id"] == "large-upload" and doc["rule"]["name"] == RULES["large-upload"]
    assert doc["observer"]["name"] == "sensor-1"
    assert doc["labels"] == {"department": "burgerzaken", "client_pseudonym": "p-7f3a9c"}
    assert doc["destination"] == {"domain": "chat.deepseek.com", "ip": "104.18.0.9", "port": 443}
    assert doc["shadowai"]["jurisdiction"] == "CN" and doc["shadowai"]["evidence"]["bytes_up"] == 12 * MB
    assert "client" not in doc and "source" not in doc and "user" not in doc


# ---------------------------------------------------------------------------
# Spool and worker
# ---------------------------------------------------------------------------


def test_spool_keeps_order_across_reopen_and_drops_oldest_at_its_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_items=3)
    for i in range(4):
        spool.append(sample_alert(i))
    (tmp_path / ".0000000000000099.json.tmp").write_text("half")  # a crash mid-write
    reopened = Spool(tmp_path, max_items=3)
    assert len(reopened) == 3 and not list(tmp_path.glob(".*.tmp"))
    seen = []
    while (head := reopened.peek()) is not None:
        seen.append(head[1].message)
        reopened.remove(head[0])
    assert seen == ["alert 1", "alert 2", "alert 3"]
    reopened.append(sample_alert(9))  # numbering continues after the files that were there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000000000000005.json"]


def test_spool_skips_an_unreadable_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_items=10)
    spool.append(sample_alert(1))
    spool.append(sample_alert(2))
    (tmp_path / "0000000000000001.json").write_text("{not json")
    head = spool.peek()
    assert head is not None and head[1].message == "alert 2" and len(spool) == 1


class FlakyTransport:
    def __init__(self, fail_first: int, permanent: bool = False) -> None:
        self.fail_first = fail_first
        self.permanent = permanent
        self.sent: list[str] = []
        self.attempts = 0

    def send(self, alert: Alert) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            raise DeliveryError("down", permanent=self.permanent)
        self.sent.append(alert.id)

    def close(self) -> None:
        pass


def test_worker_retries_with_backoff_and_delivers_in_order(tmp_path: Path) -> None:
    counts = DeliveryCounts()
    transport = FlakyTransport(fail_first=3)
    worker = SinkWorker("t", transport, Spool(tmp_path, 100), counts, retry_initial=0.01, retry_max=0.05).start()
    for i in range(5):
        assert worker.submit(sample_alert(i))
    assert worker.wait_idle(10)
    worker.close()
    assert transport.sent == [sample_alert(i).id for i in range(5)]
    assert counts.snapshot() == {("t", "retry"): 3, ("t", "ok"): 5}
    assert not list(tmp_path.iterdir())


def test_worker_drops_alerts_the_receiver_rejects_for_good(tmp_path: Path) -> None:
    counts = DeliveryCounts()
    worker = SinkWorker(
        "t", FlakyTransport(fail_first=1, permanent=True), Spool(tmp_path, 100), counts, retry_initial=0.01
    ).start()
    worker.submit(sample_alert(1))
    worker.submit(sample_alert(2))
    assert worker.wait_idle(10)
    worker.close()
    assert counts.snapshot() == {("t", "rejected"): 1, ("t", "ok"): 1}


def test_full_queue_is_counted_not_blocking(tmp_path: Path) -> None:
    counts = DeliveryCounts()
    worker = SinkWorker("t", FlakyTransport(0), Spool(tmp_path, 100), counts, queue_size=2)  # not started
    assert [worker.submit(sample_alert(i)) for i in range(3)] == [True, True, False]
    assert counts.snapshot() == {("t", "dropped"): 1}
    worker.close()  # queued alerts are kept in the spool for the next start
    assert len(Spool(tmp_path, 100)) == 2


def test_file_sink_writes_ecs_lines(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    cfg = AlertsConfig(file=AlertFileConfig(path=str(path)))
    service = build_alert_service(cfg, "sensor-1", tmp_path / "spool")
    service.handle(ev())
    service.handle(ev(bytes_up=20 * MB, ts="2025-03-03T09:05:00Z"))
    assert service.workers["file"].wait_idle(10)
    service.close()
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["rule"]["id"] for d in docs] == ["unsanctioned-first-use", "large-upload"]
    assert all(d["labels"]["client_pseudonym"] == "p-7f3a9c" for d in docs)
    assert service.alert_counts() == {("unsanctioned-first-use", "medium"): 1, ("large-upload", "high"): 1}
    assert service.delivery_counts() == {("file", "ok"): 2}
    assert service.spool_sizes() == {"file": 0}


def test_file_transport_reports_an_unwritable_path() -> None:
    with pytest.raises(DeliveryError, match="alerts.jsonl"):
        FileTransport("/nonexistent-dir/alerts.jsonl").send(sample_alert())


def test_webhook_needs_a_secret(tmp_path: Path) -> None:
    cfg = AlertsConfig(webhook=WebhookConfig(url="http://127.0.0.1:9/hook"))
    with pytest.raises(ValueError, match="secret"):
        build_alert_service(cfg, "s", tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    cfg = AlertsConfig(webhook=WebhookConfig(url="http://127.0.0.1:9/hook", secret_file=str(secret)))
    service = build_alert_service(cfg, "s", tmp_path, start=False)
    assert service.workers["webhook"].transport.secret == b"s3cret"  # type: ignore[attr-defined]


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    body = b'{"id":"x"}'
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert sign(b"k", body) == "sha256=" + expected
    assert verify_signature(b"k", body, "sha256=" + expected)
    assert not verify_signature(b"k", body + b" ", "sha256=" + expected)


# ---------------------------------------------------------------------------
# Webhook receiver that fails, goes away, and recovers
# ---------------------------------------------------------------------------


class Receiver:
    """An HTTP receiver on 127.0.0.1 that answers 503 while `failing`, records accepted bodies,
    and can be stopped (connection refused) and started again on the same port."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.failing = True
        self.accepted: list[dict[str, Any]] = []
        self.refused_503 = 0
        self.bad_signatures = 0
        self.port = 0
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failing:
                    receiver.refused_503 += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                if not verify_signature(receiver.secret, body, self.headers["X-ShadowAI-Signature"]):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                doc = json.loads(body)
                assert self.headers["Idempotency-Key"] == doc["id"]
                receiver.accepted.append(doc)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def candidate(i: int) -> UsageEvent:
    return ev(**UNMATCHED, server_name=f"n{i:02d}.newllm.example", ts=f"2025-03-03T09:{i:02d}:00Z")


def wait_for(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_webhook_down_then_back_delivers_every_alert_once_in_order_across_a_restart(tmp_path: Path) -> None:
    secret = b"shared-secret"
    receiver = Receiver(secret)
    receiver.start()  # answers 503
    cfg = AlertsConfig(
        rules=("new-ai-candidate",),
        retry_initial=0.02,
        retry_max=0.1,
        webhook=WebhookConfig(url=f"http://127.0.0.1:{receiver.port}/alerts", secret=secret.decode(), timeout=2),
    )
    spool = tmp_path / "spool"
    sender = build_alert_service(cfg, "sensor-1", spool)
    try:
        for i in range(4):
            sender.handle(candidate(i))
        assert wait_for(lambda: receiver.refused_503 >= 2)
        receiver.stop()  # now connection refused
        for i in range(4, 7):
            sender.handle(candidate(i))
        assert wait_for(lambda: sender.delivery_counts().get(("webhook", "retry"), 0) >= receiver.refused_503 + 1)
    finally:
        sender.close(timeout=2)  # the sensor restarts while the receiver is still down
    assert len(list((spool / "webhook").glob("*.json"))) == 7

    sender = build_alert_service(cfg, "sensor-1", spool)
    try:
        assert sender.spool_sizes() == {"webhook": 7}
        for i in range(7, 9):
            sender.handle(candidate(i))
        receiver.failing = False
        receiver.start()  # back, on the same port
        assert wait_for(lambda: len(receiver.accepted) >= 9)
        assert sender.workers["webhook"].wait_idle(10)
    finally:
        sender.close(timeout=2)
    names = [doc["server_name"] for doc in receiver.accepted]
    assert names == [f"n{i:02d}.newllm.example" for i in range(9)]  # all, once, in order
    assert len({doc["id"] for doc in receiver.accepted}) == 9
    assert receiver.bad_signatures == 0
    assert all(doc["client"] == "p-7f3a9c" and doc["rule"] == "new-ai-candidate" for doc in receiver.accepted)
    assert not list((spool / "webhook").glob("*.json"))
    receiver.stop()


def test_webhook_client_errors_are_permanent_and_server_errors_retried() -> None:
    statuses = iter([400, 429, 500])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(next(statuses))
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = WebhookTransport(f"http://127.0.0.1:{server.server_address[1]}/", b"k", timeout=5)
        results = []
        for _ in range(3):
            with pytest.raises(DeliveryError) as info:
                hook.send(sample_alert())
            results.append(info.value.permanent)
        assert results == [True, False, False]
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------
# Syslog transports against local listeners
# ---------------------------------------------------------------------------


def test_syslog_udp_sends_one_datagram_per_alert() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        t = SyslogTransport(f"127.0.0.1:{rx.getsockname()[1]}", "udp", hostname="sensor-1")
        t.send(sample_alert(1))
        t.send(sample_alert(2))
        t.close()
        got = [rx.recv(65535).decode() for _ in range(2)]
    assert all(RFC5424.fullmatch(g) for g in got)
    assert [parse_cef(RFC5424.fullmatch(g)["msg"])[1]["externalId"] for g in got] == [  # type: ignore[index]
        sample_alert(1).id,
        sample_alert(2).id,
    ]


class _TcpCollector(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def read_frames(data: bytes) -> list[bytes]:
    frames = []
    while data:
        length, _, rest = data.partition(b" ")
        n = int(length)
        frames.append(rest[:n])
        data = rest[n:]
    return frames


def test_syslog_tcp_reconnects_after_the_receiver_closed_the_connection() -> None:
    chunks: list[bytes] = []

    class OneShot(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            # Read one frame, then hang up (a SIEM restarting).
            self.request.settimeout(5)
            buf = b""
            while True:
                buf += self.request.recv(65535)
                frames = read_frames(buf) if b" " in buf else []
                if frames and len(frames[-1]) == int(buf.partition(b" ")[0]):
                    break
            self.request.close()  # FIN sent before the test sees the frame
            chunks.append(buf)

    server = _TcpCollector(("127.0.0.1", 0), OneShot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t = SyslogTransport(f"127.0.0.1:{server.server_address[1]}", "tcp", hostname="sensor-1")
        t.send(sample_alert(1))
        assert wait_for(lambda: len(chunks) == 1)
        t.send(sample_alert(2))  # detects the closed connection and reconnects
        assert wait_for(lambda: len(chunks) == 2)
        t.close()
    finally:
        server.shutdown()
        server.server_close()
    ids = [
        parse_cef(RFC5424.fullmatch(read_frames(c)[0].decode())["msg"])[1]["externalId"]  # type: ignore[index]
        for c in chunks
    ]
    assert ids == [sample_alert(1).id, sample_alert(2).id]


def test_syslog_tls_keeps_one_connection_despite_session_tickets(tmp_path: Path) -> None:
    # Python's TLS 1.3 server sends session tickets after the handshake: the socket turns
    # readable with no application data, which must not look like a closed connection.
    cert, key = make_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    connections: list[bytes] = []

    class Collect(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with context.wrap_socket(self.request, server_side=True) as tls:
                tls.settimeout(10)
                buf = b""
                while chunk := tls.recv(65535):
                    buf += chunk
            connections.append(buf)

    server = _TcpCollector(("127.0.0.1", 0), Collect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t = SyslogTransport(
            f"127.0.0.1:{server.server_address[1]}",
            "tls",
            hostname="sensor-1",
            ssl_context=tls_context(ca_file=str(cert)),
            server_name="localhost",
        )
        for i in range(3):
            t.send(sample_alert(i))
            time.sleep(0.05)  # let the tickets arrive between sends
        t.close()
        assert wait_for(lambda: len(connections) == 1)
    finally:
        server.shutdown()
        server.server_close()
    frames = read_frames(connections[0])
    assert [parse_cef(RFC5424.fullmatch(f.decode())["msg"])[1]["externalId"] for f in frames] == [  # type: ignore[index]
        sample_alert(i).id for i in range(3)
    ]


def test_syslog_to_a_closed_port_is_a_delivery_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DeliveryError, match="syslog tcp"):
        SyslogTransport(f"127.0.0.1:{port}", "tcp", timeout=2).send(sample_alert())


# ---------------------------------------------------------------------------
# A real rsyslog on loopback: UDP, TCP and TLS
# ---------------------------------------------------------------------------


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (its own CA)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RSYSLOG_CONF = """
global(workDirectory="{dir}" maxMessageSize="64k" localHostname="rsyslog-test" net.enableDNS="off")
module(load="imudp")
module(load="imtcp")
template(name="parsed" type="list") {{
  property(name="inputname") constant(value="\\t")
  property(name="protocol-version") constant(value="\\t")
  property(name="hostname") constant(value="\\t")
  property(name="app-name") constant(value="\\t")
  property(name="msgid") constant(value="\\t")
  property(name="syslogfacility") constant(value="\\t")
  property(name="syslogseverity") constant(value="\\t")
  property(name="rawmsg") constant(value="\\n")
}}
ruleset(name="udp") {{ action(type="omfile" file="{dir}/udp.log" template="parsed") }}
ruleset(name="tcp") {{ action(type="omfile" file="{dir}/tcp.log" template="parsed") }}
ruleset(name="tls") {{ action(type="omfile" file="{dir}/tls.log" template="parsed") }}
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="{tls}" ruleset="tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon"
      streamDriver.CAFile="{cert}" streamDriver.CertFile="{cert}" streamDriver.KeyFile="{key}")
"""


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[dict[str, Any]]:
    binary = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
    if binary is None:
        pytest.skip("rsyslogd is not installed (Debian package rsyslog)")
    if not any(
        Path(p).exists()
        for p in (
            "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so",
            "/usr/lib/aarch64-linux-gnu/rsyslog/lmnsd_gtls.so",
            "/usr/lib/rsyslog/lmnsd_gtls.so",
        )
    ):
        pytest.skip("rsyslog's TLS driver is not installed (Debian package rsyslog-gnutls)")
    cert, key = make_cert(tmp_path)
    ports = {"udp": free_port(socket.SOCK_DGRAM), "tcp": free_port(), "tls": free_port()}
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(dir=tmp_path, cert=cert, key=key, **ports))
    proc = subprocess.Popen(
        [binary, "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslog.pid")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def listening() -> bool:
            for port in (ports["tcp"], ports["tls"]):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                except OSError:
                    return False
            return True

        if not wait_for(listening, 15):
            proc.kill()
            out = proc.communicate()[0].decode(errors="replace")
            pytest.fail(f"rsyslogd did not start: {out}")
        yield {"dir": tmp_path, "cert": cert, **ports}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.services
def test_rsyslog_receives_cef_alerts_over_udp_tcp_and_tls(rsyslog: dict[str, Any]) -> None:
    d: Path = rsyslog["dir"]
    alerts = [sample_alert(i, message=f"alert {i}: x=1 | back\\slash") for i in range(3)]
    context = tls_context(ca_file=str(rsyslog["cert"]))
    senders = {
        "udp": SyslogTransport(f"127.0.0.1:{rsyslog['udp']}", "udp", hostname="sensor-1"),
        "tcp": SyslogTransport(f"127.0.0.1:{rsyslog['tcp']}", "tcp", hostname="sensor-1"),
        "tls": SyslogTransport(
            f"127.0.0.1:{rsyslog['tls']}", "tls", hostname="sensor-1", ssl_context=context, server_name="localhost"
        ),
    }
    for name, sender in senders.items():
        for a in alerts:
            sender.send(replace(a, id=f"{name}-{a.id[-4:]}"))
        sender.close()

    def lines(name: str) -> list[str]:
        path = d / f"{name}.log"
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    assert wait_for(lambda: all(len(lines(n)) >= 3 for n in senders), 15), {n: lines(n) for n in senders}
    for name in senders:
        got = lines(name)
        assert len(got) == 3, got
        for a, line in zip(alerts, got):
            inputname, version, host, app, msgid, facility, severity, raw = line.split("\t")
            # rsyslog itself parsed the RFC 5424 header ...
            assert (inputname, version, host, app, msgid) == (
                "imudp" if name == "udp" else "imtcp",
                "1",
                "sensor-1",
                "shadowai",
                "large-upload",
            )
            assert (facility, severity) == ("13", "3")
            # ... and the raw message (octet-count framing removed) is RFC 5424 + CEF.
            m = RFC5424.fullmatch(raw)
            assert m is not None, raw
            fields, ext = parse_cef(m["msg"])
            assert fields[4:7] == ["large-upload", "Large upload to an AI service", "8"]
            assert ext["externalId"] == f"{name}-{a.id[-4:]}"
            assert ext["msg"] == a.message
            assert ext["cs1"] == "p-7f3a9c" and ext["cs2"] == "burgerzaken"


@pytest.mark.services
def test_alert_service_delivers_to_rsyslog_over_tls(rsyslog: dict[str, Any], tmp_path: Path) -> None:
    cfg = AlertsConfig(
        syslog=SyslogConfig(
            address=f"127.0.0.1:{rsyslog['tls']}",
            transport="tls",
            ca_file=str(rsyslog["cert"]),
            server_name="localhost",
        )
    )
    service = build_alert_service(cfg, "sensor-1", tmp_path / "spool")
    service.handle(ev(policy="blocked"))
    assert service.workers["syslog"].wait_idle(10)
    service.close()
    path = rsyslog["dir"] / "tls.log"
    assert wait_for(lambda: path.exists() and path.read_text().count("\n") >= 1)
    raw = path.read_text().splitlines()[0].split("\t")[-1]
    _, ext = parse_cef(RFC5424.fullmatch(raw)["msg"])  # type: ignore[index]
    assert ext["cs3"] == "deepseek" and ext["cs6"] == "blocked"
    assert service.delivery_counts() == {("syslog", "ok"): 1}
