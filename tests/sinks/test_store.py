"""DuckDB store: migrations, idempotent batched writes, hourly figures, retention, runs,
Parquet export, BatchWriter, and a reader process beside a writer process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pytest
from _store_helpers import make_event, query

from detector.model import EVENT_FIELDS
from detector.sinks import store as store_mod
from detector.sinks.store import (
    SCHEMA_VERSION,
    BatchWriter,
    Migration,
    RunInfo,
    SchemaVersionError,
    Store,
    StoreBusyError,
    StoreError,
    events_text,
    load_migrations,
)

ROOT = Path(__file__).resolve().parents[2]


def may_2024() -> datetime:
    """A retention clock for the BatchWriter that keeps make_event's May 2024 events."""
    return datetime(2024, 5, 2, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "shadowai.duckdb"


@pytest.fixture
def store(db: Path) -> Store:
    with Store(db, sensor="site-a") as s:
        yield s


def hourly(db: Path) -> list[tuple]:
    return query(db, "SELECT * FROM usage_hourly ORDER BY ALL")


def wait_until(condition, timeout: float = 20.0) -> None:
    """Poll `condition` until true; fail after `timeout` s (a bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.02)


# ---------------------------------------------------------------------------
# Migrations and the version guard
# ---------------------------------------------------------------------------


def test_migrate_from_empty_creates_tables_and_records_each_version(db: Path) -> None:
    assert Store(db).migrate() == SCHEMA_VERSION
    tables = {r[0] for r in query(db, "SELECT table_name FROM information_schema.tables")}
    assert {"events", "usage_hourly", "candidates", "runs", "schema_version"} <= tables
    versions = query(db, "SELECT version, description, applied_at IS NOT NULL FROM schema_version ORDER BY 1")
    assert [v[0] for v in versions] == list(range(1, SCHEMA_VERSION + 1))
    assert versions[0][1] == "initial schema: raw events, hourly usage, AI-name candidates, runs"
    assert all(v[2] for v in versions)


def test_migrate_twice_applies_nothing_the_second_time(db: Path) -> None:
    Store(db).migrate()
    assert Store(db).migrate() == 0


def test_schema_version_constant_is_the_newest_packaged_migration() -> None:
    assert [m.version for m in load_migrations()][-1] == SCHEMA_VERSION


def test_pending_migrations_apply_in_order_on_an_existing_database(db: Path, store: Store) -> None:
    store.write_events([make_event()])
    extra = [
        Migration(SCHEMA_VERSION + 1, "add note", "ALTER TABLE events ADD COLUMN note VARCHAR DEFAULT ''"),
        Migration(SCHEMA_VERSION + 2, "fill note", "UPDATE events SET note = 'migrated'"),
    ]
    assert store.migrate(load_migrations() + extra) == 2
    assert query(db, "SELECT note FROM events") == [("migrated",)]
    assert query(db, "SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION + 2,)]


def test_opening_a_newer_database_with_older_code_is_a_clear_error(db: Path) -> None:
    Store(db).migrate()
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version VALUES (99, now()::TIMESTAMP, 'from the future')")
    con.close()
    with pytest.raises(SchemaVersionError, match=r"schema version 99, newer than .* understands \(1\)"):
        Store(db).open()


def test_a_migration_that_fails_leaves_the_version_unrecorded(db: Path) -> None:
    broken = load_migrations() + [Migration(SCHEMA_VERSION + 1, "broken", "ALTER TABLE nope ADD x INT")]
    with pytest.raises(duckdb.Error):
        Store(db).migrate(broken)
    assert query(db, "SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION,)]


def test_open_removes_batch_files_a_killed_writer_left_behind(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    stale, fresh = db.parent / f".{db.name}.ingest-old.txt", db.parent / f".{db.name}.ingest-new.txt"
    for leftover in (stale, fresh):
        leftover.write_text("x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    Store(db).open()
    assert not stale.exists() and fresh.exists()  # a fresh one may belong to a writer at work


def test_writing_before_open_is_refused(db: Path) -> None:
    with pytest.raises(StoreError, match="not open"):
        Store(db).write_events([make_event()])


# ---------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------


def test_event_line_has_the_fields_of_usage_event_in_order() -> None:
    event = make_event(**{name: f"v{i}" for i, name in enumerate(EVENT_FIELDS)})
    assert events_text([event]).split("\x1f") == [f"v{i}" for i in range(len(EVENT_FIELDS))]


def test_write_stores_every_field(db: Path, store: Store) -> None:
    event = make_event(event_id="e1", sensor="")
    assert store.write_events([event]) == 1
    row = query(db, f"SELECT {', '.join(EVENT_FIELDS)} FROM events")[0]
    stored = dict(zip(EVENT_FIELDS, row))
    assert stored["ts"] == datetime(2024, 5, 1, 10, 15)
    assert stored["sensor"] == "site-a"  # the store's sensor fills an empty one
    for name in EVENT_FIELDS:
        if name not in ("ts", "sensor"):
            assert stored[name] == getattr(event, name), name


def test_rewriting_the_same_events_changes_no_count_and_no_aggregate(db: Path, store: Store) -> None:
    events = [make_event(client=f"c{i % 7}", ts=f"2024-05-01T{10 + i % 3}:0{i % 6}:00Z") for i in range(60)]
    assert store.write_events(events) == 60
    before = hourly(db)
    assert store.write_events(events) == 0
    assert store.write_events(list(reversed(events[:25]))) == 0
    assert query(db, "SELECT count(*) FROM events") == [(60,)]
    assert hourly(db) == before


def test_duplicates_inside_one_batch_count_once(db: Path, store: Store) -> None:
    event = make_event()
    assert store.write_events([event, event, replace(event)]) == 1
    assert query(db, "SELECT sum(events), sum(flows) FROM usage_hourly") == [(1, 1)]


def test_events_without_an_id_get_one_from_their_content(db: Path, store: Store) -> None:
    a, b = make_event(event_id=""), make_event(event_id="", client="c-2")
    assert store.write_events([a, b]) == 2
    assert store.write_events([a]) == 0
    ids = query(db, "SELECT event_id FROM events")
    assert all(len(i[0]) == 32 for i in ids)


def test_hourly_counts_distinct_clients_per_hour(db: Path, store: Store) -> None:
    # Hour 10: c1 three times, c2 once -> 2 clients. Hour 11: c1 again -> 1 client.
    store.write_events(
        [make_event(ts="2024-05-01T10:05:00Z", client="c1") for _ in range(3)]
        + [make_event(ts="2024-05-01T10:59:59.999999Z", client="c2")]
    )
    store.write_events([make_event(ts="2024-05-01T11:00:00Z", client="c1")])
    # A later batch for hour 10 with a known and a new client is recomputed, not added.
    store.write_events(
        [make_event(ts="2024-05-01T10:30:00Z", client="c2"), make_event(ts="2024-05-01T10:31:00Z", client="c3")]
    )
    rows = query(db, "SELECT hour, events, flows, clients FROM usage_hourly ORDER BY hour")
    assert rows == [(datetime(2024, 5, 1, 10), 6, 6, 3), (datetime(2024, 5, 1, 11), 1, 1, 1)]


def test_hourly_splits_by_kind_and_counts_flows_and_lookups(db: Path, store: Store) -> None:
    store.write_events(
        [make_event(kind="flow"), make_event(kind="encrypted-dns"), make_event(kind="dns", bytes_up=0, bytes_down=0)]
    )
    rows = query(db, "SELECT kind, flows, dns_lookups, bytes_up FROM usage_hourly ORDER BY kind")
    assert rows == [("dns", 0, 1, 0), ("encrypted-dns", 1, 0, 1000), ("flow", 1, 0, 1000)]


def test_timestamps_with_offsets_are_stored_in_utc(db: Path, store: Store) -> None:
    store.write_events(
        [
            make_event(ts="2024-05-01T12:00:00+02:00"),
            make_event(ts="2024-05-01T10:00:00Z"),
            make_event(ts="2024-05-01T10:00:00.250000"),
        ]
    )
    assert query(db, "SELECT ts FROM events ORDER BY ts") == [
        (datetime(2024, 5, 1, 10, 0),),
        (datetime(2024, 5, 1, 10, 0),),
        (datetime(2024, 5, 1, 10, 0, 0, 250000),),
    ]


def test_an_unparseable_timestamp_drops_that_event_only(db: Path, store: Store) -> None:
    assert store.write_events([make_event(ts="yesterday"), make_event()]) == 1
    assert store.rejected == 1


def test_separators_and_line_breaks_inside_values_are_blanked(db: Path, store: Store) -> None:
    odd = make_event(server_name="evil\x1fname\nwith\rbreaks.example", department="a\tb")
    assert store.write_events([odd, make_event()]) == 2
    names = {r[0] for r in query(db, "SELECT server_name FROM events")}
    assert names == {"evil name with breaks.example", "chatgpt.com"}
    assert query(db, "SELECT department FROM events WHERE server_name LIKE 'evil%'") == [("a\tb",)]


def test_non_ascii_and_quotes_survive(db: Path, store: Store) -> None:
    store.write_events([make_event(department="Burgerzaken \"Ω\" 'test'", server_name="bücher.example")])
    assert query(db, "SELECT department, server_name FROM events") == [("Burgerzaken \"Ω\" 'test'", "bücher.example")]


def test_an_empty_batch_writes_nothing(store: Store) -> None:
    assert store.write_events([]) == 0


def test_candidates_are_upserted_from_new_candidate_events_only(db: Path, store: Store) -> None:
    first = [
        make_event(
            kind="candidate", service="", server_name="newai.example", ts="2024-05-01T09:00:00Z", department="hr"
        ),
        make_event(
            kind="candidate", service="", server_name="newai.example", ts="2024-05-01T11:00:00Z", department="ict"
        ),
    ]
    store.write_events(first)
    store.write_events(first)  # re-analysis: no change
    store.write_events(
        [make_event(kind="candidate", service="", server_name="newai.example", ts="2024-05-02T08:00:00Z")]
    )
    assert query(db, "SELECT * FROM candidates") == [
        ("newai.example", datetime(2024, 5, 1, 9), datetime(2024, 5, 2, 8), 3, "hr")
    ]


# ---------------------------------------------------------------------------
# Retention and runs
# ---------------------------------------------------------------------------


def test_retention_drops_old_events_and_keeps_their_hourly_figures(db: Path, tmp_path: Path) -> None:
    with Store(db, raw_retention_days=30, aggregate_retention_days=400) as s:
        s.write_events([make_event(ts="2024-01-01T10:00:00Z"), make_event(ts="2024-01-01T10:30:00Z", client="c2")])
        s.write_events([make_event(ts="2024-05-20T10:00:00Z")])
        before = hourly(db)
        assert s.enforce_retention(datetime(2024, 6, 1, 12, 30, tzinfo=UTC)) == (2, 0)
        assert query(db, "SELECT ts FROM events") == [(datetime(2024, 5, 20, 10),)]
        assert hourly(db) == before  # the January hour outlives its events
        assert s.enforce_retention(datetime(2025, 3, 1, tzinfo=UTC)) == (1, 1)
        assert query(db, "SELECT hour FROM usage_hourly") == [(datetime(2024, 5, 20, 10),)]


def test_retention_cutoff_falls_on_an_hour_boundary(db: Path, store: Store) -> None:
    store.write_events([make_event(ts="2024-05-01T10:10:00Z"), make_event(ts="2024-05-01T10:50:00Z")])
    # now - 30 days = 10:40: the whole 10:00 hour stays rather than half of it.
    assert store.enforce_retention(datetime(2024, 5, 31, 10, 40, tzinfo=UTC)) == (0, 0)
    assert store.enforce_retention(datetime(2024, 5, 31, 11, 0, tzinfo=UTC)) == (2, 0)


def test_retention_limits_must_keep_aggregates_longer_than_events(db: Path) -> None:
    with pytest.raises(ValueError):
        Store(db, raw_retention_days=30, aggregate_retention_days=7)


def test_record_run_stores_and_then_updates_one_row(db: Path, store: Store) -> None:
    run = RunInfo(command="run", started=datetime(2024, 5, 1, 8, tzinfo=UTC), files=["eth1"])
    store.record_run(run)
    run.finished, run.packets = datetime(2024, 5, 1, 9, tzinfo=UTC), 1234
    run.anomalies = {"dns.label_loop": 2}
    run.coverage = {"named_share": 0.93}
    assert store.record_run(run) == run.run_id
    rows = query(
        db, "SELECT command, started, finished, files, packets, anomalies, coverage, sensor, version FROM runs"
    )
    assert rows == [
        (
            "run",
            datetime(2024, 5, 1, 8),
            datetime(2024, 5, 1, 9),
            '["eth1"]',
            1234,
            '{"dns.label_loop": 2}',
            '{"named_share": 0.93}',
            "site-a",
            store_mod.__version__,
        )
    ]


# ---------------------------------------------------------------------------
# Parquet export
# ---------------------------------------------------------------------------


def test_export_writes_sensor_and_day_partitions(tmp_path: Path, db: Path, store: Store) -> None:
    store.write_events([make_event(ts="2024-05-01T10:00:00Z"), make_event(ts="2024-05-02T23:59:00Z")])
    files = store.export_parquet(tmp_path / "out")
    rel = sorted(str(f.parent.relative_to(tmp_path / "out")) for f in files)
    assert rel == [
        "events/sensor=site-a/day=2024-05-01",
        "events/sensor=site-a/day=2024-05-02",
        "hourly/sensor=site-a/day=2024-05-01",
        "hourly/sensor=site-a/day=2024-05-02",
    ]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no staging left


def test_export_again_overwrites_the_days_it_covers_and_keeps_the_others(
    tmp_path: Path, db: Path, store: Store
) -> None:
    out = tmp_path / "out"
    store.write_events([make_event(ts="2024-05-01T10:00:00Z"), make_event(ts="2024-05-02T10:00:00Z")])
    store.export_parquet(out)
    store.export_parquet(out)  # the same again: still one copy per day
    store.write_events([make_event(ts="2024-05-02T11:00:00Z")])
    store.export_parquet(out, since=date(2024, 5, 2))
    counts = duckdb.sql(
        f"SELECT day, count(*) FROM read_parquet('{out}/events/**/*.parquet', hive_partitioning=true) GROUP BY day ORDER BY day"
    ).fetchall()
    assert counts == [(date(2024, 5, 1), 1), (date(2024, 5, 2), 2)]


# ---------------------------------------------------------------------------
# BatchWriter
# ---------------------------------------------------------------------------


def test_batch_writer_flushes_on_its_interval(db: Path) -> None:
    writer = BatchWriter(Store(db), flush_interval=0.05, clock=may_2024).start()
    try:
        for i in range(25):
            writer.put(make_event())
        wait_until(lambda: writer.events_written == 25)
        assert writer.writes_total >= 1 and writer.backlog() == 0
    finally:
        writer.close()
    assert query(db, "SELECT count(*) FROM events") == [(25,)]


def test_batch_writer_writes_a_steady_trickle_once_per_interval_not_in_a_loop_of_tiny_batches(db: Path) -> None:
    # A batch costs ~0.1 s however small: events arriving during one must wait for the next
    # round, else the writer never rests while a sensor sends a few events a second.
    writer = BatchWriter(Store(db), flush_interval=1.0, clock=may_2024).start()
    try:
        started = time.monotonic()
        while time.monotonic() - started < 3.0:
            writer.put(make_event())
            time.sleep(0.005)
        writer.flush(timeout=30)
        rounds = writer.writes_total
    finally:
        writer.close()
    assert rounds <= 6  # 3 s at one round a second (and the flush), not one batch per write time
    assert writer.dropped == 0 and query(db, "SELECT count(*) FROM events")[0][0] == writer.events_written


def test_batch_writer_flushes_at_max_batch_before_the_interval(db: Path) -> None:
    writer = BatchWriter(Store(db), flush_interval=3600, max_batch=50, clock=may_2024).start()
    try:
        for _ in range(50):
            writer.put(make_event())
        wait_until(lambda: writer.events_written == 50)
    finally:
        writer.close()


def test_batch_writer_close_drains_everything(db: Path) -> None:
    writer = BatchWriter(Store(db), flush_interval=3600, max_batch=1000, clock=may_2024).start()
    for _ in range(2500):
        writer.put(make_event())
    writer.close()
    assert writer.dropped == 0 and writer.events_written == 2500
    assert query(db, "SELECT (SELECT count(*) FROM events), (SELECT sum(events) FROM usage_hourly)") == [(2500, 2500)]


def test_batch_writer_enforces_retention_when_it_starts(db: Path) -> None:
    with Store(db) as s:
        s.write_events([make_event(ts="2020-01-01T00:00:00Z")])
    writer = BatchWriter(Store(db), clock=lambda: datetime(2024, 1, 1, tzinfo=UTC)).start()
    writer.flush(timeout=20)
    writer.close()
    assert writer.retention_runs == 1
    assert query(db, "SELECT count(*) FROM events") == [(0,)]


class GatedStore:
    """A store whose writes wait for a gate, and can fail on demand."""

    def __init__(self, failures: int = 0) -> None:
        self.gate = threading.Event()
        self.failures = failures
        self.rows: list = []

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def write_events(self, events):
        self.gate.wait(20)
        if self.failures:
            self.failures -= 1
            raise StoreBusyError("locked")
        self.rows.extend(events)
        return len(events)

    def enforce_retention(self, now):
        return (0, 0)


def test_batch_writer_backlog_stays_bounded_under_a_flood_and_accepted_events_are_kept() -> None:
    fake = GatedStore()
    writer = BatchWriter(fake, flush_interval=0.01, max_batch=100, max_queue=1000).start()
    accepted = sum(writer.put(make_event(event_id=str(i))) for i in range(20_000))
    assert writer.backlog() <= 1000
    assert accepted + writer.dropped == 20_000 and writer.dropped > 0
    fake.gate.set()
    writer.close()
    assert len(fake.rows) == accepted and writer.backlog() == 0


def test_batch_writer_retries_a_failed_write_without_losing_it() -> None:
    fake = GatedStore(failures=2)
    fake.gate.set()
    writer = BatchWriter(fake, flush_interval=0.01).start()
    for i in range(10):
        writer.put(make_event(event_id=str(i)))
    wait_until(lambda: len(fake.rows) == 10)
    writer.close()
    assert writer.write_errors == 2 and writer.dropped == 0
    assert [e.event_id for e in fake.rows] == [str(i) for i in range(10)]


def test_batch_writer_drops_a_batch_that_keeps_failing() -> None:
    fake = GatedStore(failures=3)
    fake.gate.set()
    writer = BatchWriter(fake, flush_interval=0.01, max_attempts=3).start()
    for i in range(5):
        writer.put(make_event())
    wait_until(lambda: writer.dropped == 5)
    writer.put(make_event())
    writer.close()
    assert len(fake.rows) == 1


# ---------------------------------------------------------------------------
# Two processes: a writer and a reader on the same file
# ---------------------------------------------------------------------------

WRITER = """
import sys, time
from datetime import datetime, timezone
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from _store_helpers import make_event
from detector.sinks.store import BatchWriter, Store
writer = BatchWriter(Store(Path(sys.argv[1]), sensor="w"), flush_interval=0.02).start()
for batch in range(25):
    for i in range(50):
        now = datetime.now(timezone.utc).isoformat()  # recent: the writer's retention keeps it
        writer.put(make_event(event_id=f"{batch}-{i}", client=f"c{i % 9}", ts=now))
    time.sleep(0.03)
writer.close()
print(writer.events_written, writer.dropped)
"""

READER = """
import sys
from pathlib import Path
from detector.sinks.report import usage_summary
seen = []
for _ in range(20):
    rows = usage_summary(Path(sys.argv[1]), timeout=30)
    seen.append(rows[0]["flows"] if rows else 0)
assert seen == sorted(seen), seen
print(len(seen), seen[-1])
"""


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_reader_process_reads_while_a_writer_process_writes(db: Path) -> None:
    Store(db).migrate()
    writer = _python(WRITER, str(db), str(Path(__file__).parent))
    reader = _python(READER, str(db))
    w_out, w_err = writer.communicate(timeout=120)
    r_out, r_err = reader.communicate(timeout=120)
    assert writer.returncode == 0, w_err
    assert reader.returncode == 0, r_err
    assert w_out.split() == ["1250", "0"]
    assert r_out.split()[0] == "20"
    assert query(db, "SELECT count(*) FROM events") == [(1250,)]


HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(30)
"""


def test_a_reader_gives_up_with_a_clear_error_when_the_lock_is_held_too_long(db: Path) -> None:
    from detector.sinks.report import usage_summary

    Store(db).migrate()
    holder = _python(HOLDER, str(db))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreBusyError, match=r"stayed locked by another process for 0.3 s"):
            usage_summary(db, timeout=0.3)
    finally:
        holder.kill()
        holder.wait()
