"""Composition root: builds sources, pipeline, classifier and sinks from a Config and runs them."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING

from detector import __version__
from detector.capture import suricata, zeeklog
from detector.capture.libpcap import splittable
from detector.capture.logjoin import detect_format
from detector.capture.logjoin import feed as feed_logs
from detector.capture.pcapfile import CaptureError, expand_paths, file_size, iter_frames
from detector.classify.catalogue import load_catalogue, load_policy
from detector.classify.classifier import Classifier
from detector.classify.pseudonym import Pseudonymiser, load_or_create_key
from detector import fastpath
from detector.config import Config, state_path
from detector.model import Stats, UsageEvent
from detector.pipeline import Pipeline, settle_heap
from detector.sinks.output import CsvSink, JsonlSink, SummarySink, render_coverage

if TYPE_CHECKING:
    from detector.sinks.store import RunInfo, Store

# Processes one capture file is split over on the fast path (a power of two: the share of
# a flow is a bit of its address hash). Two: the machines this runs on have two cores.
SHARES = 2

# Events handed to the database per transaction during `analyze`.
STORE_BATCH = 20_000

# Unattributed events that still belong in the database. Other names seen with --all are
# printed only: storing every visited site would be a browsing history of the staff.
_STORED_UNATTRIBUTED = frozenset({"encrypted-dns", "candidate"})


class UserError(Exception):
    """A problem the operator can fix; printed as one line, exit status 2."""


def build_classifier(cfg: Config) -> Classifier:
    """Load catalogue, policy and pseudonym key as the config says."""
    catalogue = load_catalogue(Path(cfg.rules.dir))
    policy = load_policy(cfg.policy_path(), catalogue)
    key = load_or_create_key(state_path(cfg.privacy.key_file))
    return Classifier(catalogue, policy, Pseudonymiser(key), raw_clients=cfg.privacy.raw_clients, sensor=cfg.sensor.name)


@dataclass(slots=True)
class AnalyzeResult:
    """What an offline analysis did, for the exit status and the run record."""

    files_failed: int
    stats: Stats
    seconds: float


def analyze(
    paths: Sequence[Path],
    cfg: Config,
    *,
    fmt: str,
    include_all: bool,
    out: IO[str],
    warn: Callable[[str], None],
    progress: bool,
    engine: str = "auto",
) -> AnalyzeResult:
    """Run captures (or Zeek/Suricata log sets) through the pipeline into the chosen output
    and the database."""
    logs = {p: kind for p in paths if (kind := detect_format(Path(p))) is not None}
    files = expand_paths([p for p in paths if p not in logs]) if len(logs) < len(paths) else []
    classifier = build_classifier(cfg)
    store = _open_store(cfg)
    pending: list[UsageEvent] = []

    printer: JsonlSink | CsvSink | SummarySink
    if fmt == "jsonl":
        printer = JsonlSink(out)
    elif fmt == "csv":
        printer = CsvSink(out)
    else:
        printer = SummarySink()

    def emit(ev: UsageEvent) -> None:
        printer.handle(ev)
        if store is not None and (ev.service or ev.kind in _STORED_UNATTRIBUTED):
            pending.append(ev)
            if len(pending) >= STORE_BATCH:
                store.write_events(pending)
                pending.clear()

    stats = Stats()
    pipeline = Pipeline(cfg, classifier, emit, stats, include_unmatched=include_all)
    settle_heap()
    started = time.monotonic()
    ok = failed = 0
    bar = _progress_bar(files) if progress else None
    # The fast path needs every file readable by libpcap (gzip and pcapng are not).
    fast = engine == "fast" or (engine == "auto" and bool(files) and all(map(fastpath.usable, files)))
    # One file's flows can be split over the cores; several files share flows (a rotated
    # capture), so they go through one process in order.
    shares = SHARES if fast and len(files) == 1 and not logs and (os.cpu_count() or 1) >= SHARES else 0
    if shares and not splittable(files[0]):
        shares = 0
    try:
        for path in files:
            try:
                try:
                    if not fast or not fastpath.usable(path):
                        raise fastpath.FastPathUnavailable(str(path))
                    before = stats.packets
                    if shares:
                        events, counted, cut = fastpath.analyze_shared(path, cfg, classifier, shares, include_all)
                        for ev in events:
                            emit(ev)
                        fastpath.add_stats(stats, counted)
                    else:
                        cut = fastpath.analyze(path, pipeline, cfg)
                    if cut is not None:
                        warn(f"{path}: truncated after {stats.packets - before} packets ({cut})")
                    if bar is not None:
                        bar.update(file_size(path))
                except fastpath.FastPathUnavailable:
                    pipeline.run(iter_frames(path, on_warning=warn, progress=bar.update if bar else None))
                ok += 1
            except CaptureError as exc:
                warn(f"error: {exc}")
                failed += 1
        for path, fmt in logs.items():
            # Another sensor's logs: decode is done, records go straight to flows/classify.
            reader = zeeklog.iter_records if fmt == "zeek" else suricata.iter_records
            before = stats.files_failed
            feed_logs(reader([Path(path)], stats), pipeline)
            if stats.files_failed > before:
                failed += 1
            else:
                ok += 1
        pipeline.finish()
    finally:
        if bar is not None:
            bar.close()
    stats.files_read, stats.files_failed = ok, failed
    files = [*files, *map(Path, logs)]
    seconds = time.monotonic() - started
    if store is not None:
        try:
            if pending:
                store.write_events(pending)
            store.record_run(_run_record(cfg, files, stats, seconds))
        finally:
            store.close()
    if isinstance(printer, SummarySink):
        out.write(printer.render())
        out.write("\n" + render_coverage(stats))
    printer.close()
    return AnalyzeResult(failed, stats, seconds)


def _open_store(cfg: Config) -> Store | None:
    if not cfg.store.path:
        return None
    # Imported here: duckdb takes a third of a second to load, and --no-db runs need none.
    from detector.sinks.store import Store

    store = Store(
        state_path(cfg.store.path),
        sensor=cfg.sensor.name,
        raw_retention_days=cfg.store.raw_retention_days,
        aggregate_retention_days=cfg.store.aggregate_retention_days,
    )
    store.open()
    return store


def coverage_figures(stats: Stats) -> dict:
    """The visibility figures of a run, as stored and exported."""
    return {
        "named": stats.flows_named,
        "dns_only": stats.flows_dns_only,
        "blind": sum(stats.flows_blind.values()),
        "blind_reasons": dict(stats.flows_blind),
    }


def _run_record(cfg: Config, files: Sequence[Path], stats: Stats, seconds: float) -> RunInfo:
    from detector.sinks.store import RunInfo

    finished = datetime.now(timezone.utc)
    return RunInfo(
        command="analyze",
        started=finished - timedelta(seconds=seconds),
        finished=finished,
        files=[str(p) for p in files],
        packets=stats.packets,
        events=stats.events,
        anomalies=dict(stats.anomalies),
        coverage=coverage_figures(stats),
        sensor=cfg.sensor.name,
        version=__version__,
    )


def _progress_bar(files: Sequence[Path]):  # type: ignore[no-untyped-def]
    """A byte-based progress bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    total = sum(file_size(p) for p in files)
    return tqdm(total=total, unit="B", unit_scale=True, desc="analyze", leave=False, file=sys.stderr)
