"""The one configuration object: defaults here, a YAML file over them, CLI flags over that.

Every key has a default; an unknown key or a value of the wrong type is a ConfigError that
names the file and the dotted key. Sections are frozen dataclasses, so a running daemon can
swap in a whole new Config on reload and no stage ever sees a half-changed one.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/shadowai/shadowai.yaml")


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator (file: key: problem)."""


def _default_rules_dir() -> str:
    """The rules shipped with the package (installed as package data `detector/rules`)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "rules", here.parent / "rules"):
        if (candidate / "catalogue").is_dir():
            return str(candidate)
    return str(here / "rules")


@dataclass(frozen=True, slots=True)
class SensorConfig:
    name: str = field(default_factory=socket.gethostname)  # label on events and exports


@dataclass(frozen=True, slots=True)
class RulesConfig:
    dir: str = field(default_factory=_default_rules_dir)  # catalogue and encrypted-DNS lists
    policy: str = ""  # policy file; empty = rules/policy.example.yaml beside the catalogue


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    interfaces: tuple[str, ...] = ()
    promiscuous: bool = True
    snaplen: int = 2048  # enough for every handshake segment; payload beyond is never read
    buffer_mib: int = 64  # kernel ring per interface
    bpf: str = "auto"  # "auto" = the sensor's own prefilter, "" = none, else a tcpdump expression
    workers: int = 1


@dataclass(frozen=True, slots=True)
class FlowsConfig:
    max_flows: int = 262_144
    idle_timeout: float = 120.0
    active_timeout: float = 1800.0
    linger: float = 5.0  # after FIN/RST, before the flow is reported
    inspect_bytes: int = 32_768  # handshake bytes buffered per direction
    dns_cache_entries: int = 200_000
    dns_cache_grace: float = 300.0  # answers stay usable this long past their TTL


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    raw_clients: bool = False  # store client addresses instead of pseudonyms
    key_file: str = "shadowai.key"  # HMAC key for pseudonyms, created with mode 0600


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: str = "shadowai.duckdb"  # "" = no database
    flush_interval: float = 2.0
    max_batch: int = 5000
    max_backlog: int = 200_000
    raw_retention_days: int = 30
    aggregate_retention_days: int = 400


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9810"  # "" = no endpoint
    active_window: float = 900.0  # seconds a client counts as active for the distinct-clients gauge


# Alert severities, lowest first.
SEVERITIES = ("low", "medium", "high", "critical")


@dataclass(frozen=True, slots=True)
class AlertFileConfig:
    path: str = ""  # ECS JSON lines, one alert per line (Filebeat, Wazuh, Splunk UF); "" = off


@dataclass(frozen=True, slots=True)
class SyslogConfig:
    address: str = ""  # HOST:PORT of the SIEM's syslog receiver; "" = off
    transport: str = "udp"  # udp (RFC 5426) | tcp (RFC 6587 octet counting) | tls (RFC 5425)
    facility: int = 13  # RFC 5424 facility; 13 = log audit
    hostname: str = ""  # HOSTNAME field; "" = the sensor name
    ca_file: str = ""  # tls: CA bundle that signed the receiver's certificate; "" = system store
    cert_file: str = ""  # tls: client certificate for mutual authentication; "" = none
    key_file: str = ""  # tls: its private key
    server_name: str = ""  # tls: name to verify in the receiver's certificate; "" = host of address
    verify: bool = True  # tls: verify the receiver's certificate (false only for tests)
    timeout: float = 5.0  # connect and send timeout, seconds


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str = ""  # http(s) URL that receives one JSON alert per POST; "" = off
    secret_file: str = ""  # file holding the HMAC-SHA256 key for X-ShadowAI-Signature
    secret: str = ""  # the key inline (prefer secret_file: config files are often world-readable)
    ca_file: str = ""  # https: CA bundle of the receiver; "" = system store
    timeout: float = 10.0  # per request, seconds


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    enabled: bool = True
    rules: tuple[str, ...] = (  # rule ids switched on
        "unsanctioned-first-use",
        "large-upload",
        "new-ai-candidate",
        "encrypted-dns",
        "sensor-blind",
    )
    min_severity: str = "low"  # alerts below this severity are not raised
    # unsanctioned-first-use: once per department, service and (UTC) day.
    first_use_policies: tuple[str, ...] = ("unsanctioned", "blocked")
    # large-upload: bytes up in one flow, or per client and service in one (UTC) hour.
    upload_flow_bytes: int = 10_000_000
    upload_client_hour_bytes: int = 50_000_000
    upload_policies: tuple[str, ...] = ("sanctioned", "tolerated", "unsanctioned", "blocked")
    # sensor-blind: shares over a sliding window of health checks.
    blind_window: float = 300.0  # seconds
    blind_drop_share: float = 0.01  # dropped / (received + dropped) packets above this
    blind_flow_share: float = 0.5  # blind / all TLS-QUIC-HTTP flows above this
    blind_min_packets: int = 10_000  # too few packets in the window to judge the drop share
    blind_min_flows: int = 200  # too few flows in the window to judge the blind share
    blind_repeat: float = 3600.0  # seconds before the same blindness alerts again
    # Token bucket per rule, so that a storm cannot flood the SIEM.
    rate_per_minute: float = 30.0
    rate_burst: int = 100
    # Delivery.
    spool_dir: str = "alert-spool"  # one subdirectory per sink; relative = under the state directory
    spool_max: int = 100_000  # alerts kept per sink while it is down; the oldest go first
    queue_size: int = 10_000  # alerts between the event path and each sink's thread
    retry_initial: float = 1.0  # first retry delay, seconds; doubles per failure
    retry_max: float = 300.0  # longest retry delay, seconds
    file: AlertFileConfig = field(default_factory=AlertFileConfig)
    syslog: SyslogConfig = field(default_factory=SyslogConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: str = "text"  # text | json
    level: str = "info"


@dataclass(frozen=True, slots=True)
class Config:
    sensor: SensorConfig = field(default_factory=SensorConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)

    def policy_path(self) -> Path:
        """The policy file in force."""
        return Path(self.rules.policy) if self.rules.policy else Path(self.rules.dir) / "policy.example.yaml"


ALERT_CHOICES: dict[str, tuple[str, ...]] = {
    "alerts.min_severity": SEVERITIES,
    "alerts.syslog.transport": ("udp", "tcp", "tls"),
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "logging.format": ("text", "json"),
    "logging.level": ("debug", "info", "warning", "error"),
    **ALERT_CHOICES,
}

# Whole numbers that must be at least this (0 would break the stage, not switch it off):
# an empty flow table cannot hold the flow a packet was just counted into, a handshake
# buffer of 0 bytes has no first byte to tell TLS from HTTP, a batch of 0 events never
# empties the writer's queue, and raw events must live at least a day (the store's rule).
_MINIMUM: dict[str, int] = {
    "flows.max_flows": 1,
    "flows.inspect_bytes": 1,
    "store.max_batch": 1,
    "store.raw_retention_days": 1,
}


def load(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Build the Config from defaults, the YAML file at `path` (if given) and `overrides`
    (dotted keys such as "store.path", already typed by the CLI)."""
    import yaml  # local: only configuration loading needs it

    data: dict[str, Any] = {}
    where = str(path) if path else "defaults"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{at}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded
    cfg = _build(Config, data, where, "")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        cfg = _override(cfg, dotted, value)
    if cfg.store.aggregate_retention_days < cfg.store.raw_retention_days:
        # The hourly figures are computed from the raw events, so they cannot be kept for less.
        raise ConfigError(f"{where}: store.aggregate_retention_days: must be at least store.raw_retention_days "
                          f"({cfg.store.raw_retention_days}), not {cfg.store.aggregate_retention_days}")  # fmt: skip
    return cfg


def _build(cls: type, data: Any, where: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'top level'}: must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}: {prefix}{key}: unknown key")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], where, prefix + f.name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, where, key + ".")
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key}: must be a list of strings")
        return tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: must be a whole number, not {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: {key}: must not be negative")
        if value < _MINIMUM.get(key, 0):
            raise ConfigError(f"{where}: {key}: must be at least {_MINIMUM[key]}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: must be a number, not {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: {key}: must not be negative")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: must be a string, not {value!r}")
        value = str(value)
        choices = _CHOICES.get(key)
        if choices and value not in choices:
            raise ConfigError(f"{where}: {key}: must be one of {', '.join(choices)}, not {value!r}")
        return value
    if isinstance(tp, types.UnionType):  # pragma: no cover - no optional keys yet
        return value
    raise ConfigError(f"{where}: {key}: unsupported type")


def _override(cfg: Any, dotted: str, value: Any, prefix: str = "") -> Any:
    # `prefix` carries the sections already descended, so that messages, choices and
    # minimums see the whole dotted key.
    head, _, rest = dotted.partition(".")
    hints = typing.get_type_hints(type(cfg))
    if head not in hints:
        raise ConfigError(f"command line: {prefix}{dotted}: unknown key")
    if rest:
        return dataclasses.replace(cfg, **{head: _override(getattr(cfg, head), rest, value, f"{prefix}{head}.")})
    return dataclasses.replace(cfg, **{head: _coerce(hints[head], value, "command line", prefix + dotted)})


def as_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for `shadowai config show`)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = as_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
    return out


def state_path(cfg_value: str, base: Path | None = None) -> Path:
    """Resolve a relative state path (database, key) against $STATE_DIRECTORY when systemd set it."""
    p = Path(cfg_value)
    if p.is_absolute():
        return p
    root = base or Path(os.environ.get("STATE_DIRECTORY", "").split(":")[0] or ".")
    return root / p
