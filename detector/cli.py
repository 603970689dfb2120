"""The `shadowai` command: flags become config overrides; app does the work."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import yaml

from detector import __version__
from detector import config as config_mod
from detector.config import ConfigError

EXIT_READ_FAILED = 1  # some input could not be read at all
EXIT_USAGE = 2  # bad configuration, rules or arguments


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"shadowai: error: {message}", err=True)
    sys.exit(code)


def _load_config(config_path: str | None, overrides: dict[str, Any]) -> config_mod.Config:
    path = Path(config_path) if config_path else None
    if path is None and config_mod.DEFAULT_CONFIG_PATH.exists():
        path = config_mod.DEFAULT_CONFIG_PATH
    return config_mod.load(path, overrides)


_config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help=f"Configuration file (default {config_mod.DEFAULT_CONFIG_PATH} when it exists).",
)  # fmt: skip
_rules_options = [
    click.option("--rules", "rules_dir", type=click.Path(file_okay=False), default=None, help="Catalogue directory (rules/)."),
    click.option("--policy", "policy", type=click.Path(dir_okay=False), default=None, help="Policy file (sanction states, department subnets)."),
]  # fmt: skip


def _with(options: list):  # type: ignore[no-untyped-def]
    def wrap(f):  # type: ignore[no-untyped-def]
        for opt in reversed(options):
            f = opt(f)
        return f

    return wrap


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="shadowai")
def cli() -> None:
    """Passive sensor for generative-AI use on a network: which AI services, by which
    departments, how much data, and whether each is sanctioned. Reads DNS, TLS and QUIC
    handshakes and HTTP request heads only, never content."""


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "csv"]), default="table", show_default=True,
              help="table: per-service summary; jsonl/csv: one record per attributed flow or DNS lookup.")
@click.option("--all", "include_all", is_flag=True, help="Also list every other named flow and lookup (service empty).")
@click.option("--db", "db", default=None, help="DuckDB file to fill (default from config: shadowai.duckdb).")
@click.option("--no-db", is_flag=True, help="Do not write a database.")
@click.option("--raw-clients", is_flag=True, help="Show and store client addresses instead of pseudonyms.")
@click.option("--key-file", default=None, help="Pseudonym key file (created with mode 0600 if absent).")
@click.option("--sensor", default=None, help="Sensor name recorded with the events.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on a terminal.")
@click.option("--engine", type=click.Choice(["auto", "fast", "full"]), default="auto", show_default=True,
              help="fast: libpcap and numpy pass each flow's head one by one and count the rest (same "
                   "events and counts; classic pcap only); full: every packet through Python; auto: fast "
                   "where the files allow it.")
@_with(_rules_options)
@_config_option
def analyze(files: tuple[Path, ...], fmt: str, include_all: bool, db: str | None, no_db: bool, raw_clients: bool,
            key_file: str | None, sensor: str | None, progress: bool, engine: str, rules_dir: str | None,
            policy: str | None, config_path: str | None) -> None:  # fmt: skip
    """Analyse capture files (pcap, pcapng, gzip-compressed, or directories of them), or the
    logs of an existing Zeek (conn/ssl/dns/quic/http, TSV or JSON) or Suricata (EVE JSON)
    deployment, recognised by their content.

    Exit status: 0 when every file was read (a truncated end counts as read), 1 when any
    file could not be read at all, 2 for bad configuration or rules."""
    from detector import app

    overrides = {
        "store.path": "" if no_db else db,
        "privacy.raw_clients": True if raw_clients else None,
        "privacy.key_file": key_file,
        "sensor.name": sensor,
        "rules.dir": rules_dir,
        "rules.policy": policy,
    }
    cfg = _load_config(config_path, overrides)
    warn = lambda msg: click.echo(f"shadowai: {msg}", err=True)  # noqa: E731
    # A path that does not exist is a file that could not be read at all: say so, and
    # still analyse the others (exit status 1, as for a file that is no capture).
    missing = [p for p in files if not p.exists()]
    for p in missing:
        warn(f"error: {p}: no such file or directory")
    present = [p for p in files if p.exists()]
    if not present:
        sys.exit(EXIT_READ_FAILED)
    result = app.analyze(present, cfg, fmt=fmt, include_all=include_all, out=sys.stdout, warn=warn,
                         progress=progress, engine=engine)  # fmt: skip
    if result.files_failed or missing:
        sys.exit(EXIT_READ_FAILED)


@cli.command()
@click.option("--interface", "-i", "interfaces", multiple=True, help="Mirror-port interface to capture on (repeatable).")
@click.option("--pcap", "replay", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Replay a capture through the daemon path instead of capturing.")
@click.option("--speed", type=click.Choice(["max", "recorded"]), default="max", show_default=True,
              help="Replay speed: as fast as possible, or at the capture's own pace.")
@click.option("--exit-after-replay", is_flag=True, help="Exit when the replay ends (default: keep serving metrics).")
@click.option("--db", "db", default=None, help="DuckDB file (default from config).")
@click.option("--no-db", is_flag=True, help="Do not write a database.")
@click.option("--metrics-listen", default=None, help="HOST:PORT for /metrics (default 127.0.0.1:9810; '' = off).")
@click.option("--bpf", default=None, help="Kernel prefilter: 'auto' (the sensor's own), '' (none) or a tcpdump expression.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Capture processes sharing the interfaces by client address (AF_PACKET fanout): each sees all of its clients' flows and DNS; one database and /metrics.")
@click.option("--sensor", default=None, help="Sensor name recorded with events and exports.")
@click.option("--key-file", default=None, help="Pseudonym key file (created with mode 0600 if absent).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None, help="Log format on stderr.")
@_with(_rules_options)
@_config_option
def run(interfaces: tuple[str, ...], replay: Path | None, speed: str, exit_after_replay: bool, db: str | None,
        no_db: bool, metrics_listen: str | None, bpf: str | None, workers: int | None, sensor: str | None,
        key_file: str | None,
        log_format: str | None,
        rules_dir: str | None, policy: str | None, config_path: str | None) -> None:  # fmt: skip
    """Run the sensor: capture on mirror-port interfaces (or replay a capture), keep the
    database current, serve Prometheus metrics. SIGHUP reloads catalogue and policy;
    SIGTERM/SIGINT drain, flush and exit."""
    from detector import daemon
    from detector.logs import setup_logging

    overrides = {
        "capture.interfaces": list(interfaces) or None,
        "store.path": "" if no_db else db,
        "metrics.listen": metrics_listen,
        "capture.bpf": bpf,
        "capture.workers": workers,
        "sensor.name": sensor,
        "privacy.key_file": key_file,
        "logging.format": log_format,
        "rules.dir": rules_dir,
        "rules.policy": policy,
    }
    cfg = _load_config(config_path, overrides)
    setup_logging(cfg.logging.format, cfg.logging.level)
    if not cfg.capture.interfaces and replay is None:
        _fail("nothing to capture: give --interface IF (or capture.interfaces in the config), or --pcap FILE")
    if replay is not None and not replay.exists():
        _fail(f"{replay}: no such capture file")
    if cfg.capture.workers > 1:
        if replay is not None:
            _fail("--workers spreads live interfaces; a replay runs in one process")
        from detector import fanout

        c = fanout.Coordinator(cfg, interfaces=cfg.capture.interfaces, reload_config=lambda: _load_config(config_path, overrides))
        sys.exit(c.run())
    d = daemon.Daemon(
        cfg,
        interfaces=() if replay is not None else cfg.capture.interfaces,
        replay=replay,
        realtime=speed == "recorded",
        exit_after_replay=exit_after_replay,
        reload_config=lambda: _load_config(config_path, overrides),
    )
    sys.exit(d.run())


@cli.command()
@click.option("--db", "db", default=None, help="DuckDB file, or a directory of Parquet exports (many sensors).")
@click.option("--since", default=None, help="Start: ISO date/time, or an age such as 7d, 24h (default: all).")
@click.option("--until", default=None, help="End: ISO date/time (default: now).")
@click.option("--by", "group_by", default="service", show_default=True,
              type=click.Choice(["service", "department", "jurisdiction", "policy", "category", "vendor", "new", "unsanctioned"]),
              help="How to group the usage summary.")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@_config_option
def report(db: str | None, since: str | None, until: str | None, group_by: str, fmt: str, config_path: str | None) -> None:
    """Usage summary from the database for a period (works while the daemon runs)."""
    from detector.sinks import report as report_mod

    cfg = _load_config(config_path, {"store.path": db})
    source = config_mod.state_path(cfg.store.path)
    if not source.exists():
        _fail(f"{source}: no such database or export directory (run `shadowai analyze` or `shadowai run` first)")
    start = _parse_when(since) if since else None
    end = _parse_when(until) if until else None
    rows = report_mod.usage_summary(source, start, end, group_by=group_by)
    click.echo(report_mod.render(rows, fmt, group_by=group_by), nl=False)


@cli.command()
@click.option("--parquet", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Export root: writes events/ and hourly/ partitioned by sensor=<name>/day=<YYYY-MM-DD>.")
@click.option("--db", "db", default=None, help="DuckDB file to export (default from config).")
@click.option("--since", default=None, help="First UTC day to export: ISO date, or an age such as 7d (default: all).")
@_config_option
def export(out_dir: Path, db: str | None, since: str | None, config_path: str | None) -> None:
    """Export events and hourly usage as Parquet, so that the exports of many sensors are
    queried as one table (`shadowai report --db DIR`, DuckDB, Trino, Spark). A (sensor, day)
    partition exported again replaces the old one; other days stay."""
    from detector.sinks.store import Store

    cfg = _load_config(config_path, {"store.path": db})
    source = config_mod.state_path(cfg.store.path)
    if not source.is_file():
        _fail(f"{source}: no such database (run `shadowai analyze` or `shadowai run` first)")
    start = _parse_when(since).date() if since else None
    written = Store(source, sensor=cfg.sensor.name).export_parquet(out_dir, start)
    click.echo(f"exported {len(written)} Parquet file(s) to {out_dir}")


def _parse_when(text: str) -> datetime:
    units = {"d": "days", "h": "hours", "m": "minutes", "w": "weeks"}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(timezone.utc) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither an ISO date/time nor an age like 7d") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@cli.group()
def rules() -> None:
    """Check the AI-service catalogue and policy, or see why a name matches."""


@rules.command("check")
@_with(_rules_options)
@_config_option
def rules_check(rules_dir: str | None, policy: str | None, config_path: str | None) -> None:
    """Validate catalogue and policy; print `file: entry: problem` for every error."""
    from detector.classify.catalogue import check_rules

    cfg = _load_config(config_path, {"rules.dir": rules_dir, "rules.policy": policy})
    problems = check_rules(Path(cfg.rules.dir), cfg.policy_path())
    for p in problems:
        click.echo(f"{p.file}: {p.entry}: {p.problem}")
    if problems:
        _fail(f"{len(problems)} problem(s) in the rules", EXIT_READ_FAILED)
    from detector.classify.catalogue import load_catalogue

    cat = load_catalogue(Path(cfg.rules.dir))
    click.echo(f"ok: {len(cat.services)} services, policy {cfg.policy_path()}")


@rules.command("match")
@click.argument("hostname")
@_with(_rules_options)
@_config_option
def rules_match(hostname: str, rules_dir: str | None, policy: str | None, config_path: str | None) -> None:
    """Say which service and pattern HOSTNAME hits, and why. Exit 1 when none does."""
    from detector.classify.catalogue import load_catalogue

    cfg = _load_config(config_path, {"rules.dir": rules_dir, "rules.policy": policy})
    matcher = load_catalogue(Path(cfg.rules.dir)).matcher
    click.echo(matcher.explain(hostname))
    if matcher.match(hostname) is None:
        sys.exit(EXIT_READ_FAILED)


@cli.command("anomalies")
def anomalies_cmd() -> None:
    """List every decode anomaly the sensor counts (shadowai_decode_anomalies_total{kind}),
    with what it means."""
    from detector.decode.anomalies import all_anomalies

    names = all_anomalies()
    width = max(map(len, names))
    for name, reason in names.items():
        click.echo(f"{name.ljust(width)}  {reason}")


@cli.group("config")
def config_group() -> None:
    """Check or show the configuration in force."""


@config_group.command("check")
@_config_option
def config_check(config_path: str | None) -> None:
    """Validate the configuration file; exit 2 with the key named when it is wrong."""
    from detector.sinks.alerts import check_config
    from detector.sinks.metrics import parse_listen

    cfg = _load_config(config_path, {})
    problems = check_config(cfg.alerts)
    if cfg.metrics.listen:
        try:
            parse_listen(cfg.metrics.listen)
        except ValueError:
            problems.append(f"metrics.listen: expected HOST:PORT, not {cfg.metrics.listen!r}")
    for p in problems:
        click.echo(f"{config_path or 'defaults'}: {p}", err=True)
    if problems:
        _fail(f"{len(problems)} problem(s) in the configuration")
    click.echo(f"ok: {config_path or 'defaults'} (sensor {cfg.sensor.name})")


@config_group.command("show")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@_config_option
def config_show(fmt: str, config_path: str | None) -> None:
    """Print the whole configuration in force, defaults included."""
    data = config_mod.as_dict(_load_config(config_path, {}))
    click.echo(json.dumps(data, indent=2) if fmt == "json" else yaml.safe_dump(data, sort_keys=False), nl=fmt == "json")


def main() -> None:
    """Entry point: one-line errors, never a traceback, for problems the operator can fix."""
    from detector.capture.live import CaptureSetupError
    from detector.capture.pcapfile import CaptureError
    from detector.classify.catalogue import RulesError

    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (ConfigError, CaptureError, CaptureSetupError) as exc:
        _fail(str(exc))
    except RulesError as exc:
        for p in exc.problems:
            click.echo(f"{p.file}: {p.entry}: {p.problem}", err=True)
        _fail("the rules have problems; run `shadowai rules check`")
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as exc:
        _fail(f"{exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - last line of defence for store errors
        name = type(exc).__module__.split(".")[0]
        if name == "duckdb":
            _fail(f"database: {str(exc).splitlines()[0]}")
        raise


if __name__ == "__main__":
    main()
