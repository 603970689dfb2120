"""`shadowai run --workers N`: N capture processes sharing the interfaces through AF_PACKET
fanout (keyed on the client's address, see capture.fanout_program), one coordinator with the database writer, the metrics
endpoint and the SOC alerts.

Each worker is an ordinary daemon without outputs: it sends its events and, every second,
a snapshot of its counters to the coordinator over a queue. The coordinator adds the
snapshots up (the metrics read the sums) and hands the events to its sinks, so there is one
writer for DuckDB and one /metrics for Prometheus. SIGHUP and SIGTERM are passed on to the
workers; on SIGTERM each drains and reports its open flows before the coordinator stops.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable

from detector.config import Config
from detector.daemon import Daemon, notify
from detector.logs import setup_logging
from detector.model import Stats

log = logging.getLogger("shadowai")

# Seconds the coordinator waits for its workers to drain after SIGTERM.
STOP_TIMEOUT = 60.0
# Messages (events, counter snapshots) waiting for the coordinator, at most (~40 MB of
# pickled events). A worker whose put finds it full waits, and its kernel ring takes the
# backlog (its drops are counted and alerted on), instead of memory growing without bound.
MAX_QUEUED = 65_536


def _worker_main(cfg: Config, interfaces: tuple[str, ...], index: int, group: int, out: mp.Queue) -> None:
    """One capture worker (a child process)."""
    setup_logging(cfg.logging.format, cfg.logging.level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    os.environ.pop("NOTIFY_SOCKET", None)  # systemd hears from the coordinator only
    quiet = dataclasses.replace(
        cfg,
        store=dataclasses.replace(cfg.store, path=""),
        metrics=dataclasses.replace(cfg.metrics, listen=""),
        alerts=dataclasses.replace(cfg.alerts, enabled=False),
        flows=dataclasses.replace(cfg.flows, max_flows=max(1024, cfg.flows.max_flows // max(1, group_size(cfg)))),
    )
    d = Daemon(quiet, interfaces=interfaces, worker=(index, group))
    d.add_sink(lambda ev: out.put(("event", ev)))
    d.on_housekeeping = lambda: out.put(("stats", index, _snapshot(d)))
    d.on_ready = lambda: out.put(("ready", index, 0))
    status = d.run()
    out.put(("stats", index, _snapshot(d)))
    out.put(("done", index, status))


def group_size(cfg: Config) -> int:
    """Workers configured."""
    return max(1, cfg.capture.workers)


def _snapshot(d: Daemon) -> dict:
    stats = dataclasses.asdict(d.stats)
    stats["_capture"] = d.capture_stats()
    stats["_tables"] = (len(d.pipeline.table), len(d.pipeline.dnscache)) if hasattr(d, "pipeline") else (0, 0)
    return stats


class Coordinator(Daemon):
    """The daemon of `--workers N`: sinks and metrics here, capture in the workers."""

    def __init__(self, cfg: Config, *, interfaces: tuple[str, ...], reload_config: Callable[[], Config] | None) -> None:
        super().__init__(cfg, interfaces=(), reload_config=reload_config)
        self.capture_interfaces = interfaces
        self._snapshots: dict[int, dict] = {}
        self._procs: list = []

    def capture_stats(self) -> dict[str, tuple[int, int, int]]:
        """Kernel counters per interface, summed over the workers."""
        out: dict[str, tuple[int, int, int]] = {}
        for snap in self._snapshots.values():
            for name, counts in snap.get("_capture", {}).items():
                prev = out.get(name, (0, 0, 0))
                out[name] = tuple(a + b for a, b in zip(prev, counts))  # type: ignore[assignment]
        return out

    def table_sizes(self) -> tuple[int, int]:
        """Flow-table and DNS-cache entries, summed over the workers (each holds its own
        clients' flows and answers)."""
        sizes = [s.get("_tables", (0, 0)) for s in self._snapshots.values()]
        return sum(flows for flows, _ in sizes), sum(dns for _, dns in sizes)

    def _sum_stats(self) -> None:
        total = Stats()
        for snap in self._snapshots.values():
            for f in dataclasses.fields(Stats):
                value = snap.get(f.name)
                if isinstance(value, dict):
                    merged = getattr(total, f.name)
                    for k, v in value.items():
                        merged[k] = merged.get(k, 0) + v
                elif isinstance(value, int):
                    setattr(total, f.name, getattr(total, f.name) + value)
        # Update in place: the metrics collector holds this object.
        for f in dataclasses.fields(Stats):
            setattr(self.stats, f.name, getattr(total, f.name))

    def run(self) -> int:
        """Start the workers, consume their events until stopped; return the exit status."""
        ctx = mp.get_context("spawn")
        events: mp.Queue = ctx.Queue(MAX_QUEUED)
        group = (os.getpid() & 0x7FFF) or 1
        n = group_size(self.cfg)
        for i in range(n):
            p = ctx.Process(target=_worker_main, args=(self.cfg, self.capture_interfaces, i, group, events), daemon=True)
            p.start()
            self._procs.append(p)
        self._install_signals()
        if not self._await_workers(events, n):
            for p in self._procs:
                p.kill()
            return 2
        # Outputs start once every worker captures: nothing is announced that is not seen.
        self._setup()
        self.metrics.capture = self.capture_stats
        self.metrics.tables = self.table_sizes
        self.metrics.clock = time.time
        log.info("sensor %s running: %d workers on %s", self.cfg.sensor.name, n, ", ".join(self.capture_interfaces))
        notify("READY=1")
        done: dict[int, int] = {}
        stopping_since: float | None = None
        status = 0
        try:
            while len(done) < n:
                if self._stop.is_set() and stopping_since is None:
                    stopping_since = time.monotonic()
                    notify("STOPPING=1")
                    self._signal_workers(signal.SIGTERM)
                if self._reload:
                    self._reload = False
                    self._signal_workers(signal.SIGHUP)
                    self._do_reload()
                try:
                    msg = events.get(timeout=0.5)
                except queue.Empty:
                    msg = None
                if msg is not None:
                    kind = msg[0]
                    if kind == "event":
                        self._emit(msg[1])
                    elif kind == "stats":
                        self._snapshots[msg[1]] = msg[2]
                        self._sum_stats()
                    else:
                        done[msg[1]] = msg[2]
                        status = status or msg[2]
                        if stopping_since is None and msg[2]:
                            log.error("worker %d failed; stopping", msg[1])
                            self._stop.set()
                if stopping_since is not None and time.monotonic() - stopping_since > STOP_TIMEOUT:
                    log.error("workers did not stop in time")
                    status = 1
                    break
                if all(not p.is_alive() for p in self._procs) and events.empty() and len(done) < n:
                    log.error("a worker died without reporting")
                    status = 1
                    break
        finally:
            for p in self._procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
            self._shutdown(True)
        return status

    def _await_workers(self, events: mp.Queue, n: int) -> bool:
        ready: set[int] = set()
        deadline = time.monotonic() + STOP_TIMEOUT
        while len(ready) < n and time.monotonic() < deadline and not self._stop.is_set():
            try:
                kind, index, status = events.get(timeout=0.5)[:3]
            except queue.Empty:
                if any(not p.is_alive() for p in self._procs):
                    break
                continue
            if kind == "ready":
                ready.add(index)
            elif kind == "done":
                log.error("worker %d could not start capturing (status %d)", index, status)
                return False
        if len(ready) < n:
            log.error("capture workers did not start (%d of %d ready)", len(ready), n)
            return False
        return True

    def _signal_workers(self, sig: int) -> None:
        for p in self._procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, sig)
