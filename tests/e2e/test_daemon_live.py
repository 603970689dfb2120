"""The daemon on a real interface: a veth pair between two network namespaces made here.

Traffic is written by the project's own generator and sent with scapy from one end; the
daemon captures on the other end. The namespaces have no route anywhere, so nothing leaves
them. Checked: the events in DuckDB equal those of an offline analysis of the same frames,
the real /metrics endpoint counts them, SIGHUP reloads (and survives a broken policy),
SIGTERM loses nothing, and the kernel prefilter costs no event.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

pytestmark = pytest.mark.root


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = f"sai-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode:
        return f"cannot create a network namespace here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_WHY = _can_make_namespaces()
if _WHY:
    pytest.skip(_WHY, allow_module_level=True)


def _ns(name: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *cmd], check=True, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def veth():
    """Namespaces `sensor` and `office` joined by a veth pair; yields their names and ends."""
    tag = f"{os.getpid() % 100000}"
    sensor, office = f"sai-s{tag}", f"sai-o{tag}"
    cap, inj = f"saicap{tag}"[:15], f"saiinj{tag}"[:15]
    for ns in (sensor, office):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "link", "add", cap, "netns", sensor, "type", "veth", "peer", "name", inj, "netns", office], check=True)
        for ns, dev in ((sensor, cap), (office, inj)):
            _ns(ns, "ip", "link", "set", "lo", "up")
            _ns(ns, "ip", "link", "set", dev, "up")
        yield {"sensor": sensor, "office": office, "cap": cap, "inj": inj}
    finally:
        for ns in (sensor, office):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> Path:
    """A short office capture: DNS, TLS (split ClientHellos), QUIC, proxy CONNECT, AI and not."""
    out = tmp_path_factory.mktemp("traffic") / "office.pcap"
    subprocess.run(
        [PY, "-m", "detector.synth", "office", str(out), "--clients", "6", "--duration", "8", "--rate", "20",
         "--seed", "7", "--large-upload", "0", "--snap-bulk", "200", "--max-packets", "4000"],
        check=True, cwd=ROOT, capture_output=True,
    )  # fmt: skip
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sensor:
    """`shadowai run` inside the sensor namespace."""

    def __init__(self, veth: dict, workdir: Path, *, bpf: str = "auto", policy: Path | None = None, workers: int = 1) -> None:
        self.veth, self.workdir = veth, workdir
        self.port = _free_port()
        self.db = workdir / "sensor.duckdb"
        self.policy = policy or workdir / "policy.yaml"
        if policy is None:
            shutil.copy(ROOT / "rules" / "policy.example.yaml", self.policy)
        cfg = workdir / "shadowai.yaml"
        cfg.write_text(
            f"sensor: {{name: live-test}}\n"
            f"rules: {{policy: {self.policy}}}\n"
            f"privacy: {{key_file: {workdir / 'key'}}}\n"
            f"store: {{path: {self.db}, flush_interval: 0.5}}\n"
            f"metrics: {{listen: '127.0.0.1:{self.port}'}}\n"
            f"capture: {{bpf: '{bpf}', workers: {workers}}}\n"
        )
        self.log = open(workdir / "daemon.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", veth["sensor"], PY, "-m", "detector", "run", "--config", str(cfg),
             "--interface", veth["cap"]],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.wait_for(lambda: "shadowai_build_info" in self.metrics(), "metrics endpoint")

    def metrics(self) -> str:
        code = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{self.port}/metrics', timeout=2).read().decode())"
        r = subprocess.run(["ip", "netns", "exec", self.veth["sensor"], PY, "-c", code], capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else ""

    def sample(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_for(self, cond, what: str, timeout: float = 30.0, must: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) waiting for {what}: {self.output()}")
            if cond():
                return True
            time.sleep(0.2)
        if must:
            raise AssertionError(f"timed out waiting for {what}: {self.output()}")
        return False

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the daemon has taken everything sent (its packet count stops moving)."""
        last, deadline = -1.0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.sample("shadowai_decoded_packets_total")
            if now == last and now > 0:
                return
            last = now
            time.sleep(2.0)  # longer than a worker's 1-second counter reports

    def signal(self, sig: int) -> None:
        # `ip netns exec` execs the command, so the pid is the daemon's own.
        os.kill(self.proc.pid, sig)

    def stop(self) -> int:
        self.signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.workdir / "daemon.log").read_text()[-3000:]


# Replay pace: the capture's own gaps divided by this. The sensor's correctness does not
# depend on round-trip times (its filter only drops flows already known not to matter).
SPEEDUP = 10.0
# Least gap between two frames sent: back-to-back bursts overflow the receiving veth's
# backlog (net.core.netdev_max_backlog) on a loaded machine, and those frames never reach
# any capture socket, so neither side of the comparison would be at fault.
MIN_GAP = 0.0002


def _send(veth: dict, pcap: Path) -> None:
    """Replay the capture's frames out of the office end with scapy, keeping their order and
    (compressed) gaps."""
    code = (
        "import time; from scapy.all import RawPcapReader, conf; conf.verb = 0\n"
        f"s = conf.L2socket(iface={veth['inj']!r})\n"
        "start = prev = None\n"
        f"for data, meta in RawPcapReader({str(pcap)!r}):\n"
        "    ts = meta.sec + meta.usec / 1e6\n"
        f"    if prev is not None: time.sleep(max((ts - prev) / {SPEEDUP}, {MIN_GAP}))\n"
        "    prev = ts\n"
        "    s.send(data)\n"
        "s.close()\n"
    )
    _ns(veth["office"], PY, "-c", code, timeout=300)


def _offline(pcap: Path, workdir: Path) -> list[dict]:
    """The same frames analysed offline with the daemon's own configuration file."""
    out = subprocess.run(
        [PY, "-m", "detector", "analyze", "--format", "jsonl", "--no-db", "--config", str(workdir / "shadowai.yaml"),
         str(pcap)],
        check=True, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines()]


def _stored(db: Path) -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM events")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]
    finally:
        con.close()


# Frames a loaded machine may fail to deliver between the two ends of the veth (the
# receiving backlog overflows before any capture socket sees them): a flow's counts may
# fall short by this many packets of the offline analysis of the same file. Which events
# exist, and their names, services, evidence and clients, must match exactly.
VETH_SLACK_PACKETS = 2


def _same_events(live: list[dict], offline: list[dict], both_live: bool = False) -> None:
    ident = lambda e: (e["kind"], e["service"], e["server_name"], e["evidence"], e["client"], e["server_port"])  # noqa: E731
    got, want = sorted(map(ident, live)), sorted(map(ident, offline))
    assert got == want, f"only live: {sorted(set(got) - set(want))}; only offline: {sorted(set(want) - set(got))}"
    counts = {}
    for e in offline:
        counts.setdefault(ident(e), []).append((e["packets"], e["bytes_up"], e["bytes_down"]))
    for e in live:
        options = counts[ident(e)]
        best = min(options, key=lambda o: abs(o[0] - e["packets"]))
        options.remove(best)
        short = best[0] - e["packets"]
        if both_live:  # either run may have lost frames on the veth
            short = abs(short)
        assert 0 <= short <= VETH_SLACK_PACKETS, f"{ident(e)}: live {e['packets']} packets, reference {best[0]}"
        slack = short * 1514
        up, down = best[1] - e["bytes_up"], best[2] - e["bytes_down"]
        if both_live:
            up, down = abs(up), abs(down)
        assert 0 <= up <= slack and 0 <= down <= slack, (
            f"{ident(e)}: live {e['bytes_up']}/{e['bytes_down']} bytes, reference {best[1]}/{best[2]}"
        )


def test_live_capture_stores_what_offline_analysis_finds_and_metrics_count_it(veth, traffic, tmp_path):
    sensor = Sensor(veth, tmp_path)
    _send(veth, traffic)
    offline = [e for e in _offline(traffic, tmp_path) if e["service"] or e["kind"] in ("encrypted-dns", "candidate")]
    ai_flows = sum(1 for e in offline if e["kind"] == "flow" and e["service"])
    assert ai_flows > 5, "the generated traffic should hold AI flows"
    # Flows end on idle timeout or FIN; wait until every AI flow was counted.
    # Lookups are events at once; flows when they end (FIN, idle timeout, or SIGTERM).
    lookups = sum(1 for e in offline if e["kind"] == "dns")
    sensor.wait_for(lambda: sensor.sample("shadowai_ai_dns_lookups_total") >= lookups, "AI lookups in /metrics")
    assert sensor.sample("shadowai_ai_dns_lookups_total") == lookups
    # Flows that closed with FIN/RST are reported after the linger (5 s).
    sensor.wait_for(lambda: sensor.sample("shadowai_ai_flows_total") > 0, "a finished AI flow in /metrics")
    assert sensor.sample("shadowai_capture_packets_total") > 0
    assert sensor.sample("shadowai_capture_kernel_drops_total") == 0
    sensor.settle()
    assert sensor.stop() == 0
    _same_events(_stored(sensor.db), offline)


def test_sighup_reloads_policy_and_keeps_old_rules_when_the_new_file_is_broken(veth, traffic, tmp_path):
    policy = tmp_path / "policy.yaml"
    shutil.copy(ROOT / "rules" / "policy.example.yaml", policy)
    sensor = Sensor(veth, tmp_path, policy=policy)
    before = sensor.sample("shadowai_rules_last_reload_timestamp_seconds")
    text = policy.read_text()
    assert "\nservices:\n" in text
    policy.write_text(text.replace("\nservices:\n", "\nservices:\n  openai_chatgpt: sanctioned\n"))
    sensor.signal(signal.SIGHUP)
    sensor.wait_for(lambda: sensor.sample("shadowai_rules_last_reload_timestamp_seconds") > before, "reload")
    assert sensor.sample("shadowai_rules_last_reload_success") == 1
    _send(veth, traffic)
    # Lookups become events at once, under the policy in force.
    lookups = "shadowai_ai_dns_lookups_total"
    sensor.wait_for(lambda: sensor.sample(lookups, service="openai_chatgpt") > 0, "chatgpt lookups")
    assert sensor.sample(lookups, service="openai_chatgpt", policy="unsanctioned") == 0
    assert sensor.sample(lookups, service="openai_chatgpt", policy="sanctioned") > 0
    stamp = sensor.sample("shadowai_rules_last_reload_timestamp_seconds")
    policy.write_text("departments: [this is: not a policy\n")
    sensor.signal(signal.SIGHUP)
    sensor.wait_for(lambda: sensor.sample("shadowai_rules_last_reload_timestamp_seconds") > stamp, "failed reload")
    assert sensor.sample("shadowai_rules_last_reload_success") == 0
    assert sensor.proc.poll() is None, "a broken policy must not stop the sensor"
    assert sensor.stop() == 0
    assert "reload failed" in sensor.output()


def test_sigterm_flushes_open_flows_so_no_event_is_lost(veth, traffic, tmp_path):
    sensor = Sensor(veth, tmp_path)
    _send(veth, traffic)
    sensor.settle()  # everything captured, but most flows are still open (idle timeout 120 s)
    assert sensor.stop() == 0
    offline = [e for e in _offline(traffic, tmp_path) if e["service"]]
    _same_events([e for e in _stored(sensor.db) if e["service"]], offline)


def test_kernel_prefilter_costs_no_event(veth, traffic, tmp_path):
    results = {}
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    for bpf in ("auto", ""):
        work = tmp_path / (bpf or "none")
        work.mkdir()
        shutil.copy2(key, work / "key")  # the same pseudonyms in both runs
        sensor = Sensor(veth, work, bpf=bpf)
        _send(veth, traffic)
        sensor.settle()
        packets = sensor.sample("shadowai_decoded_packets_total")
        assert sensor.stop() == 0
        results[bpf] = (_stored(sensor.db), packets)
    _same_events(results["auto"][0], results[""][0], both_live=True)
    assert results["auto"][1] < results[""][1], "the prefilter should keep some packets out of Python"


def test_fanout_workers_share_the_interface_and_store_every_event_once(veth, traffic, tmp_path):
    sensor = Sensor(veth, tmp_path, workers=2)
    _send(veth, traffic)
    offline = [e for e in _offline(traffic, tmp_path) if e["service"] or e["kind"] in ("encrypted-dns", "candidate")]
    lookups = sum(1 for e in offline if e["kind"] == "dns")
    sensor.wait_for(lambda: sensor.sample("shadowai_ai_dns_lookups_total") >= lookups, "lookups from the workers")
    assert sensor.sample("shadowai_capture_packets_total") > 0
    sensor.settle()
    assert sensor.stop() == 0
    stored = _stored(sensor.db)
    assert len({e["event_id"] for e in stored}) == len(stored)
    _same_events(stored, offline)


def test_fanout_workers_name_a_flow_by_a_fragmented_dns_answer(veth, tmp_path):
    # Only the reassembled answer names the ECH flow; its second fragment carries no port,
    # so without the kernel's reassembly it could reach another worker than its client's.
    trace = ROOT / "tests" / "golden" / "traces" / "dns-ipv4-fragmented-answer-then-ech-chatgpt.pcap"
    sensor = Sensor(veth, tmp_path, workers=2)
    _send(veth, trace)
    sensor.settle()
    assert sensor.stop() == 0
    offline = [e for e in _offline(trace, tmp_path) if e["service"]]
    assert [e["evidence"] for e in offline if e["kind"] == "flow"] == ["dns-cache"]
    _same_events([e for e in _stored(sensor.db) if e["service"]], offline)


def test_missing_interface_is_a_one_line_error(veth, tmp_path):
    r = subprocess.run(
        ["ip", "netns", "exec", veth["sensor"], PY, "-m", "detector", "run", "--interface", "nosuchif0", "--no-db",
         "--metrics-listen", "", "--key-file", str(tmp_path / "k")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "nosuchif0" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


_SET_GRO = """
import ctypes, fcntl, socket, struct, sys
value = ctypes.create_string_buffer(struct.pack("=II", 0x2C, int(sys.argv[2])))  # ETHTOOL_SGRO
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    fcntl.ioctl(sock, 0x8946, struct.pack("=16sQ", sys.argv[1].encode(), ctypes.addressof(value)))
"""


def test_interface_that_merges_segments_before_capture_is_named_in_a_warning(veth, tmp_path):
    _ns(veth["sensor"], PY, "-c", _SET_GRO, veth["cap"], "1")
    try:
        sensor = Sensor(veth, tmp_path)
        assert sensor.stop() == 0
    finally:
        _ns(veth["sensor"], PY, "-c", _SET_GRO, veth["cap"], "0")
    log = (tmp_path / "daemon.log").read_text()
    assert f"{veth['cap']}: GRO is on" in log and f"ethtool -K {veth['cap']} gro off" in log, log
    quiet = tmp_path / "again"
    quiet.mkdir()
    assert Sensor(veth, quiet).stop() == 0
    assert "GRO" not in (quiet / "daemon.log").read_text()
