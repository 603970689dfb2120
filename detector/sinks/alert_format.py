"""How an alert looks on the wire: ECS JSON, CEF, RFC 5424 syslog frames, the webhook body.

Pure functions from an `Alert` to text or bytes; transports call them at delivery time.

References:
  RFC 5424 §6 (syslog message format: HEADER, STRUCTURED-DATA, MSG; §6.2.1 PRI, §6.2.3 TIMESTAMP)
  RFC 5426 §3.1 (one syslog message per UDP datagram)
  RFC 6587 §3.4.1 (octet-counting framing over TCP: MSG-LEN SP SYSLOG-MSG)
  RFC 5425 §4.3 (TLS transport uses the same octet-counting framing)
  ArcSight "Implementing ArcSight Common Event Format (CEF)" rev. 25 (header and extension escaping)
  Elastic Common Schema 8.11 (event.*, rule.*, observer.*, destination.*, labels)
"""

from __future__ import annotations

import ipaddress
import json
import os
from datetime import UTC, datetime
from typing import Any

from detector import __version__
from detector.sinks.alerts import Alert, parse_ts

ECS_VERSION = "8.11.0"
CEF_VENDOR = "ShadowAI"
CEF_PRODUCT = "Detector"

# Alert severity -> CEF severity (0-10) and ECS event.severity (same scale).
CEF_SEVERITY = {"low": 3, "medium": 5, "high": 8, "critical": 10}
# Alert severity -> RFC 5424 §6.2.1 severity code (2 critical, 3 error, 4 warning, 5 notice).
SYSLOG_SEVERITY = {"low": 5, "medium": 4, "high": 3, "critical": 2}
# Alert severity -> ECS log.level.
LOG_LEVEL = {"low": "notice", "medium": "warning", "high": "error", "critical": "critical"}

NILVALUE = "-"
# RFC 5424 §6.2: field lengths in octets (printable US-ASCII only).
MAX_HOSTNAME, MAX_APP_NAME, MAX_PROCID, MAX_MSGID = 255, 48, 128, 32


# ---------------------------------------------------------------------------
# ECS
# ---------------------------------------------------------------------------


def ecs_document(alert: Alert, created: str | None = None, version: str = __version__) -> dict[str, Any]:
    """The alert as an Elastic Common Schema document.

    The client appears only as `labels.client_pseudonym`: `client.address`/`source.ip` are
    meant for addresses and stay absent. The department is `labels.department`; everything
    specific to the sensor sits under `shadowai.*`.
    """
    event: dict[str, Any] = {
        "kind": "alert",
        "category": ["network"],
        "type": ["info"],
        "severity": CEF_SEVERITY.get(alert.severity, 5),
        "id": alert.id,
        "module": "shadowai",
        "dataset": "shadowai.alert",
        "action": alert.rule,
    }
    if created:
        event["created"] = created
    doc: dict[str, Any] = {
        "@timestamp": alert.ts,
        "ecs": {"version": ECS_VERSION},
        "message": alert.message,
        "event": event,
        "rule": {"id": alert.rule, "name": alert.rule_name, "ruleset": "shadowai", "version": version},
        "log": {"level": LOG_LEVEL.get(alert.severity, "warning")},
        "observer": {
            "name": alert.sensor,
            "type": "sensor",
            "vendor": CEF_VENDOR,
            "product": CEF_PRODUCT,
            "version": version,
        },
        "labels": {"department": alert.department, "client_pseudonym": alert.client},
        "shadowai": {
            "severity": alert.severity,
            "service": alert.service,
            "vendor": alert.vendor,
            "category": alert.category,
            "jurisdiction": alert.jurisdiction,
            "policy": alert.policy,
            "evidence": dict(alert.evidence),
        },
    }
    destination = _destination(alert)
    if destination:
        doc["destination"] = destination
    transport = alert.evidence.get("transport")
    if transport:
        doc["network"] = {"transport": "udp" if transport == "quic" else str(transport)}
    return doc


def _destination(alert: Alert) -> dict[str, Any]:
    """The AI service's side (never the client's): name, address, port."""
    out: dict[str, Any] = {}
    if alert.server_name:
        out["domain"] = alert.server_name
    ip = alert.evidence.get("server_ip")
    if ip and _is_ip(str(ip)):
        out["ip"] = str(ip)
    port = alert.evidence.get("server_port")
    if isinstance(port, int) and port > 0:
        out["port"] = port
    return out


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def ecs_line(alert: Alert, created: str | None = None) -> str:
    """One ECS JSON line, newline-terminated."""
    return json.dumps(ecs_document(alert, created), ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n"


# ---------------------------------------------------------------------------
# CEF
# ---------------------------------------------------------------------------


def cef_header_escape(value: object) -> str:
    """Escape a CEF header field: backslash and pipe; line breaks become spaces."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def cef_value_escape(value: object) -> str:
    """Escape a CEF extension value: backslash, equals sign, line breaks as \\n and \\r."""
    text = str(value).replace("\\", "\\\\").replace("=", "\\=")
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def cef_message(alert: Alert, version: str = __version__) -> str:
    """The alert as one CEF:0 record."""
    header = "|".join(
        cef_header_escape(v)
        for v in (
            "CEF:0",
            CEF_VENDOR,
            CEF_PRODUCT,
            version,
            alert.rule,
            alert.rule_name,
            CEF_SEVERITY.get(alert.severity, 5),
        )
    )
    ext: list[tuple[str, object]] = []
    epoch = parse_ts(alert.ts)
    if epoch is not None:
        ext.append(("rt", int(epoch * 1000)))
    ext.append(("externalId", alert.id))
    ext.append(("dvchost", alert.sensor))
    if alert.server_name:
        ext.append(("dhost", alert.server_name))
    ip = str(alert.evidence.get("server_ip") or "")
    if ip and _is_ip(ip):
        if ipaddress.ip_address(ip).version == 4:
            ext.append(("dst", ip))
        else:
            ext += [("c6a3", ip), ("c6a3Label", "serverAddress")]
    port = alert.evidence.get("server_port")
    if isinstance(port, int) and port > 0:
        ext.append(("dpt", port))
    if alert.rule == "large-upload" and "bytes_up" in alert.evidence:
        ext.append(("out", alert.evidence["bytes_up"]))
    if alert.category:
        ext.append(("cat", alert.category))
    labelled = (
        ("cs1", "clientPseudonym", alert.client),
        ("cs2", "department", alert.department),
        ("cs3", "service", alert.service),
        ("cs4", "vendor", alert.vendor),
        ("cs5", "jurisdiction", alert.jurisdiction),
        ("cs6", "policy", alert.policy),
    )
    for key, label, value in labelled:
        if value:
            ext += [(key, value), (key + "Label", label)]
    ext.append(("flexString1", json.dumps(dict(alert.evidence), separators=(",", ":"), sort_keys=True)))
    ext.append(("flexString1Label", "evidence"))
    ext.append(("msg", alert.message))
    return header + "|" + " ".join(f"{k}={cef_value_escape(v)}" for k, v in ext)


# ---------------------------------------------------------------------------
# Syslog RFC 5424
# ---------------------------------------------------------------------------


def _header_field(value: str, limit: int) -> str:
    """A HEADER field: printable US-ASCII without spaces, cut to its limit, or the NILVALUE."""
    text = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return text or NILVALUE


def syslog_timestamp(moment: datetime) -> str:
    """RFC 5424 §6.2.3 TIMESTAMP in UTC with milliseconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def syslog_message(
    alert: Alert,
    *,
    facility: int,
    hostname: str,
    app_name: str = "shadowai",
    now: datetime | None = None,
    procid: str | None = None,
) -> bytes:
    """One RFC 5424 message carrying the alert as CEF (MSGID = rule id, no structured data).

    The TIMESTAMP is when the message is made (RFC 5424 §6.2.3); the alert's own time is
    the CEF `rt` field.
    """
    pri = facility * 8 + SYSLOG_SEVERITY.get(alert.severity, 4)
    header = " ".join(
        (
            f"<{pri}>1",
            syslog_timestamp(now or datetime.now(UTC)),
            _header_field(hostname, MAX_HOSTNAME),
            _header_field(app_name, MAX_APP_NAME),
            _header_field(procid if procid is not None else str(os.getpid()), MAX_PROCID),
            _header_field(alert.rule, MAX_MSGID),
            NILVALUE,  # STRUCTURED-DATA: everything is in the CEF payload
        )
    )
    return (header + " " + cef_message(alert)).encode("utf-8")


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 §3.4.1 octet counting: MSG-LEN SP SYSLOG-MSG (also RFC 5425 over TLS)."""
    return str(len(message)).encode("ascii") + b" " + message


# ---------------------------------------------------------------------------
# Webhook
# ---------------------------------------------------------------------------


def webhook_body(alert: Alert) -> bytes:
    """The webhook POST body: the alert as JSON, with its id for the receiver's deduplication."""
    return json.dumps(alert.to_dict(), ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
