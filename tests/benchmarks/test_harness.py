"""The benchmark harnesses on a tiny mix, so they cannot rot unnoticed. No timing assertions:
only that every tool ran, its AI flows were read back and compared, and the result file holds
what the README promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a directory of scripts, not an installed package

from benchmarks import live
from benchmarks.mix import (
    MixParams,
    compare,
    ensure_mix,
    flow_key,
    load_matcher,
    prefix_capture,
    truth_ai_flows,
)
from detector.capture.pcapfile import iter_frames

TINY = 5000  # packets: a few seconds of office traffic plus the generator's fixed cases


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-data")


def test_offline_harness_runs_every_tool_and_shadowai_finds_every_ai_flow(data_dir: Path, tmp_path: Path) -> None:
    result = tmp_path / "offline.json"
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.offline", "--packets", str(TINY), "--repeat", "1",
         "--data-dir", str(data_dir), "--json", str(result)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(result.read_text())
    rows = {row["tool"]: row for row in doc["results"]}
    assert "shadowai" in rows
    for name, row in rows.items():
        assert row["wall_s"] > 0 and row["peak_rss_bytes"] > 0 and row["exit_codes"] == [0], name
        assert row["ai_flows_expected"] == doc["truth_ai_flows"] > 0
    assert rows["shadowai"]["ai_flows_found"] == doc["truth_ai_flows"], doc["differences"]["shadowai"]
    assert rows["shadowai"]["shadowai_time_ratio"] == 1.0
    assert doc["growth"]["half"]["packets"] == doc["mix"]["packets"] // 2
    assert "| shadowai analyze" in r.stdout and "AI flows found" in r.stdout
    assert not any(p.name.startswith("shadowai-bench-") for p in data_dir.iterdir()), "scratch outputs are removed"


def test_a_mix_is_generated_once_and_then_reused(data_dir: Path) -> None:
    said: list[str] = []
    first = ensure_mix(MixParams(packets=TINY), data_dir, said.append)
    again = ensure_mix(MixParams(packets=TINY), data_dir, said.append)
    assert again == first
    assert said[-1].startswith("mix: reusing")
    info = first.info
    assert info["packets"] > 0 and info["tls_flows"] > 0 and info["quic_flows"] > 0 and info["dns_packets"] > 0
    assert 0 < info["split_client_hellos"] <= info["tcp_client_hellos"]
    assert MixParams(packets=TINY, seed=2).stem() != MixParams(packets=TINY).stem()


def test_prefix_capture_copies_the_first_records_whole(data_dir: Path, tmp_path: Path) -> None:
    mix = ensure_mix(MixParams(packets=TINY), data_dir, lambda _: None)
    half = tmp_path / "half.pcap"
    assert prefix_capture(mix.pcap, half, 100) == 100
    whole = [f for _, f in zip(range(100), iter_frames(mix.pcap))]
    assert list(iter_frames(half)) == whole


def test_truth_ai_flows_are_keyed_like_the_tools_report_them(data_dir: Path) -> None:
    mix = ensure_mix(MixParams(packets=TINY), data_dir, lambda _: None)
    truth = truth_ai_flows(mix.truth, load_matcher())
    assert truth and all(rec["service"] for rec in truth.values())
    some = next(iter(truth))
    agreement = compare({some, ("10.0.0.1", "10.0.0.2", 443, "chatgpt.com")}, truth)
    assert agreement.found == 1 and agreement.expected == len(truth)
    assert len(agreement.missed) == len(truth) - 1 and agreement.extra == [("10.0.0.1", "10.0.0.2", 443, "chatgpt.com")]


def test_flow_keys_compare_addresses_and_names_canonically() -> None:
    assert flow_key("2606:4700:4400:0:48ad:1278:efee:bf11", "10.10.0.8", "8080", "ChatGPT.com.") == flow_key(
        "2606:4700:4400::48ad:1278:efee:bf11", "10.10.0.8", 8080, "chatgpt.com"
    )


def test_tcpreplay_summary_is_parsed() -> None:
    text = (
        "Actual: 50 packets (11705 bytes) sent in 0.003928 seconds\n"
        "Rated: 2979887.9 Bps, 23.83 Mbps, 12729.12 pps\n"
        "Flows: 4 flows, 1018.32 fps, 4 unique flow packets, 46 unique non-flow packets\n"
        "Statistics for network device: ttb\n"
        "\tSuccessful packets:        50\n"
        "\tFailed packets:            0\n"
    )
    assert live.parse_tcpreplay(text) == live.Replay(50, 11705, 0.003928, 23.83, 12729.12, 0)
    assert live.parse_tcpreplay("tcpreplay: no such device") == live.Replay()


def test_metric_sum_adds_every_label_set_and_only_that_metric() -> None:
    text = (
        "# TYPE shadowai_ai_flows_total counter\n"
        'shadowai_ai_flows_total{service="openai_chatgpt",policy="unsanctioned"} 3.0\n'
        'shadowai_ai_flows_total{service="deepl",policy="sanctioned"} 2.0\n'
        'shadowai_ai_flows_total_created{service="deepl"} 1.7e9\n'
        "shadowai_capture_kernel_drops_total 0.0\n"
    )
    assert live.metric_sum(text, "shadowai_ai_flows_total") == 5
    assert live.metric_sum(text, "shadowai_capture_kernel_drops_total") == 0
    assert live.metric_sum(text, "shadowai_capture_packets_total") == 0


def _burner(seconds: float) -> str:
    """Python code that uses `seconds` of CPU, says so, and waits for a line on stdin."""
    return f"import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\nprint(flush=True)\ninput()\n"


def test_daemon_cpu_counts_its_busy_children_and_not_other_processes() -> None:
    # A parent whose child burns 0.4 s; an unrelated process burns 1.0 s. Both stay alive.
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {_burner(0.4)!r}])"
    parent = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stranger = subprocess.Popen(
        [sys.executable, "-c", _burner(1.0)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        parent.stdout.readline(), stranger.stdout.readline()  # type: ignore[union-attr]
        used = live.tree_cpu_seconds(parent.pid)
    finally:
        for p in (parent, stranger):
            p.communicate("\n", timeout=30)
    assert 0.4 <= used < 0.9


def test_missed_flows_are_the_sure_ones_the_daemon_never_stored() -> None:
    def flow(ts: str, evidence: str) -> dict:
        return {"ts": ts, "evidence": evidence}

    stored = ("10.0.0.1", "104.18.0.1", 443, "chatgpt.com")
    lost = ("10.0.0.2", "104.18.0.1", 443, "chatgpt.com")
    late = ("10.0.0.3", "104.18.0.1", 443, "claude.ai")
    flows = {
        stored: flow("2026-11-29T10:00:00Z", "tls-sni"),
        lost: flow("2026-11-29T10:00:01Z", "quic-sni"),
        late: flow("2026-11-29T10:00:09Z", "tls-sni"),
    }
    want = live.Expectation(sorted(live.iso_seconds(r["ts"]) for r in flows.values()), flows)
    cut = live.iso_seconds("2026-11-29T10:00:10Z")  # `late` starts within MARGIN_S of the cut
    assert want.missed(cut, {stored}) == ["10.0.0.2 104.18.0.1:443 chatgpt.com (quic-sni)"]
    assert want.missed(cut, {stored, lost}) == []


def test_live_harness_says_why_it_cannot_run_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in (live.why_not() or "")
    assert live.main(["--packets", str(TINY)]) == 0  # skips: no namespaces, no traffic


@pytest.mark.root
def test_live_harness_sends_a_tiny_mix_over_a_veth_pair(data_dir: Path, tmp_path: Path) -> None:
    if reason := live.why_not():
        pytest.skip(reason)
    result = tmp_path / "live.json"
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.live", "--packets", str(TINY), "--rates", "20", "--workers", "1",
         "--data-dir", str(data_dir), "--json", str(result)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(result.read_text())
    (step,) = doc["steps"]
    assert step["requested_mbps"] == 20 and step["sent"] == doc["mix"]["packets"] and step["failed"] == 0
    assert step["captured"] > 0 and step["expected_ai_flows"] > 0
    assert step["missed"] == []  # every AI flow of the mix is in the daemon's database
    assert "| requested Mbit/s" in r.stdout
