"""Run the real `shadowai` command (`python -m detector`) for the CLI and end-to-end tests.

Every run gets its own state directory ($STATE_DIRECTORY, which relative state paths such as
the default key file and database resolve against), so no test writes into the repository.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "office-sample.pcap"
TRUTH = ROOT / "samples" / "office-sample.truth.json"
PY = sys.executable


def _env(state: Path, extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["STATE_DIRECTORY"] = str(state)
    env.update(extra or {})
    return env


def shadowai(*args: object, state: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `shadowai ARGS...` to completion in the repository root; text output captured."""
    return subprocess.run(
        [PY, "-m", "detector", *map(str, args)],
        cwd=ROOT, env=_env(state, env), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The run failed with `code` and said so in one stderr line holding every fragment."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`shadowai run ARGS...` in the background, its output in a log file under `state`."""

    def __init__(self, *args: object, state: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.state, self.port = state, port
        self.log_path = state / "daemon.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [PY, "-m", "detector", "run", *map(str, args)],
            cwd=ROOT, env=_env(state, env), stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:  # a failed test: do not leave the daemon behind
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()

    def metrics(self) -> str:
        """The /metrics text, or "" while the endpoint does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    def sample(self, name: str, text: str | None = None) -> float | None:
        """The value of an unlabelled sample, or None when absent."""
        for line in (self.metrics() if text is None else text).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def wait_for(self, cond: Callable[[], object], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) waiting for {what}: {self.output()}")
            if cond():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `sig` and return the exit status."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def output(self) -> str:
        """The end of the daemon's stderr and stdout."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()[-3000:]
