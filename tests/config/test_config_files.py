"""The one configuration file (issue 4 §2): every invalid fixture in testdata/ paired with the
exact text `shadowai config check` prints for it (blackbox-exporter style); every key has a
default; command-line flags override the file."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from detector import config as config_mod
from detector.cli import main

HERE = Path(__file__).resolve().parent
TESTDATA = HERE / "testdata"
ROOT = HERE.parents[1]
SAMPLE = ROOT / "samples" / "office-sample.pcap"

# testdata file -> the exact stderr of `shadowai config check --config {file}` (exit 2).
# A file that does not load is one line; problems found by the checks after loading are one
# line each, then the count.
INVALID: dict[str, str] = {
    "invalid-unknown-key.yaml": "shadowai: error: {file}: flows.max_flow: unknown key\n",
    "invalid-unknown-section.yaml": "shadowai: error: {file}: capturing: unknown key\n",
    "invalid-unknown-nested-key.yaml": "shadowai: error: {file}: alerts.webhook.uri: unknown key\n",
    "invalid-section-not-mapping.yaml": "shadowai: error: {file}: store: must be a mapping\n",
    "invalid-top-level-list.yaml": "shadowai: error: {file}: the top level must be a mapping of sections\n",
    "invalid-yaml-syntax.yaml": "shadowai: error: {file}: not valid YAML (line 3)\n",
    "invalid-int-text.yaml": "shadowai: error: {file}: flows.max_flows: must be a whole number, not 'lots'\n",
    "invalid-int-fraction.yaml": "shadowai: error: {file}: flows.max_flows: must be a whole number, not 1.5\n",
    "invalid-int-bool.yaml": "shadowai: error: {file}: store.max_batch: must be a whole number, not True\n",
    "invalid-negative-number.yaml": "shadowai: error: {file}: flows.idle_timeout: must not be negative\n",
    "invalid-zero-flow-table.yaml": "shadowai: error: {file}: flows.max_flows: must be at least 1\n",
    "invalid-zero-batch.yaml": "shadowai: error: {file}: store.max_batch: must be at least 1\n",
    "invalid-zero-retention.yaml": "shadowai: error: {file}: store.raw_retention_days: must be at least 1\n",
    "invalid-retention-order.yaml": (
        "shadowai: error: {file}: store.aggregate_retention_days: must be at least store.raw_retention_days (90), not 30\n"
    ),
    "invalid-bool-text.yaml": "shadowai: error: {file}: privacy.raw_clients: must be true or false, not 'yes'\n",
    "invalid-list-of-numbers.yaml": "shadowai: error: {file}: capture.interfaces: must be a list of strings\n",
    "invalid-string-list.yaml": "shadowai: error: {file}: store.path: must be a string, not ['a.duckdb', 'b.duckdb']\n",
    "invalid-number-text.yaml": "shadowai: error: {file}: metrics.active_window: must be a number, not 'soon'\n",
    "invalid-choice.yaml": "shadowai: error: {file}: logging.level: must be one of debug, info, warning, error, not 'loud'\n",
    "invalid-nested-choice.yaml": (
        "shadowai: error: {file}: alerts.syslog.transport: must be one of udp, tcp, tls, not 'carrier-pigeon'\n"
    ),
    "invalid-syslog-address.yaml": (
        "{file}: alerts.syslog.address: expected HOST:PORT\n"
        "shadowai: error: 1 problem(s) in the configuration\n"
    ),
    "invalid-metrics-listen.yaml": (
        "{file}: metrics.listen: expected HOST:PORT, not '0.0.0.0'\n"
        "shadowai: error: 1 problem(s) in the configuration\n"
    ),
    "invalid-alert-rule.yaml": (
        "{file}: alerts.rules: unknown rule 'no-such-rule' (one of: unsanctioned-first-use, large-upload, "
        "new-ai-candidate, encrypted-dns, sensor-blind)\n"
        "shadowai: error: 1 problem(s) in the configuration\n"
    ),
    "invalid-two-alert-problems.yaml": (
        "{file}: alerts.blind_drop_share: must be a share in (0, 1]\n"
        "{file}: alerts.webhook.url: must start with http:// or https://\n"
        "shadowai: error: 2 problem(s) in the configuration\n"
    ),
}


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`shadowai ARGS` in-process through the real entry point: (exit status, stdout, stderr).
    An exception that escapes main() fails the test (it would be a traceback)."""
    monkeypatch.setattr(sys, "argv", ["shadowai", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def test_every_invalid_fixture_has_its_expected_text_and_every_text_its_fixture() -> None:
    assert sorted(p.name for p in TESTDATA.glob("invalid-*.yaml")) == sorted(INVALID)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_config_check_prints_the_exact_error_of_each_invalid_file(name: str, monkeypatch, capsys) -> None:
    path = TESTDATA / name
    code, out, err = run_main(["config", "check", "--config", str(path)], monkeypatch, capsys)
    assert (code, out, err) == (2, "", INVALID[name].format(file=path))


@pytest.mark.parametrize("name", sorted(n for n, text in INVALID.items() if text.startswith("shadowai: error:")))
def test_every_command_that_reads_the_config_refuses_a_file_that_does_not_load(name: str, monkeypatch, capsys, tmp_path) -> None:
    path = TESTDATA / name
    for args in (["analyze", str(SAMPLE), "--no-db"], ["run", "--pcap", str(SAMPLE), "--no-db"], ["report"], ["config", "show"]):
        code, out, err = run_main([*args, "--config", str(path)], monkeypatch, capsys)
        assert (code, out, err) == (2, "", INVALID[name].format(file=path)), args


# -- defaults ----------------------------------------------------------------------------------


def _dotted(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    return {head: _nested(rest, value) if rest else value}


DEFAULTS = _dotted(config_mod.as_dict(config_mod.Config()))


def test_no_file_and_an_empty_file_give_the_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    assert config_mod.load(None) == config_mod.load(empty) == config_mod.Config()
    assert len(DEFAULTS) > 60  # every key of every section


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_every_key_has_a_default_that_the_file_may_restate(key: str, tmp_path: Path) -> None:
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(_nested(key, DEFAULTS[key])))
    assert config_mod.load(path) == config_mod.Config()


def test_an_empty_section_takes_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sections.yaml"
    path.write_text("".join(f"{section}:\n" for section in config_mod.as_dict(config_mod.Config())))
    assert config_mod.load(path) == config_mod.Config()


# -- flags over the file -----------------------------------------------------------------------


def test_overrides_win_over_the_file_and_none_keeps_the_file_value(tmp_path: Path) -> None:
    path = tmp_path / "shadowai.yaml"
    path.write_text("sensor: {name: from-file}\nstore: {path: file.duckdb}\nmetrics: {listen: '127.0.0.1:9999'}\n")
    cfg = config_mod.load(path, {"sensor.name": "from-flag", "store.path": None, "metrics.listen": ""})
    assert cfg.sensor.name == "from-flag"
    assert cfg.store.path == "file.duckdb"
    assert cfg.metrics.listen == ""  # an empty flag value is a value ("off"), not "not given"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"flows.max_flows": "many"}, "command line: flows.max_flows: must be a whole number, not 'many'"),
        ({"flows.max_flows": 0}, "command line: flows.max_flows: must be at least 1"),
        ({"logging.format": "xml"}, "command line: logging.format: must be one of text, json, not 'xml'"),
        ({"alerts.syslog.transport": "x"}, "command line: alerts.syslog.transport: must be one of udp, tcp, tls, not 'x'"),
        ({"flows.nope": 1}, "command line: flows.nope: unknown key"),
    ],
)
def test_a_bad_override_is_refused_with_its_whole_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(config_mod.ConfigError) as exc:
        config_mod.load(None, overrides)
    assert str(exc.value) == message


def test_cli_flags_override_the_config_file(tmp_path: Path, monkeypatch, capsys) -> None:
    file_db, flag_db = tmp_path / "from-file.duckdb", tmp_path / "from-flag.duckdb"
    path = tmp_path / "shadowai.yaml"
    path.write_text(
        f"sensor: {{name: from-file}}\nstore: {{path: {file_db}}}\n"
        f"privacy: {{raw_clients: false, key_file: {tmp_path / 'key'}}}\n"
    )
    code, out, err = run_main(
        ["analyze", str(SAMPLE), "--config", str(path), "--db", str(flag_db), "--sensor", "from-flag", "--raw-clients",
         "--format", "jsonl", "--no-progress"],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events and {e["sensor"] for e in events} == {"from-flag"}
    assert all(e["client"][0].isdigit() or ":" in e["client"] for e in events)  # addresses, not c-… pseudonyms
    assert flag_db.exists() and not file_db.exists()
    # And `config show` shows the file's values when no flag is given.
    code, out, _ = run_main(["config", "show", "--format", "json", "--config", str(path)], monkeypatch, capsys)
    shown = json.loads(out)
    assert shown["sensor"]["name"] == "from-file" and shown["store"]["path"] == str(file_db)


def test_config_objects_are_frozen_so_a_reload_swaps_them_whole() -> None:
    cfg = config_mod.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.flows.max_flows = 1  # type: ignore[misc]
