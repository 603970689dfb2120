"""Delivery of alerts: one background thread, one on-disk spool and one transport per sink.

The event path only puts an alert on a bounded in-memory queue (`SinkWorker.submit`, never
blocks). The sink's thread moves it into the spool — one JSON file per alert, written to a
temporary name and renamed, so a crash never leaves half an alert — and then delivers the
spool in order, removing each file only after its transport reported success. A destination
that is down keeps alerts in the spool and is retried with exponential backoff; alerts survive
a restart of the sensor because the next worker on the same directory starts from its files.
A spool at its bound drops its oldest alert (counted) so that disk use stays bounded.

Guarantees: no alert is lost while the spool has room, and they arrive in order. A crash between
a successful delivery and the removal of its file delivers that one alert again; the webhook
receiver drops it by its `id` (also sent as `Idempotency-Key`), a SIEM by `externalId`/`event.id`.

References:
  RFC 5426 (syslog over UDP), RFC 6587 §3.4.1 (TCP octet counting), RFC 5425 (syslog over TLS)
  RFC 2104 (HMAC), RFC 9110 §15 (status codes: 408/425/429 and 5xx are worth a retry)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import select
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from detector import __version__
from detector.sinks.alert_format import ecs_line, octet_frame, syslog_message, syslog_timestamp, webhook_body
from detector.sinks.alerts import Alert

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-ShadowAI-Signature"

# HTTP statuses that mean "try again later" (RFC 9110 §15.5.9, RFC 8470 §5.2, RFC 6585 §4);
# every other 4xx means the receiver will never take this alert.
RETRY_STATUSES = frozenset({408, 425, 429})

# Put on a worker's queue by close() to end its wait for new alerts.
_WAKE = None

# Spool file names: a zero-padded sequence number sorts in delivery order.
_SPOOL_SUFFIX = ".json"
_SEQ_DIGITS = 16


class DeliveryError(Exception):
    """A delivery failed; `permanent` means retrying cannot help (the receiver rejected it)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(Protocol):
    """Sends one alert or raises DeliveryError."""

    def send(self, alert: Alert) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------
# Spool
# ---------------------------------------------------------------------------


class Spool:
    """Alerts waiting for one sink: a directory of `<seq>.json` files, oldest first.

    Only the sink's own thread touches it after construction.
    """

    def __init__(self, directory: Path, max_items: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_items = max(1, max_items)
        for stale in self.dir.glob(".*.tmp"):  # a crash mid-write: never renamed, never promised
            stale.unlink(missing_ok=True)
        names = sorted(p.name for p in self.dir.glob("*" + _SPOOL_SUFFIX) if p.stem.isdigit())
        self._names: deque[str] = deque(names)
        self._next = int(names[-1][: -len(_SPOOL_SUFFIX)]) + 1 if names else 1

    def __len__(self) -> int:
        return len(self._names)

    def append(self, alert: Alert) -> int:
        """Store an alert durably; returns how many old alerts were dropped to make room."""
        dropped = 0
        while len(self._names) >= self.max_items:
            (self.dir / self._names.popleft()).unlink(missing_ok=True)
            dropped += 1
        name = f"{self._next:0{_SEQ_DIGITS}d}{_SPOOL_SUFFIX}"
        self._next += 1
        tmp = self.dir / f".{name}.tmp"
        data = json.dumps(alert.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.dir / name)
        self._names.append(name)
        return dropped

    def peek(self) -> tuple[str, Alert] | None:
        """The oldest alert and its file name, or None when empty. Unreadable files are
        removed (and logged) rather than blocking the sink forever."""
        while self._names:
            name = self._names[0]
            try:
                data = json.loads((self.dir / name).read_bytes())
                return name, Alert.from_dict(data)
            except (OSError, ValueError, TypeError) as exc:
                log.error("alerts: spool file %s unreadable, removed: %s", self.dir / name, exc)
                self._names.popleft()
                (self.dir / name).unlink(missing_ok=True)
        return None

    def remove(self, name: str) -> None:
        """Forget a delivered alert (the head of the spool)."""
        if self._names and self._names[0] == name:
            self._names.popleft()
        (self.dir / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# The worker thread per sink
# ---------------------------------------------------------------------------


class DeliveryCounts:
    """(sink, result) -> count, shared by all workers; results: ok, retry, rejected, dropped."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def add(self, sink: str, result: str, n: int = 1) -> None:
        """Count `n` outcomes."""
        with self._lock:
            key = (sink, result)
            self.counts[key] = self.counts.get(key, 0) + n

    def snapshot(self) -> dict[tuple[str, str], int]:
        """A copy for the metrics."""
        with self._lock:
            return dict(self.counts)


class SinkWorker:
    """Moves alerts from a bounded queue into the spool and from the spool to the transport."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        spool: Spool,
        counts: DeliveryCounts,
        *,
        queue_size: int = 10_000,
        retry_initial: float = 1.0,
        retry_max: float = 300.0,
    ) -> None:
        self.name = name
        self.transport = transport
        self.spool = spool
        self.counts = counts
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=max(1, queue_size))
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._failing = False  # log a failure streak once, not per retry
        self._unspooled = 0  # submitted, not yet in the spool (guarded by _idle)

    def start(self) -> SinkWorker:
        """Start the delivery thread."""
        self._thread = threading.Thread(target=self._run, name=f"shadowai-alerts-{self.name}", daemon=True)
        self._thread.start()
        return self

    def submit(self, alert: Alert) -> bool:
        """Queue an alert without blocking; False (counted as dropped) when the queue is full."""
        with self._idle:
            try:
                self._queue.put_nowait(alert)
            except queue.Full:
                self.counts.add(self.name, "dropped")
                return False
            self._unspooled += 1
        return True

    def pending(self) -> int:
        """Alerts in the spool, not yet delivered."""
        return len(self.spool)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the queue and the spool are empty (for tests and a clean shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unspooled == 0 and len(self.spool) == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop. While the destination is up, deliver what waits (up to half of `timeout`);
        whatever is left stays in the spool for the next start."""
        if self._thread is not None and not self._failing:
            self.wait_idle(timeout / 2)
        self._stop.set()
        if self._thread is not None:
            try:
                self._queue.put_nowait(_WAKE)  # end a wait for new alerts at once
            except queue.Full:
                pass  # the thread is busy with the queue anyway
            self._thread.join(timeout)
            self._thread = None
        self._spool_queued()  # anything submitted after the thread ended
        self.transport.close()

    # -- the thread --------------------------------------------------------------

    def _run(self) -> None:
        delay = self.retry_initial
        while not self._stop.is_set():
            self._spool_queued()
            head = self.spool.peek()
            if head is None:
                self._notify_idle()
                self._take(timeout=1.0)
                continue
            if self._deliver(*head):
                delay = self.retry_initial
            else:
                self._take_until(delay)
                delay = min(delay * 2, self.retry_max)
        self._spool_queued()

    def _deliver(self, name: str, alert: Alert) -> bool:
        """One attempt at the head of the spool; True when the head is gone (sent or rejected)."""
        try:
            self.transport.send(alert)
        except DeliveryError as exc:
            if exc.permanent:
                log.error("alerts: %s rejected alert %s for good, dropped: %s", self.name, alert.id, exc)
                self.counts.add(self.name, "rejected")  # counted before the spool shrinks: wait_idle
                self.spool.remove(name)
                return True
            if not self._failing:
                log.warning("alerts: %s unreachable, spooling until it returns: %s", self.name, exc)
                self._failing = True
            self.counts.add(self.name, "retry")
            return False
        if self._failing:
            log.info("alerts: %s reachable again; delivering %d spooled alerts", self.name, len(self.spool))
            self._failing = False
        self.counts.add(self.name, "ok")
        self.spool.remove(name)
        return True

    def _take(self, timeout: float) -> None:
        """Wait up to `timeout` for one alert and spool it."""
        try:
            alert = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        self._store(alert)

    def _take_until(self, seconds: float) -> None:
        """Back off for `seconds` while still spooling whatever arrives (so the queue never fills)."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._take(timeout=min(left, 0.5))

    def _spool_queued(self) -> None:
        while True:
            try:
                alert = self._queue.get_nowait()
            except queue.Empty:
                return
            self._store(alert)

    def _store(self, alert: Alert | None) -> None:
        if alert is None:  # _WAKE
            return
        try:
            dropped = self.spool.append(alert)
        except OSError as exc:
            log.error("alerts: %s spool not writable, alert %s dropped: %s", self.name, alert.id, exc)
            self.counts.add(self.name, "dropped")
            return
        finally:
            with self._idle:
                self._unspooled -= 1
        if dropped:
            log.warning("alerts: %s spool full, dropped the %d oldest alerts", self.name, dropped)
            self.counts.add(self.name, "dropped", dropped)

    def _notify_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()


# ---------------------------------------------------------------------------
# Transports
# ---------------------------------------------------------------------------


class FileTransport:
    """ECS JSON lines appended to a file; reopened per alert so that logrotate just works."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def send(self, alert: Alert) -> None:
        """Append one line."""
        line = ecs_line(alert, created=syslog_timestamp(datetime.now(UTC)))
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:
            raise DeliveryError(f"{self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Nothing held open."""


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT -> (host, port); ValueError names the problem."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class SyslogTransport:
    """RFC 5424 messages with a CEF payload over UDP, TCP (octet counting) or TLS.

    TCP and TLS keep one connection and reconnect after a failure. Before each send the
    connection is checked for an orderly close by the receiver, so a restarted SIEM does not
    silently swallow the first alert into a dead socket.
    """

    def __init__(
        self,
        address: str,
        transport: str = "udp",
        *,
        facility: int = 13,
        hostname: str = "",
        app_name: str = "shadowai",
        ssl_context: ssl.SSLContext | None = None,
        server_name: str = "",
        timeout: float = 5.0,
    ) -> None:
        if transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"syslog transport {transport!r}: one of udp, tcp, tls")
        self.host, self.port = split_address(address)
        self.transport = transport
        self.facility = facility
        self.hostname = hostname or socket.gethostname()
        self.app_name = app_name
        self.ssl_context = ssl_context
        self.server_name = server_name or self.host
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def send(self, alert: Alert) -> None:
        """Send one message."""
        message = syslog_message(alert, facility=self.facility, hostname=self.hostname, app_name=self.app_name)
        try:
            if self.transport == "udp":
                self._send_udp(message)
            else:
                self._send_stream(octet_frame(message))
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise DeliveryError(f"syslog {self.transport}://{self.host}:{self.port}: {exc}") from None

    def _send_udp(self, message: bytes) -> None:
        if self._sock is None:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0][0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))  # connected: ICMP unreachable surfaces as an error
            self._sock = sock
        self._sock.send(message)

    def _send_stream(self, frame: bytes) -> None:
        if self._sock is not None and _peer_closed(self._sock):
            self.close()
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            if self.transport == "tls":
                context = self.ssl_context or ssl.create_default_context()
                try:
                    sock = context.wrap_socket(sock, server_hostname=self.server_name)
                except (OSError, ssl.SSLError):
                    sock.close()
                    raise
            self._sock = sock
        self._sock.sendall(frame)

    def close(self) -> None:
        """Drop the connection (with a TLS close_notify, so the receiver logs no error)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock = sock.unwrap()
        except (OSError, ssl.SSLError):
            pass
        try:
            sock.close()
        except OSError:
            pass


def _peer_closed(sock: socket.socket) -> bool:
    """True if the receiver closed (or reset) a stream we only ever write to.

    Checked without blocking: a TLS receiver may have sent handshake records (TLS 1.3 session
    tickets) that make the socket readable without any application data.
    """
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            if isinstance(sock, ssl.SSLSocket):
                return sock.recv(1) == b""  # b"" on close_notify or a plain FIN
            return sock.recv(1, socket.MSG_PEEK) == b""
        finally:
            sock.settimeout(timeout)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except (OSError, ssl.SSLError):
        return True


def tls_context(ca_file: str = "", cert_file: str = "", key_file: str = "", verify: bool = True) -> ssl.SSLContext:
    """A client TLS context: the given CA (or the system store), optional client certificate."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def sign(secret: bytes, body: bytes) -> str:
    """The X-ShadowAI-Signature value: `sha256=` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str) -> bool:
    """Receiver side: constant-time check of an X-ShadowAI-Signature header."""
    return hmac.compare_digest(sign(secret, body), header or "")


class WebhookTransport:
    """POSTs each alert as JSON, signed with HMAC-SHA256 over the exact body."""

    def __init__(
        self, url: str, secret: bytes, *, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url {url!r}: must start with http:// or https://")
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.ssl_context = ssl_context
        # No proxies from the environment: alerts go where the operator configured them.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
        self._opener = urllib.request.build_opener(*handlers)

    def send(self, alert: Alert) -> None:
        """One POST; 2xx is success, 408/425/429/5xx and network errors are retried."""
        body = webhook_body(alert)
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"shadowai/{__version__}",
                SIGNATURE_HEADER: sign(self.secret, body),
                "X-ShadowAI-Alert-Id": alert.id,
                "Idempotency-Key": alert.id,
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            permanent = 400 <= exc.code < 500 and exc.code not in RETRY_STATUSES
            raise DeliveryError(f"webhook {self.url}: HTTP {exc.code}", permanent=permanent) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DeliveryError(f"webhook {self.url}: {getattr(exc, 'reason', exc)}") from None

    def close(self) -> None:
        """Nothing held open."""
