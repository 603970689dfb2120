"""`shadowai rules check|match` and `shadowai config check|show` as an admin uses them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from _cli import ROOT, assert_one_line_error, shadowai

from detector import config as config_mod

RULES = ROOT / "rules"


def test_rules_check_passes_on_the_shipped_rules(tmp_path: Path) -> None:
    r = shadowai("rules", "check", state=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok: ") and " services, policy " in r.stdout
    assert int(r.stdout.split()[1]) >= 100  # every service of the catalogue


@pytest.fixture
def broken_rules(tmp_path: Path) -> Path:
    """A copy of the rules with three mistakes, in two files."""
    copy = tmp_path / "rules"
    shutil.copytree(RULES, copy)
    chat = copy / "catalogue" / "chat_assistant.yaml"
    text = chat.read_text()
    assert "{pattern: chat.com," in text and "category: chat_assistant" in text
    text = text.replace("{pattern: chat.com,", "{pattern: 'regexp:([a-',", 1)
    chat.write_text(text.replace("category: chat_assistant", "category: chitchat", 1))
    policy = copy / "policy.example.yaml"
    policy.write_text(policy.read_text().replace("deepl: tolerated", "deepl: maybe", 1))
    return copy


def test_rules_check_names_file_entry_and_problem_for_every_error(broken_rules: Path, tmp_path: Path) -> None:
    r = shadowai("rules", "check", "--rules", broken_rules, state=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    assert lines[0].startswith("catalogue/chat_assistant.yaml: openai_chatgpt: unknown category 'chitchat'")
    assert lines[1].startswith("catalogue/chat_assistant.yaml: openai_chatgpt: pattern 'regexp:([a-': bad regexp")
    assert lines[2].startswith("policy.example.yaml: deepl: unknown policy 'maybe'")
    assert r.stderr == "shadowai: error: 3 problem(s) in the rules\n"


@pytest.mark.parametrize(
    ("name", "service"),
    [
        ("chatgpt.com", "openai_chatgpt"),
        ("CHATGPT.COM.", "openai_chatgpt"),
        ("eu.chatgpt.com", "openai_chatgpt"),
        ("notchatgpt.com", None),
        ("chatgpt.com.evil.example", None),
        ("mychatgpt.org", None),
    ],
)
def test_rules_match_says_which_service_and_pattern_a_name_hits(tmp_path: Path, name: str, service: str | None) -> None:
    r = shadowai("rules", "match", name, state=tmp_path)
    assert "Traceback" not in r.stderr
    result = r.stdout.strip().splitlines()[-1]
    if service is None:
        assert r.returncode == 1 and result == "result: no match", r.stdout
    else:
        assert r.returncode == 0 and result == f"result: {service} via domain pattern 'chatgpt.com'", r.stdout
        assert "considered, most specific first" in r.stdout  # the why, not only the what


def test_config_check_accepts_the_defaults_and_a_good_file(tmp_path: Path) -> None:
    good = tmp_path / "shadowai.yaml"
    good.write_text("sensor:\n  name: town-hall\nflows:\n  max_flows: 5000\n")
    r = shadowai("config", "check", "--config", good, state=tmp_path)
    assert r.returncode == 0 and r.stdout == f"ok: {good} (sensor town-hall)\n", r.stdout + r.stderr


def test_config_check_names_the_key_of_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "shadowai.yaml"
    bad.write_text("metrics:\n  listen: 127.0.0.1:9810\n  lisen: 0.0.0.0:9810\n")
    r = shadowai("config", "check", "--config", bad, state=tmp_path)
    assert_one_line_error(r, 2, str(bad), "metrics.lisen", "unknown key")


def test_config_check_of_a_missing_file_is_one_error_line(tmp_path: Path) -> None:
    r = shadowai("config", "check", "--config", tmp_path / "nope.yaml", state=tmp_path)
    assert_one_line_error(r, 2, "nope.yaml", "cannot read")


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_config_show_prints_a_whole_config_that_loads_back_unchanged(tmp_path: Path, fmt: str) -> None:
    given = tmp_path / "given.yaml"
    given.write_text("sensor:\n  name: town-hall\nstore:\n  path: /var/lib/shadowai/usage.duckdb\n"
                     "capture:\n  interfaces: [ens1f0, ens1f1]\n")  # fmt: skip
    shown = shadowai("config", "show", "--format", fmt, "--config", given, state=tmp_path)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout) if fmt == "json" else yaml.safe_load(shown.stdout)
    assert data == config_mod.as_dict(config_mod.load(given))
    assert data["capture"]["interfaces"] == ["ens1f0", "ens1f1"] and data["flows"]["max_flows"] > 0
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(data))
    check = shadowai("config", "check", "--config", again, state=tmp_path)
    assert check.returncode == 0, check.stderr
    reshown = shadowai("config", "show", "--format", fmt, "--config", again, state=tmp_path)
    assert reshown.stdout == shown.stdout


def test_config_show_without_a_file_prints_every_default(tmp_path: Path) -> None:
    if config_mod.DEFAULT_CONFIG_PATH.exists():
        pytest.skip(f"{config_mod.DEFAULT_CONFIG_PATH} exists on this machine and would be read")
    r = shadowai("config", "show", "--format", "json", state=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == config_mod.as_dict(config_mod.Config())
