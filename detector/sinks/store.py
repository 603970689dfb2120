"""DuckDB store: raw events, hourly usage, candidates and runs in one file, plus Parquet export.

Concurrency. DuckDB lets one process write a database file, and a writer keeps
an exclusive lock on it while it has the file open. So the writers here
(`shadowai analyze`, the daemon's `BatchWriter`) open the file only for one short
write transaction and close it again; readers (`shadowai report`) open it
read-only in between. Both sides retry a lock conflict with jittered backoff for
a bounded time (`LOCK_TIMEOUT_SECONDS`) and then raise `StoreBusyError`.

Write path. A batch goes to DuckDB as one delimiter-separated temporary file
read with `read_csv` (no pandas or pyarrow: one f-string per event, then
DuckDB's parallel CSV reader), is inserted with `INSERT OR IGNORE` on the
`event_id` primary key, and the hourly figures of exactly the hours that got new
rows are recomputed from the events, so distinct clients stay exact and a
capture analysed twice counts once.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, Self

import duckdb

from detector import __version__
from detector.model import EVENT_FIELDS, UsageEvent

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # the highest migration in schema/; a test checks they agree

# A writer holds the lock for one batch (tens of milliseconds; a few seconds for
# a very large `analyze` batch), a report for its queries. Ten seconds rides
# out both without leaving an operator waiting long for a clear error.
LOCK_TIMEOUT_SECONDS = 10.0
# Backoff between lock attempts: start small (writes are short), cap so a
# waiting reader still notices a free file within a quarter second.
_BACKOFF_FIRST_SECONDS = 0.005
_BACKOFF_MAX_SECONDS = 0.25

# Separator of the ingest file: ASCII Unit Separator, which no hostname,
# pseudonym or catalogue field contains; fields holding it are cleaned first.
_SEP = "\x1f"
_FIELD_COUNT = len(EVENT_FIELDS)

# Kinds counted as flows and as DNS lookups in every aggregate (store and report).
FLOWS_SQL = "count(*) FILTER (WHERE kind IN ('flow', 'encrypted-dns'))"
DNS_LOOKUPS_SQL = "count(*) FILTER (WHERE kind = 'dns')"

# A batch file lives for one write (seconds at most); one an hour old was left by a killed writer.
_STALE_INGEST_SECONDS = 3600

_MIGRATION_NAME = re.compile(r"^(\d{3})_(\w+)\.sql$")


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class StoreError(Exception):
    """The store cannot do what was asked; the message says why and what to do."""


class StoreBusyError(StoreError):
    """Another process held the database lock for longer than the timeout."""


class SchemaVersionError(StoreError):
    """The database's schema version does not match this code's."""


# ---------------------------------------------------------------------------
# Connections with lock retry
# ---------------------------------------------------------------------------


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    """True for the errors that mean "someone else has the file open right now"."""
    text = str(exc)
    # Another process: "Could not set lock on file ... Conflicting lock is held".
    # This process (another thread's writer connection is still open):
    # "Can't open a connection to same database file with a different configuration".
    return "Could not set lock" in text or "different configuration" in text


def connect(path: Path, *, read_only: bool, timeout: float = LOCK_TIMEOUT_SECONDS) -> duckdb.DuckDBPyConnection:
    """Open `path`, retrying a lock conflict with jittered backoff for up to `timeout` seconds.

    The session time zone is set to UTC, so TIMESTAMPTZ casts mean UTC.
    Raises StoreBusyError on timeout, StoreError when a read-only open finds no file.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise StoreError(f"no shadowai database at {path}")
    deadline = time.monotonic() + timeout
    delay = _BACKOFF_FIRST_SECONDS
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_lock_conflict(exc):
                raise StoreError(f"cannot open {path}: {exc}") from exc
            left = deadline - time.monotonic()
            if left <= 0:
                mode = "read" if read_only else "write"
                raise StoreBusyError(
                    f"{path} stayed locked by another process for {timeout:g} s, so it could not "
                    f"be opened to {mode}; writers hold the lock only while writing a batch, so "
                    f"retry, or allow a longer lock timeout ({exc})"
                ) from exc
            # Jitter keeps a reader and a writer from retrying in lockstep.
            time.sleep(min(left, delay * (0.5 + random.random() / 2)))
            delay = min(delay * 2, _BACKOFF_MAX_SECONDS)
            continue
        con.execute("SET TimeZone = 'UTC'")
        return con


# ---------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Migration:
    """One numbered schema step: schema/NNN_name.sql, its first comment line as description."""

    version: int
    description: str
    sql: str


def load_migrations() -> list[Migration]:
    """The packaged migrations in version order; versions must run 1, 2, 3 … without gaps."""
    folder = resources.files("detector.sinks").joinpath("schema")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if not match:
            continue
        sql = entry.read_text(encoding="utf-8")
        first = sql.splitlines()[0] if sql else ""
        description = first[2:].strip() if first.startswith("--") else match.group(2)
        found.append(Migration(int(match.group(1)), description, sql))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StoreError(
            f"schema migrations must be numbered 001, 002, … without gaps; found "
            f"{[m.version for m in found]} in {folder}"
        )
    return found


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The highest applied migration, or 0 for a database without schema_version."""
    try:
        row = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    except duckdb.CatalogException:
        return 0  # cheaper than asking information_schema first, on every write
    return int(row[0]) if row else 0


def _too_new(path: object, found: int, supported: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"{path} has schema version {found}, newer than this shadowai {__version__} "
        f"understands ({supported}); upgrade shadowai on this machine, or read a Parquet export"
    )


def apply_migrations(
    con: duckdb.DuckDBPyConnection, migrations: Sequence[Migration], *, where: object = "database"
) -> int:
    """Apply the migrations newer than the database, each in its own transaction; return how many.

    Raises SchemaVersionError when the database is newer than the newest migration.
    """
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL, description VARCHAR NOT NULL)"
    )
    current = schema_version(con)
    newest = migrations[-1].version if migrations else 0
    if current > newest:
        raise _too_new(where, current, newest)
    applied = 0
    for migration in migrations:
        if migration.version <= current:
            continue
        con.begin()
        try:
            con.execute(migration.sql)
            con.execute(
                "INSERT INTO schema_version VALUES (?, now()::TIMESTAMP, ?)",
                [migration.version, migration.description],
            )
            con.commit()
        except duckdb.Error:
            con.rollback()
            raise
        applied += 1
    return applied


def check_schema(con: duckdb.DuckDBPyConnection, where: object) -> None:
    """For readers, which cannot migrate: the database must be at exactly SCHEMA_VERSION."""
    found = schema_version(con)
    if found == SCHEMA_VERSION:
        return
    if found > SCHEMA_VERSION:
        raise _too_new(where, found, SCHEMA_VERSION)
    if found == 0:
        raise SchemaVersionError(f"{where} is not a shadowai database (no schema_version table)")
    raise SchemaVersionError(
        f"{where} has schema version {found}, older than this shadowai's {SCHEMA_VERSION}; "
        f"run `shadowai analyze` or restart `shadowai run` once to migrate it"
    )


# ---------------------------------------------------------------------------
# Time helpers
# ---------------------------------------------------------------------------


def utc_naive(moment: datetime) -> datetime:
    """`moment` as a naive UTC datetime (the store's TIMESTAMP convention); naive input is taken as UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def floor_hour(moment: datetime) -> datetime:
    """The start of `moment`'s UTC hour, naive."""
    return utc_naive(moment).replace(minute=0, second=0, microsecond=0)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------
# Ingest: events -> delimiter-separated text -> read_csv
# ---------------------------------------------------------------------------


def _event_line(e: UsageEvent) -> str:
    # One f-string per event is the cheapest way from Python objects to DuckDB
    # without pandas/pyarrow (about 3x faster than str.format); the order is
    # EVENT_FIELDS (a test holds the two together).
    return (
        f"{e.ts}\x1f{e.kind}\x1f{e.client}\x1f{e.department}\x1f{e.service}\x1f{e.vendor}\x1f"
        f"{e.category}\x1f{e.jurisdiction}\x1f{e.policy}\x1f{e.server_name}\x1f{e.server_ip}\x1f"
        f"{e.server_port}\x1f{e.transport}\x1f{e.evidence}\x1f{e.bytes_up}\x1f{e.bytes_down}\x1f"
        f"{e.packets}\x1f{e.duration}\x1f{e.ja4}\x1f{e.alpn}\x1f{e.pattern}\x1f{e.sensor}\x1f"
        f"{e.event_id}"
    )


_CLEAN = str.maketrans({_SEP: " ", "\n": " ", "\r": " "})


def _clean_line(e: UsageEvent) -> str:
    """The slow path for an event whose text fields hold a separator or a line break."""
    return _SEP.join(str(getattr(e, name)).translate(_CLEAN) for name in EVENT_FIELDS)


def events_text(events: Sequence[UsageEvent]) -> str:
    """The batch as one line per event, fields separated by _SEP, with separators in values blanked."""
    lines = list(map(_event_line, events))
    text = "\n".join(lines)
    # One C-level count over the whole text proves the common case clean.
    if text.count(_SEP) == len(lines) * (_FIELD_COUNT - 1) and text.count("\n") == len(lines) - 1 and "\r" not in text:
        return text
    for i, line in enumerate(lines):
        if line.count(_SEP) != _FIELD_COUNT - 1 or "\n" in line or "\r" in line:
            lines[i] = _clean_line(events[i])
    return "\n".join(lines)


_INT_COLUMNS = {"server_port": "INTEGER", "bytes_up": "BIGINT", "bytes_down": "BIGINT", "packets": "BIGINT"}


def _staging_select() -> str:
    """SELECT list turning the all-VARCHAR ingest columns into the events row (minus batch)."""
    parts = []
    for name in EVENT_FIELDS:
        if name == "ts":
            # Offsets are honoured (session zone is UTC); an unparseable time gives NULL: rejected.
            expr = "try_cast(ts AS TIMESTAMPTZ)::TIMESTAMP"
        elif name in _INT_COLUMNS:
            expr = f"coalesce(try_cast({name} AS {_INT_COLUMNS[name]}), 0)"
        elif name == "duration":
            expr = "coalesce(try_cast(duration AS DOUBLE), 0)"
        elif name == "sensor":
            expr = "coalesce(nullif(sensor, ''), $sensor)"
        elif name == "event_id":
            # Events without an id get one from their content, so a repeat still dedupes.
            raw = ", ".join(f"coalesce({n}, '')" for n in EVENT_FIELDS if n != "event_id")
            expr = f"coalesce(nullif(event_id, ''), md5(concat_ws(chr(31), {raw})))"
        else:
            expr = f"coalesce({name}, '')"
        parts.append(f"{expr} AS {name}")
    return ", ".join(parts)


_STAGE_SQL = (
    f"CREATE OR REPLACE TEMP TABLE _batch AS SELECT {_staging_select()} FROM read_csv($file, "
    "delim = chr(31), quote = '', escape = '', header = false, auto_detect = false, "
    "new_line = '\\n', columns = $columns)"
)
_INGEST_COLUMNS = {name: "VARCHAR" for name in EVENT_FIELDS}

# Dimensions of usage_hourly, in table order after hour.
HOURLY_DIMENSIONS = ("sensor", "service", "department", "policy", "category", "jurisdiction", "vendor", "kind")

_HOURLY_SELECT = (
    f"SELECT date_trunc('hour', e.ts) AS hour, {', '.join('e.' + d for d in HOURLY_DIMENSIONS)}, "
    f"count(*) AS events, {FLOWS_SQL} AS flows, {DNS_LOOKUPS_SQL} AS dns_lookups, "
    "count(DISTINCT e.client) AS clients, sum(e.bytes_up) AS bytes_up, "
    "sum(e.bytes_down) AS bytes_down, sum(e.packets) AS packets FROM events e "
)


# The candidates table's row, computed from events ({where} narrows it further).
CANDIDATES_SELECT = (
    "SELECT server_name AS name, min(ts) AS first_seen, max(ts) AS last_seen, count(*) AS count, "
    "min(department) AS example_department FROM events "
    "WHERE kind = 'candidate' AND server_name <> '' {where} GROUP BY server_name"
)


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class RunInfo:
    """Metadata of one `analyze` or daemon run; `record_run` stores it (again) under run_id."""

    command: str  # "analyze" | "run"
    started: datetime
    finished: datetime | None = None  # None while a daemon runs
    files: Sequence[str] = ()  # capture files, or interfaces for the daemon
    packets: int = 0
    events: int = 0
    anomalies: Mapping[str, int] = field(default_factory=dict)
    coverage: Mapping[str, Any] = field(default_factory=dict)
    sensor: str = ""  # the Store's sensor when empty
    version: str = __version__
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)


# ---------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------


class Store:
    """The sensor's DuckDB file. Not thread-safe: one thread (e.g. a BatchWriter) owns a Store.

    Every public method opens the file for one transaction and closes it, so
    reports in other processes can read between writes.
    """

    def __init__(
        self,
        path: Path,
        *,
        sensor: str = "",
        raw_retention_days: int = 30,
        aggregate_retention_days: int = 400,
        lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    ) -> None:
        if raw_retention_days < 1 or aggregate_retention_days < raw_retention_days:
            raise ValueError(
                "need 1 <= raw_retention_days <= aggregate_retention_days "
                f"(got {raw_retention_days}, {aggregate_retention_days})"
            )
        self.path = Path(path)
        self.sensor = sensor
        self.raw_retention_days = raw_retention_days
        self.aggregate_retention_days = aggregate_retention_days
        self.lock_timeout = lock_timeout
        self.rejected = 0  # events dropped because their ts did not parse
        self._open = False

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> Self:
        """Create or migrate the database; raises SchemaVersionError for a newer one."""
        self.migrate()
        self._remove_stale_ingest_files()
        self._open = True
        return self

    def _ingest_prefix(self) -> str:
        return f".{self.path.name}.ingest-"

    def _remove_stale_ingest_files(self) -> None:
        """Delete batch files a killed writer left behind (old enough that no writer still reads them)."""
        cutoff = time.time() - _STALE_INGEST_SECONDS
        for leftover in self.path.parent.glob(self._ingest_prefix() + "*"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
            except OSError:
                pass  # another writer removed it first

    def close(self) -> None:
        """Mark the store closed (no connection is held between calls)."""
        self._open = False

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def migrate(self, migrations: Sequence[Migration] | None = None) -> int:
        """Apply the pending numbered migrations (default: the packaged ones); return how many."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as con:
            return apply_migrations(con, load_migrations() if migrations is None else migrations, where=self.path)

    @contextmanager
    def _connection(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        con = connect(self.path, read_only=read_only, timeout=self.lock_timeout)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if not self._open:
            raise StoreError("Store is not open: call open() or use it as a context manager")
        with self._connection() as con:
            # A write (an event batch, retention, a run record) touches a few thousand rows:
            # DuckDB's worker threads buy it nothing and, beside busy capture workers, only
            # take their cores.
            con.execute("SET threads = 1")
            check_schema(con, self.path)
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()

    # -- writes ------------------------------------------------------------

    def write_events(self, events: Sequence[UsageEvent]) -> int:
        """Store a batch in one transaction; return how many events were new.

        Events already present (same event_id) are ignored; the hourly figures of
        the hours that received new events are recomputed; candidate events
        update the candidates table. Events whose ts does not parse are counted
        in `rejected` and dropped.
        """
        if not events:
            return 0
        fd, name = tempfile.mkstemp(prefix=self._ingest_prefix(), suffix=".txt", dir=self.path.parent)
        try:
            # Next to the database: same permissions, same disk, no copy of
            # pseudonyms in a world-readable /tmp.
            with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as fh:
                fh.write(events_text(events))
                fh.write("\n")
            with self._transaction() as con:
                return self._ingest(con, name, len(events))
        finally:
            os.unlink(name)

    def _ingest(self, con: duckdb.DuckDBPyConnection, file: str, sent: int) -> int:
        con.execute(_STAGE_SQL, {"file": file, "columns": _INGEST_COLUMNS, "sensor": self.sensor})
        row = con.execute("SELECT nextval('batch_seq'), count(*) FILTER (WHERE ts IS NULL) FROM _batch").fetchone()
        assert row is not None
        batch, rejected = int(row[0]), int(row[1])
        if rejected:
            self.rejected += rejected
            log.warning("store: dropped %d of %d events whose ts did not parse", rejected, sent)
        inserted = con.execute(
            "INSERT OR IGNORE INTO events BY NAME SELECT *, $batch AS batch FROM _batch WHERE ts IS NOT NULL",
            {"batch": batch},
        ).fetchone()
        con.execute("DROP TABLE _batch")
        new = int(inserted[0]) if inserted else 0
        if new:
            self._refresh_hourly(con, batch)
            self._upsert_candidates(con, batch)
        return new

    @staticmethod
    def _refresh_hourly(con: duckdb.DuckDBPyConnection, batch: int) -> None:
        """Recompute usage_hourly for every (hour, sensor) that received rows in `batch`."""
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _hours AS SELECT DISTINCT date_trunc('hour', ts) AS hour, "
            "sensor FROM events WHERE batch = ?",
            [batch],
        )
        span = con.execute("SELECT min(hour), max(hour) + INTERVAL 1 HOUR FROM _hours").fetchone()
        assert span is not None
        con.execute(
            "DELETE FROM usage_hourly USING _hours "
            "WHERE usage_hourly.hour = _hours.hour AND usage_hourly.sensor = _hours.sensor"
        )
        # The literal ts range lets DuckDB skip row groups by min/max before the semi join.
        con.execute(
            f"INSERT INTO usage_hourly BY NAME {_HOURLY_SELECT} "
            "SEMI JOIN _hours h ON date_trunc('hour', e.ts) = h.hour AND e.sensor = h.sensor "
            "WHERE e.ts >= $lo AND e.ts < $hi GROUP BY ALL",
            {"lo": span[0], "hi": span[1]},
        )
        con.execute("DROP TABLE _hours")

    @staticmethod
    def _upsert_candidates(con: duckdb.DuckDBPyConnection, batch: int) -> None:
        con.execute(
            f"INSERT INTO candidates {CANDIDATES_SELECT.format(where='AND batch = ?')} "
            "ON CONFLICT (name) DO UPDATE SET "
            "first_seen = least(candidates.first_seen, excluded.first_seen), "
            "last_seen = greatest(candidates.last_seen, excluded.last_seen), "
            "count = candidates.count + excluded.count, "
            "example_department = CASE WHEN candidates.example_department = '' "
            "THEN excluded.example_department ELSE candidates.example_department END",
            [batch],
        )

    def enforce_retention(self, now: datetime) -> tuple[int, int]:
        """Delete events older than raw_retention_days and hourly rows older than
        aggregate_retention_days; return (events deleted, hourly rows deleted).

        Cutoffs fall on hour boundaries, so an hour's events are either all kept
        or all gone and a late event never recomputes a half-expired hour.
        """
        hour = floor_hour(now)
        raw_cutoff = hour - timedelta(days=self.raw_retention_days)
        agg_cutoff = hour - timedelta(days=self.aggregate_retention_days)
        with self._transaction() as con:
            events = con.execute("DELETE FROM events WHERE ts < ?", [raw_cutoff]).fetchone()
            hourly = con.execute("DELETE FROM usage_hourly WHERE hour < ?", [agg_cutoff]).fetchone()
            con.execute("DELETE FROM candidates WHERE last_seen < ?", [agg_cutoff])
            con.execute("DELETE FROM runs WHERE started < ?", [agg_cutoff])
        return (int(events[0]) if events else 0, int(hourly[0]) if hourly else 0)

    def record_run(self, run: RunInfo) -> str:
        """Insert or replace the row of `run` (keyed by run_id); return the run_id."""
        with self._transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run.run_id,
                    run.command,
                    utc_naive(run.started),
                    utc_naive(run.finished) if run.finished else None,
                    json.dumps(list(run.files)),
                    run.packets,
                    run.events,
                    json.dumps(dict(run.anomalies), sort_keys=True),
                    json.dumps(dict(run.coverage), sort_keys=True, default=str),
                    run.sensor or self.sensor,
                    run.version,
                ],
            )
        return run.run_id

    # -- export ------------------------------------------------------------

    def export_parquet(self, out_dir: Path, since: date | None = None) -> list[Path]:
        """Write events and hourly figures from `since` (a UTC day; None: all) as Parquet.

        Layout: out_dir/{events,hourly}/sensor=<s>/day=<YYYY-MM-DD>/*.parquet. Each
        exported (sensor, day) partition replaces the one already there, so exporting
        a day again overwrites it and other days stay. Returns the files written.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
        day_filter = "" if since is None else f" WHERE {{col}} >= DATE '{since.isoformat()}'"
        queries = {
            "events": "SELECT * EXCLUDE (batch), CAST(ts AS DATE) AS day FROM events" + day_filter.format(col="ts"),
            "hourly": "SELECT *, CAST(hour AS DATE) AS day FROM usage_hourly" + day_filter.format(col="hour"),
        }
        try:
            with self._connection(read_only=True) as con:
                check_schema(con, self.path)
                for table, query in queries.items():
                    target = str(staging / table).replace("'", "''")
                    con.execute(
                        f"COPY ({query}) TO '{target}' "
                        "(FORMAT PARQUET, PARTITION_BY (sensor, day), OVERWRITE_OR_IGNORE)"
                    )
            written: list[Path] = []
            for table in queries:
                written += _swap_partitions(staging / table, out_dir / table)
            return sorted(written)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _swap_partitions(new_root: Path, live_root: Path) -> list[Path]:
    """Move each sensor=/day= directory of new_root over its counterpart in live_root."""
    files: list[Path] = []
    if not new_root.is_dir():
        return files  # nothing exported for this table
    for partition in sorted(new_root.glob("sensor=*/day=*")):
        target = live_root / partition.relative_to(new_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Rename the old partition aside first, so a reader sees the old or the new one,
        # never a half-written mix.
        old = target.with_name(f".old-{uuid.uuid4().hex}-{target.name}")
        if target.exists():
            target.rename(old)
        partition.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        files += sorted(target.glob("*.parquet"))
    return files


# ---------------------------------------------------------------------------
# BatchWriter: the daemon's non-blocking front of the store
# ---------------------------------------------------------------------------


class EventStore(Protocol):
    """What BatchWriter needs from a Store."""

    def open(self) -> Any: ...
    def close(self) -> None: ...
    def write_events(self, events: Sequence[UsageEvent]) -> int: ...
    def enforce_retention(self, now: datetime) -> tuple[int, int]: ...


class BatchWriter:
    """A background thread that owns a Store and writes queued events in batches.

    `put` never blocks: the queue is bounded (`max_queue`) and events that do not
    fit are counted in `dropped`. The thread writes every `flush_interval`
    seconds, or sooner once `max_batch` events wait, and enforces retention every
    `retention_interval` seconds. A failed write (lock held too long, disk error)
    goes back to the front of the queue and is retried next round; a batch that
    fails `max_attempts` times in a row is dropped and counted, so one bad batch
    cannot wedge the writer. `close()` drains everything.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        flush_interval: float = 2.0,
        max_batch: int = 10_000,
        max_queue: int = 200_000,
        retention_interval: float = 3600.0,
        max_attempts: int = 5,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.retention_interval = retention_interval
        self.max_attempts = max_attempts
        self._clock = clock
        # deque append/popleft are atomic in CPython: put and the writer thread need no lock.
        self._queue: collections.deque[UsageEvent] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._flushed = threading.Condition()
        self._rounds = 0  # completed write rounds, for flush()
        self._thread: threading.Thread | None = None
        self._attempts = 0
        # Counters read by metrics (plain attributes, as in model.Stats). Each has one
        # writing thread, so `+=` needs no lock: capture counts a full queue, the
        # writer thread counts batches it gave up on.
        self.dropped_full = 0
        self.dropped_failed = 0
        self.writes_total = 0
        self.write_errors = 0
        self.events_written = 0  # new events stored (duplicates not counted)
        self.last_write_seconds = 0.0
        self.retention_runs = 0

    def start(self) -> Self:
        """Open the store (errors such as a too-new schema surface here) and start the thread."""
        self.store.open()
        self._thread = threading.Thread(target=self._run, name="shadowai-store", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, event: UsageEvent) -> bool:
        """Queue one event; False (counted in dropped) when the queue is full. Never blocks."""
        queue = self._queue
        if len(queue) >= self.max_queue:
            self.dropped_full += 1
            return False
        queue.append(event)
        if len(queue) >= self.max_batch and not self._wake.is_set():
            self._wake.set()
        return True

    handle = put  # the sinks' Sink protocol name

    @property
    def dropped(self) -> int:
        """Events lost: the queue was full, or their batch failed max_attempts times."""
        return self.dropped_full + self.dropped_failed

    def backlog(self) -> int:
        """Events queued and not yet written."""
        return len(self._queue)

    def flush(self, timeout: float | None = None) -> bool:
        """Ask for a write round now and wait until one has completed; False on timeout."""
        with self._flushed:
            target = self._rounds + 1
            self._wake.set()
            return self._flushed.wait_for(lambda: self._rounds >= target, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread after it has written everything queued, then close the store."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("store: writer still busy after %s s; %d events not written", timeout, self.backlog())
            self._thread = None
        self.store.close()

    # -- the thread --------------------------------------------------------

    def _run(self) -> None:
        next_retention = time.monotonic()  # once at start, then every retention_interval
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            stopping = self._stopping  # read before draining, so nothing queued before close() is missed
            self._drain(final=stopping)
            if time.monotonic() >= next_retention:
                self._retention()
                next_retention = time.monotonic() + self.retention_interval
            with self._flushed:
                self._rounds += 1
                self._flushed.notify_all()
            if stopping:
                return

    def _drain(self, final: bool) -> None:
        """Write what was queued when the round began, in max_batch chunks (all of it when
        final); stop at the first failure unless final. Events that arrive meanwhile wait
        for the next round: a batch costs ~0.1 s however small, so a steady trickle must not
        keep the writer in a loop of tiny batches."""
        queue = self._queue
        left = len(queue)
        while queue and (left > 0 or final):
            popleft = queue.popleft
            batch = [popleft() for _ in range(min(len(queue), self.max_batch))]
            left -= len(batch)
            if not self._write(batch) and not final:
                return

    def _write(self, batch: list[UsageEvent]) -> bool:
        started = time.monotonic()
        try:
            new = self.store.write_events(batch)
        except Exception as exc:  # noqa: BLE001 - any store failure must not kill the thread
            self.write_errors += 1
            self._attempts += 1
            if self._attempts >= self.max_attempts:
                self._attempts = 0
                self.dropped_failed += len(batch)
                log.error("store: dropped a batch of %d events after %s", len(batch), exc)
            else:
                self._queue.extendleft(reversed(batch))
                log.warning("store: write of %d events failed, will retry: %s", len(batch), exc)
            return False
        self._attempts = 0
        self.writes_total += 1
        self.events_written += new
        self.last_write_seconds = time.monotonic() - started
        return True

    def _retention(self) -> None:
        try:
            self.store.enforce_retention(self._clock())
            self.retention_runs += 1
        except Exception as exc:  # noqa: BLE001 - retry next interval
            log.warning("store: retention failed, will retry: %s", exc)
