"""`shadowai run`: the long-running sensor on mirror-port interfaces (or a replayed capture).

Threads: one reader per interface (libpcap releases the GIL while it waits) feeding a
bounded queue; the main thread runs the pipeline; the database writer, the metrics server
and each alert transport have their own threads, so a slow disk or a dead SIEM never
stalls capture. Signals only set flags; the main loop acts on them between batches.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from detector.app import build_classifier
from detector.capture.bulk_filter import MAX_FILTER_FLOWS, BulkFlow
from detector.capture.live import CaptureSetupError, LiveInterface, merged_segments
from detector.capture.pcapfile import iter_frames
from detector.config import Config, state_path
from detector.fastpath import PYTHON_UDP_PORTS
from detector.flows.heads import HeadSelector
from detector.model import Stats, UsageEvent
from detector.pipeline import Pipeline, settle_heap
from detector.sinks.metrics import RulesState

log = logging.getLogger("shadowai")

# Batches waiting for the pipeline (a live window holds up to 16 MB). When Python falls
# behind, readers block here and the kernel ring buffer absorbs the burst (its drops are
# counted), instead of memory growing.
QUEUE_BATCHES = 8
# How often the main loop does its housekeeping (flow expiry on wall time, watchdog,
# filter update, retention) when packets keep it busy.
HOUSEKEEPING_SECONDS = 1.0
# How far the wall-clock flow time lags behind now on a quiet link: longer than a batch can
# wait in the queue, so a queued packet is never older than the flow clock.
QUIET_MARGIN_SECONDS = 2.0
# Batches read from each kernel ring at shutdown, at most: what a busy link queued.
MAX_DRAIN_BATCHES = 1000
# How often the sensor's own health (drops, blind share) is judged for the SOC.
HEALTH_SECONDS = 10.0
# Bulk-filter updates are batched, at most this often: a flow joins the list after
# BULK_PACKETS packets, so a second's delay costs little, and each update makes the kernel
# check and compile a program of up to a few thousand instructions.
FILTER_UPDATE_SECONDS = 1.0


# What a reader's batches are, and so how the main loop feeds them: frames, or a window of
# raw frames for the head selection.
FRAMES, WINDOW = 0, 1


class _Reader(threading.Thread):
    """Moves batches from one source into the queue until stopped or exhausted; each goes
    as (kind, batch), kind being FRAMES or WINDOW."""

    def __init__(
        self, name: str, read: Callable[[], object], out: queue.Queue, stop: threading.Event, kind: int = FRAMES
    ) -> None:
        super().__init__(name=f"capture-{name}", daemon=True)
        self._read, self._out, self._halt = read, out, stop
        self.kind = kind
        self.error: str | None = None
        self.leftover: object = None
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                batch = self._read()
                if batch is None:
                    break
                while batch:
                    if self._halt.is_set():
                        self.leftover = batch  # the main thread takes it at shutdown
                        break
                    try:
                        self._out.put((self.kind, batch), timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except Exception as exc:  # noqa: BLE001 - reported by the main loop, never silent
            self.error = f"{self.name}: {exc}"
        finally:
            self.finished.set()


def _each(feed: Callable[[float, int, bytes], None]) -> Callable[[list], None]:
    """A batch of frames fed one by one."""

    def fed(batch: list) -> None:
        for ts, lt, data in batch:
            feed(ts, lt, data)

    return fed


def _kind(iface: LiveInterface) -> int:
    """How an interface's batches are read and fed: an Ethernet link by windows for the
    head selection, anything else by frames."""
    return WINDOW if iface.linktype == 1 else FRAMES


class _Replay:
    """A capture file as a batch source, at recorded speed or as fast as possible."""

    def __init__(self, path: Path, realtime: bool, warn: Callable[[str], None]) -> None:
        self._frames = iter_frames(path, on_warning=warn)
        self._realtime = realtime
        self._offset: float | None = None
        self._next: tuple[float, int, bytes] | None = None  # read but not yet due

    def read(self) -> list | None:
        """The next frames that are due; [] while waiting; None at the end."""
        batch: list = []
        while True:
            frame = self._next if self._next is not None else next(self._frames, None)
            self._next = None
            if frame is None:
                return batch or None
            if self._realtime:
                now = time.monotonic()
                if self._offset is None:
                    self._offset = now - frame[0]
                wait = frame[0] + self._offset - now
                if wait > 0:
                    self._next = frame
                    if not batch:
                        time.sleep(min(wait, 0.2))  # short, so a stop request is seen soon
                    return batch
            batch.append(frame)
            if len(batch) >= 256:
                return batch


class BulkFlows:
    """Flows whose downloads the kernel filter may drop: named, not reportable, and big.

    A flow enters after BULK_PACKETS packets once its name is known not to matter, and leaves
    when it ends. Bounded: the most recent ones, as many as a BPF program can hold.
    """

    def __init__(self, limit: int = MAX_FILTER_FLOWS) -> None:
        self._flows: OrderedDict[BulkFlow, None] = OrderedDict()
        self.limit = limit
        self.changed = False

    def add(self, key: BulkFlow) -> None:
        """Start dropping the downloads of this (server, port, client, port) flow."""
        flows = self._flows
        if key in flows:
            return
        flows[key] = None
        if len(flows) > self.limit:
            flows.popitem(last=False)
        self.changed = True

    def discard(self, key: BulkFlow) -> None:
        """The flow ended: forget it."""
        if self._flows.pop(key, 0) is None:
            self.changed = True

    def flows(self) -> list[BulkFlow]:
        """The flows, oldest first."""
        return list(self._flows)

    def shrink(self, limit: int) -> None:
        """Hold at most `limit` flows from now on (the kernel took no more), the newest."""
        self.limit = limit
        while len(self._flows) > limit:
            self._flows.popitem(last=False)


class Daemon:
    """The composed sensor; `run()` blocks until SIGTERM/SIGINT (or the replay ends)."""

    def __init__(
        self,
        cfg: Config,
        *,
        interfaces: tuple[str, ...] = (),
        replay: Path | None = None,
        realtime: bool = False,
        exit_after_replay: bool = False,
        config_path: Path | None = None,
        reload_config: Callable[[], Config] | None = None,
        worker: tuple[int, int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.interfaces = interfaces
        self.replay = replay
        self.realtime = realtime
        self.exit_after_replay = exit_after_replay
        self._reload_config = reload_config
        # (index, fanout group) when this is one capture worker of several (--workers).
        self.worker = worker
        self.on_housekeeping: Callable[[], None] | None = None  # a worker reports its counters
        self.on_ready: Callable[[], None] | None = None  # a worker says it is capturing
        self.stats = Stats()
        self._stop = threading.Event()
        self._reload = False
        self._queue: queue.Queue = queue.Queue(QUEUE_BATCHES)
        self.rules = RulesState()
        self.bulk = BulkFlows()
        self._filters_next = 0.0  # monotonic time before which the filter is not recompiled
        self._health_at = 0.0
        self._live: list[LiveInterface] = []
        self._readers: list[_Reader] = []
        self._sinks: list[Callable[[UsageEvent], None]] = []
        self._closers: list[Callable[[], None]] = []

    # -- set-up ----------------------------------------------------------------

    def _setup(self) -> None:
        from detector.sinks.metrics import UsageMetrics, new_registry, serve
        from detector.sinks.store import BatchWriter, Store

        cfg = self.cfg
        self.classifier = build_classifier(cfg)
        self._rules_loaded(True)
        self.pipeline = Pipeline(cfg, self.classifier, self._emit, self.stats)
        # Each IPv4 flow of a live link reaches the pipeline as its head and counted runs.
        self._heads = HeadSelector(
            1, whole_ports=PYTHON_UDP_PORTS, idle_timeout=cfg.flows.idle_timeout, inspect_bytes=cfg.flows.inspect_bytes,
            max_states=2 * cfg.flows.max_flows,
        )  # fmt: skip
        # How a batch is fed, by its reader's kind.
        self._feeds = (_each(self.pipeline.feed), self._feed_window)
        if cfg.capture.bpf == "auto" and self.interfaces:
            self.pipeline.watch_bulk = self.bulk.add
            self.pipeline.bulk_ended = self.bulk.discard
        self.writer = None
        if cfg.store.path:
            store = Store(
                state_path(cfg.store.path),
                sensor=cfg.sensor.name,
                raw_retention_days=cfg.store.raw_retention_days,
                aggregate_retention_days=cfg.store.aggregate_retention_days,
            )
            self.writer = BatchWriter(
                store, flush_interval=cfg.store.flush_interval, max_batch=cfg.store.max_batch,
                max_queue=cfg.store.max_backlog,
            ).start()  # fmt: skip
            self._sinks.append(self.writer.put)
            self._closers.append(self.writer.close)
        live = bool(self.interfaces)
        self.metrics = UsageMetrics(
            self.stats,
            capture=self.capture_stats if live else None,
            tables=lambda: (len(self.pipeline.table), len(self.pipeline.dnscache)),
            store=self.writer,
            rules=self.rules,
            active_window=cfg.metrics.active_window,
            clock=time.time if live else None,
        )
        self._sinks.insert(0, self.metrics.handle)
        self.alerts = None
        if cfg.alerts.enabled:
            from detector.sinks.soc import build_alert_service

            try:
                self.alerts = build_alert_service(cfg.alerts, cfg.sensor.name, state_path(cfg.alerts.spool_dir))
            except ValueError as exc:
                raise CaptureSetupError(f"alerts: {_one_line(exc)}") from None
            self.add_sink(self.alerts.handle, self.alerts.close)
            self.metrics.alerts = self.alerts
        self.server = None
        if cfg.metrics.listen:
            try:
                self.server = serve(cfg.metrics.listen, new_registry(self.metrics))
            except (OSError, ValueError) as exc:
                raise CaptureSetupError(
                    f"metrics endpoint {cfg.metrics.listen}: {getattr(exc, 'strerror', None) or exc}"
                ) from None
            self._closers.append(self._stop_server)
        self._open_sources()

    def _stop_server(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _open_sources(self) -> None:
        for name in self.interfaces:
            self._open_interface(name)
        if self.replay is not None:
            warn = lambda msg: log.warning("%s", msg)  # noqa: E731
            source = _Replay(self.replay, self.realtime, warn)
            self._readers.append(_Reader(self.replay.name, source.read, self._queue, self._stop))

    def _feed_window(self, window: tuple[bytes, bytes]) -> None:
        self._heads.feed(window[0], window[1], self.pipeline.feed, self.pipeline.feed_run)

    def _open_interface(self, name: str) -> None:
        cfg = self.cfg.capture
        # The operator's own expression, or none: "auto" is the bulk filter, set as flows are known.
        bpf = "" if cfg.bpf == "auto" else cfg.bpf
        iface = LiveInterface(name, snaplen=cfg.snaplen, promiscuous=cfg.promiscuous, buffer_mib=cfg.buffer_mib, bpf=bpf)
        if self.worker is not None:
            # A worker gets whole clients (their flows and their DNS), so its DNS cache
            # names its own flows and it reports its own clients' lookups.
            iface.join_fanout(self.worker[1])
        merged = merged_segments(name)
        if merged and (self.worker is None or self.worker[0] == 0):
            log.warning(
                "%s: %s is on: the kernel merges TCP segments before capture, so packets are counted merged "
                "and a merged segment longer than capture.snaplen (%d) loses its end, which can cut a ClientHello "
                "that spans segments; on a mirror port turn it off: ethtool -K %s gro off lro off",
                name, " and ".join(merged), cfg.snaplen, name,
            )  # fmt: skip
        self._live.append(iface)
        kind = _kind(iface)
        self._readers.append(
            _Reader(name, iface.read_window if kind == WINDOW else iface.read, self._queue, self._stop, kind)
        )

    def _rules_loaded(self, ok: bool) -> None:
        # The metrics hold this same object: update it in place.
        cat = self.classifier.catalogue
        self.rules.version, self.rules.services = str(cat.version), len(cat.services)
        self.rules.last_reload_success, self.rules.last_reload_timestamp = ok, time.time()

    # -- events ----------------------------------------------------------------

    def _emit(self, ev: UsageEvent) -> None:
        for sink in self._sinks:
            sink(ev)

    def add_sink(self, sink: Callable[[UsageEvent], None], close: Callable[[], None] | None = None) -> None:
        """Attach another consumer of events (e.g. alerts)."""
        self._sinks.append(sink)
        if close is not None:
            self._closers.append(close)

    # -- signals ---------------------------------------------------------------

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_reload", True))

    def stop(self) -> None:
        """Ask the main loop to drain and exit."""
        self._stop.set()

    def _do_reload(self) -> None:
        self._reload = False
        try:
            cfg = self._reload_config() if self._reload_config else self.cfg
            classifier = build_classifier(cfg)
        except Exception as exc:  # noqa: BLE001 - a broken rules file must not stop the sensor
            self.rules.last_reload_success = False
            self.rules.last_reload_timestamp = time.time()
            log.error("reload failed, keeping the rules in force: %s", _one_line(exc))
            return
        self.cfg = cfg
        self.classifier = classifier
        self.pipeline.classifier = classifier
        self._rules_loaded(True)
        log.info("rules reloaded: %d services, version %s", self.rules.services, self.rules.version)

    # -- main loop -------------------------------------------------------------

    def run(self) -> int:
        """Capture until stopped; return the exit status."""
        self._setup()
        settle_heap()
        self._install_signals()
        for r in self._readers:
            r.start()
        log.info(
            "sensor %s running: %s; metrics on %s; database %s",
            self.cfg.sensor.name,
            ", ".join(self.interfaces) or f"replay of {self.replay}",
            self.cfg.metrics.listen or "(off)",
            self.cfg.store.path or "(off)",
        )
        notify("READY=1")
        if self.on_ready is not None:
            self.on_ready()
        watchdog = _watchdog_interval()
        next_house = next_watchdog = time.monotonic()
        replay_done = False
        status = 0
        feeds = self._feeds
        try:
            while not self._stop.is_set():
                try:
                    kind, batch = self._queue.get(timeout=0.2)
                except queue.Empty:
                    batch = None
                if batch:
                    feeds[kind](batch)
                    if self.bulk.changed and time.monotonic() >= self._filters_next:
                        self._update_filters()
                now = time.monotonic()
                if now >= next_house:
                    next_house = now + HOUSEKEEPING_SECONDS
                    self._housekeeping(live=bool(self._live))
                if watchdog and now >= next_watchdog:
                    next_watchdog = now + watchdog
                    notify("WATCHDOG=1")
                if self._reload:
                    self._do_reload()
                if (
                    not replay_done
                    and self.replay is not None
                    and self._queue.empty()
                    and all(r.finished.is_set() for r in self._readers)
                ):
                    replay_done = True
                    self.pipeline.finish()
                    self._replay_finished()
                    if self.exit_after_replay:
                        break
                failed = [r.error for r in self._readers if r.error]
                if failed:
                    log.error("capture failed: %s", "; ".join(failed))
                    status = 1
                    break
        finally:
            notify("STOPPING=1")
            self._shutdown(replay_done)
        return status

    def _housekeeping(self, live: bool) -> None:
        if live:
            # Flow time follows the packets; the wall clock only stands in on a quiet link,
            # held back so that packets still queued are not later than the clock.
            self.pipeline.tick(time.time() - QUIET_MARGIN_SECONDS)
        self.pipeline.sync_stats()
        now = time.monotonic()
        if self.alerts is not None and now >= self._health_at:
            from detector.sinks.alerts import HealthSnapshot

            self._health_at = now + HEALTH_SECONDS
            self.alerts.check_health(HealthSnapshot.take(self.stats, self.capture_stats() if live else None))
        if self.on_housekeeping is not None:
            self.on_housekeeping()

    def _update_filters(self) -> None:
        """Put the current bulk flows into every interface's kernel filter (batched, at
        most every FILTER_UPDATE_SECONDS)."""
        self.bulk.changed = False
        self._filters_next = time.monotonic() + FILTER_UPDATE_SECONDS
        flows = self.bulk.flows()
        for iface in self._live:
            try:
                held = iface.drop_flows(flows)
            except CaptureSetupError as exc:
                log.error("%s", exc)
                continue
            if held < len(flows):
                log.warning(
                    "%s: the kernel holds a bulk filter of %d flows, not %d (raise net.core.optmem_max for more)",
                    iface.name, held, len(flows),
                )  # fmt: skip
                self.bulk.shrink(held)

    def _replay_finished(self) -> None:
        log.info("replay finished: %d packets, %d events", self.stats.packets, self.stats.events)
        if self.writer is not None:
            self.writer.flush()

    def _shutdown(self, finished: bool) -> None:
        self._stop.set()
        # Drain what the readers already queued and what still waits in the kernel rings,
        # then report every open flow: nothing captured is lost on SIGTERM.
        for r in self._readers:
            r.join(timeout=2.0)
        feeds = self._feeds
        try:
            while True:
                kind, batch = self._queue.get_nowait()
                feeds[kind](batch)
        except queue.Empty:
            pass
        for r in self._readers:
            if r.leftover:
                feeds[r.kind](r.leftover)
        for iface in self._live:
            kind = _kind(iface)
            if kind == WINDOW:
                for window in iface.drain(MAX_DRAIN_BATCHES, window=True):
                    feeds[WINDOW](window)
            else:
                feeds[kind](iface.drain(MAX_DRAIN_BATCHES))
        if not finished:
            self.pipeline.finish()
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - closing the rest matters more
                log.error("while stopping: %s", _one_line(exc))
        for iface in self._live:
            iface.close()
        log.info("stopped: %d packets, %d events", self.stats.packets, self.stats.events)

    def capture_stats(self) -> dict[str, tuple[int, int, int]]:
        """Kernel counters per interface: (received, kernel drops, interface drops), summed
        over its handles."""
        out: dict[str, tuple[int, int, int]] = {}
        for iface in self._live:
            s = iface.stats()
            r, k, i = out.get(iface.name, (0, 0, 0))
            out[iface.name] = (r + s.received, k + s.kernel_drops, i + s.interface_drops)
        return out


def notify(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if systemd set it."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError:
        pass


def _watchdog_interval() -> float:
    usec = os.environ.get("WATCHDOG_USEC", "")
    return int(usec) / 2e6 if usec.isdigit() else 0.0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
