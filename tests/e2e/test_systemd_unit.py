"""The systemd unit (issue 4 §6) and the daemon's side of the contract with systemd (§5):
`systemd-analyze verify` accepts the unit, the unit carries the hardening the issue lists, and
`shadowai run` tells $NOTIFY_SOCKET READY=1, then WATCHDOG=1 while it runs."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from _cli import PY, ROOT, SAMPLE, Daemon

UNIT = ROOT / "systemd" / "shadowai.service"


def directives(text: str) -> dict[str, list[str]]:
    """Key -> values in order (systemd allows a key more than once), comments and sections dropped."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


UNIT_DIRECTIVES = directives(UNIT.read_text())


def _one(key: str) -> str:
    values = UNIT_DIRECTIVES.get(key)
    assert values, f"{key}= missing from {UNIT.name}"
    return values[-1]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    # The unit's ExecStart names the install location (/opt/shadowai/bin/shadowai), which
    # verify checks for: point it at this interpreter running the same command.
    unit = tmp_path / "shadowai.service"
    text = UNIT.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    args = exec_start.split(None, 1)[1]
    unit.write_text(text.replace(exec_start, f"ExecStart={PY} -m detector {args}"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    # verify warns about unknown keys and bad values but still exits 0: any line about the unit fails.
    about_unit = [line for line in (r.stdout + r.stderr).splitlines() if unit.name in line or str(unit) in line]
    assert r.returncode == 0 and not about_unit, r.stdout + r.stderr


def test_the_unit_runs_the_daemon_unprivileged_with_only_the_capture_capabilities() -> None:
    assert _one("Type") == "notify"
    assert " run " in f"{_one('ExecStart')} " and _one("ExecStart").split()[0].endswith("/shadowai")
    assert _one("User") not in ("", "root", "0")
    for key in ("AmbientCapabilities", "CapabilityBoundingSet"):
        assert set(_one(key).split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}, key


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("StateDirectory", "shadowai"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
    ],
)
def test_the_unit_has_the_hardening_the_issue_lists(key: str, expected: str) -> None:
    assert _one(key) == expected


def test_the_unit_restricts_address_families_system_calls_memory_and_has_a_watchdog() -> None:
    families = set(_one("RestrictAddressFamilies").split())
    assert {"AF_PACKET", "AF_UNIX", "AF_NETLINK"} <= families and "AF_BLUETOOTH" not in families
    filters = UNIT_DIRECTIVES["SystemCallFilter"]
    assert "@system-service" in filters and any(f.startswith("~") and "@privileged" in f for f in filters)
    assert _one("MemoryMax")[:-1].isdigit() and _one("MemoryMax")[-1] in "KMG"
    watchdog = _one("WatchdogSec")
    assert watchdog.rstrip("s").isdigit() and int(watchdog.rstrip("s")) > 0


def _read_datagrams(sock: socket.socket, until: float) -> list[str]:
    got = []
    sock.settimeout(0.2)
    while time.monotonic() < until:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return got


def test_the_daemon_sends_ready_then_watchdog_pings_and_stopping_to_notify_socket(tmp_path: Path) -> None:
    # A short directory: AF_UNIX paths are limited to ~107 bytes.
    short = Path(tempfile.mkdtemp(prefix="sai-", dir="/tmp"))
    path = short / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}
        with Daemon("--pcap", SAMPLE, "--no-db", "--metrics-listen", "", state=tmp_path, env=env) as daemon:
            messages: list[str] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and messages.count("WATCHDOG=1") < 2:
                messages += _read_datagrams(sock, time.monotonic() + 0.5)
                assert daemon.proc.poll() is None, daemon.output()
            assert messages[:1] == ["READY=1"], messages
            assert messages.count("WATCHDOG=1") >= 2, messages
            assert daemon.stop(signal.SIGTERM) == 0, daemon.output()
            assert "STOPPING=1" in _read_datagrams(sock, time.monotonic() + 1.0)
    finally:
        sock.close()
        shutil.rmtree(short, ignore_errors=True)

