-- initial schema: raw events, hourly usage, AI-name candidates, runs
--
-- Applied by detector.sinks.store.apply_migrations inside one transaction, which
-- then records it in schema_version. Times are UTC (TIMESTAMP without zone).

-- Numbers each write transaction, so that a batch's newly stored rows can be
-- found again cheaply (row-group min/max on a column that only grows).
CREATE SEQUENCE batch_seq START 1;

-- One row per model.UsageEvent; kept raw_retention_days (personal data:
-- client pseudonyms), then deleted. Field meanings: detector/model.py.
CREATE TABLE events (
    event_id     VARCHAR PRIMARY KEY,  -- deterministic: re-analysing a capture stores nothing twice
    ts           TIMESTAMP NOT NULL,   -- flow start / lookup time, UTC
    kind         VARCHAR NOT NULL,     -- flow | dns | encrypted-dns | candidate
    client       VARCHAR NOT NULL,     -- pseudonym (raw address only if the operator enabled it)
    department   VARCHAR NOT NULL,
    service      VARCHAR NOT NULL,     -- catalogue id; '' when unattributed
    vendor       VARCHAR NOT NULL,
    category     VARCHAR NOT NULL,
    jurisdiction VARCHAR NOT NULL,
    policy       VARCHAR NOT NULL,     -- sanctioned | tolerated | unsanctioned | blocked
    server_name  VARCHAR NOT NULL,
    server_ip    VARCHAR NOT NULL,
    server_port  INTEGER NOT NULL,
    transport    VARCHAR NOT NULL,
    evidence     VARCHAR NOT NULL,     -- dns | tls-sni | quic-sni | http-host | http-connect | dns-cache | ip-range
    bytes_up     BIGINT NOT NULL,
    bytes_down   BIGINT NOT NULL,
    packets      BIGINT NOT NULL,
    duration     DOUBLE NOT NULL,      -- seconds
    ja4          VARCHAR NOT NULL,
    alpn         VARCHAR NOT NULL,
    pattern      VARCHAR NOT NULL,     -- the catalogue pattern that matched
    sensor       VARCHAR NOT NULL,
    batch        BIGINT NOT NULL       -- batch_seq value of the write that stored the row
);

-- Hourly figures, recomputed from the events of every hour a write touches
-- (so distinct clients stay exact and re-analysis is idempotent); kept
-- aggregate_retention_days, long after the events are gone. No client column.
CREATE TABLE usage_hourly (
    hour         TIMESTAMP NOT NULL,   -- start of the UTC hour
    sensor       VARCHAR NOT NULL,
    service      VARCHAR NOT NULL,
    department   VARCHAR NOT NULL,
    policy       VARCHAR NOT NULL,
    category     VARCHAR NOT NULL,
    jurisdiction VARCHAR NOT NULL,
    vendor       VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,
    events       BIGINT NOT NULL,      -- all events of the group (lets readers check events are complete)
    flows        BIGINT NOT NULL,      -- kind flow or encrypted-dns
    dns_lookups  BIGINT NOT NULL,      -- kind dns
    clients      BIGINT NOT NULL,      -- distinct clients in this hour and group
    bytes_up     BIGINT NOT NULL,
    bytes_down   BIGINT NOT NULL,
    packets      BIGINT NOT NULL
);

-- AI-looking names that are not in the catalogue (events of kind candidate),
-- for the catalogue maintainers. Names only: no client.
CREATE TABLE candidates (
    name               VARCHAR PRIMARY KEY,
    first_seen         TIMESTAMP NOT NULL,
    last_seen          TIMESTAMP NOT NULL,
    count              BIGINT NOT NULL,
    example_department VARCHAR NOT NULL
);

-- One row per `shadowai analyze` or daemon run (the daemon rewrites its row).
CREATE TABLE runs (
    run_id    VARCHAR PRIMARY KEY,
    command   VARCHAR NOT NULL,        -- analyze | run
    started   TIMESTAMP NOT NULL,
    finished  TIMESTAMP,               -- NULL while a daemon runs
    files     JSON NOT NULL,           -- list of capture files or interfaces
    packets   BIGINT NOT NULL,
    events    BIGINT NOT NULL,
    anomalies JSON NOT NULL,           -- {anomaly kind: count}
    coverage  JSON NOT NULL,           -- {figure: value}, e.g. named / dns-only / blind flow shares
    sensor    VARCHAR NOT NULL,
    version   VARCHAR NOT NULL         -- shadowai version that wrote the row
);
