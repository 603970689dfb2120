"""The installed `shadowai` (pip install .) works outside the source tree: the catalogue,
policy and database schema travel inside the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "shadowai"


@pytest.fixture
def installed() -> Path:
    if not EXE.exists():
        pytest.skip(f"shadowai is not installed next to {sys.executable} (run `pip install .`)")
    return EXE


def test_installed_command_checks_its_shipped_rules_from_any_directory(installed: Path, tmp_path: Path) -> None:
    r = subprocess.run([str(installed), "rules", "check"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "112 services" in r.stdout


def test_installed_command_analyses_the_sample_into_a_database(installed: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [str(installed), "analyze", str(ROOT / "samples" / "office-sample.pcap")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "openai_chatgpt" in r.stdout and "TLS/QUIC flows" in r.stdout
    assert (tmp_path / "shadowai.duckdb").exists()
    assert (tmp_path / "shadowai.key").stat().st_mode & 0o077 == 0


def test_anomalies_command_lists_every_decoder_s_names_with_a_reason() -> None:
    r = subprocess.run([sys.executable, "-m", "detector", "anomalies"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    names = [line.split()[0] for line in lines]
    assert len(names) == len(set(names)) > 30
    for prefix in ("dns.", "tls.", "http.", "quic.", "gquic.", "ip", "tunnel."):
        assert any(n.startswith(prefix) for n in names), prefix
    assert all(len(line.split(None, 1)) == 2 for line in lines), "every name has a reason"
