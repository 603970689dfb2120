"""The SOC alert sink: the alert engine wired to one delivery worker per configured output.

What the daemon holds: `build_alert_service(cfg.alerts, sensor, spool_dir)` once at start,
`handle(event)` per event, `check_health(snapshot)` every few seconds, `close()` on shutdown.
The service is also the `metrics.AlertStats` source for shadowai_alerts_* metrics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from detector.model import UsageEvent
from detector.sinks.alert_transports import (
    DeliveryCounts,
    FileTransport,
    SinkWorker,
    Spool,
    SyslogTransport,
    Transport,
    WebhookTransport,
    tls_context,
)
from detector.sinks.alerts import Alert, AlertEngine, AlertsConfig, HealthSnapshot, check_config


class AlertService:
    """Engine plus workers. Calls from the capture thread and a health timer are serialised."""

    def __init__(
        self,
        cfg: AlertsConfig,
        sensor: str,
        workers: Mapping[str, SinkWorker],
        counts: DeliveryCounts,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers = dict(workers)
        self.counts = counts
        self.engine = AlertEngine(cfg, sensor, self._fan_out, clock)
        self._lock = threading.Lock()

    def _fan_out(self, alert: Alert) -> None:
        for worker in self.workers.values():
            worker.submit(alert)

    def start(self) -> AlertService:
        """Start every sink's delivery thread."""
        for worker in self.workers.values():
            worker.start()
        return self

    def handle(self, ev: UsageEvent) -> None:
        """Apply the alert rules to one event."""
        with self._lock:
            self.engine.handle(ev)

    def check_health(self, snap: HealthSnapshot) -> None:
        """Apply the sensor-blind rule to a fresh health snapshot."""
        with self._lock:
            self.engine.check_health(snap)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every sink; undelivered alerts stay spooled for the next start."""
        for worker in self.workers.values():
            worker.close(timeout)

    # -- metrics.AlertStats ------------------------------------------------------

    def alert_counts(self) -> dict[tuple[str, str], int]:
        """(rule, severity) -> alerts raised."""
        with self._lock:
            return dict(self.engine.counts)

    def delivery_counts(self) -> dict[tuple[str, str], int]:
        """(sink, result) -> delivery outcomes."""
        return self.counts.snapshot()

    def spool_sizes(self) -> dict[str, int]:
        """sink -> alerts waiting on disk."""
        return {name: w.pending() for name, w in self.workers.items()}


def build_transports(cfg: AlertsConfig, sensor: str) -> dict[str, Transport]:
    """The configured outputs by sink name (file, syslog, webhook); ValueError on a bad setting."""
    out: dict[str, Transport] = {}
    if cfg.file.path:
        out["file"] = FileTransport(cfg.file.path)
    s = cfg.syslog
    if s.address:
        context = tls_context(s.ca_file, s.cert_file, s.key_file, s.verify) if s.transport == "tls" else None
        out["syslog"] = SyslogTransport(
            s.address,
            s.transport,
            facility=s.facility,
            hostname=s.hostname or sensor,
            ssl_context=context,
            server_name=s.server_name,
            timeout=s.timeout,
        )
    w = cfg.webhook
    if w.url:
        secret = Path(w.secret_file).read_bytes().strip() if w.secret_file else w.secret.encode("utf-8")
        if not secret:
            raise ValueError("alerts.webhook: a signing secret is required (secret_file or secret)")
        context = tls_context(w.ca_file) if w.url.startswith("https://") and w.ca_file else None
        out["webhook"] = WebhookTransport(w.url, secret, timeout=w.timeout, ssl_context=context)
    return out


def build_alert_service(
    cfg: AlertsConfig,
    sensor: str,
    spool_dir: Path | None = None,
    *,
    transports: Mapping[str, Transport] | None = None,
    clock: Callable[[], float] = time.monotonic,
    start: bool = True,
) -> AlertService:
    """Build (and start) the alert service; `spool_dir` defaults to cfg.spool_dir as given.

    ValueError lists the configuration problems (`alerts.key: problem`).
    """
    problems = check_config(cfg)
    if problems:
        raise ValueError("; ".join(problems))
    root = Path(spool_dir) if spool_dir is not None else Path(cfg.spool_dir)
    chosen = dict(transports) if transports is not None else (build_transports(cfg, sensor) if cfg.enabled else {})
    counts = DeliveryCounts()
    workers = {
        name: SinkWorker(
            name,
            transport,
            Spool(root / name, cfg.spool_max),
            counts,
            queue_size=cfg.queue_size,
            retry_initial=cfg.retry_initial,
            retry_max=cfg.retry_max,
        )
        for name, transport in chosen.items()
    }
    service = AlertService(cfg, sensor, workers, counts, clock)
    return service.start() if start else service
