"""The offline fast path (libpcap + C selection, two passes) reports exactly what the full
path reports: same events, same byte and packet counts, on every capture we have."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector import fastpath
from detector import pipeline as pipeline_mod
from detector.app import build_classifier
from detector.capture.libpcap import Recording
from detector.capture.pcapfile import PcapWriter
from detector.synth import builders as b
from detector.synth.path import Path as WirePath
from detector.capture.pcapfile import iter_frames
from detector.fastpath import TwoPass, analyze_shared, usable
from detector.flows.table import Flow
from detector.model import Stats
from detector.pipeline import Pipeline
from e2e_helpers import make_config

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "captures"
OWN = sorted((ROOT / "tests" / "golden" / "traces").glob("*.pcap*")) + [ROOT / "samples" / "office-sample.pcap"]
REAL = sorted(p for p in SHARED.rglob("*") if p.suffix in (".pcap", ".pcapng")) if SHARED.is_dir() else []


def _key(e) -> tuple:
    return (e.event_id, e.kind, e.service, e.server_name, e.evidence, e.client, e.bytes_up, e.bytes_down, e.packets, e.ja4)


def _coverage(stats: Stats) -> tuple:
    return (stats.packets, stats.flows_total, stats.flows_named, stats.flows_dns_only, sorted(stats.flows_blind.items()))


def _both(path: Path, cfg) -> tuple[tuple, tuple]:
    """(events, coverage figures) of the full path and of the fast path."""
    classifier = build_classifier(cfg)
    full: list = []
    pipe = Pipeline(cfg, classifier, full.append, Stats())
    pipe.run(iter_frames(path))
    pipe.finish()
    fast: list = []
    main = Pipeline(cfg, classifier, fast.append, Stats())
    two = TwoPass(cfg, classifier)
    two.analyze(path, main)
    two.finish(main)
    return (sorted(map(_key, full)), _coverage(pipe.stats)), (sorted(map(_key, fast)), _coverage(main.stats))


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return make_config(tmp_path_factory.mktemp("fast"))


@pytest.mark.parametrize("path", OWN, ids=[p.name for p in OWN])
def test_fast_path_agrees_on_the_projects_own_captures(path: Path, cfg) -> None:
    if not usable(path):
        pytest.skip(f"{path.name}: not a classic pcap; the fast path leaves it to the full reader")
    full, fast = _both(path, cfg)
    assert fast[0] == full[0]
    assert fast[1] == full[1], "packets, flows and visibility figures"


@pytest.mark.parametrize("path", REAL or [None], ids=[str(p.relative_to(SHARED)) for p in REAL] or ["absent"])
def test_fast_path_agrees_on_the_real_captures(path: Path | None, cfg) -> None:
    if path is None:
        pytest.skip(f"real captures not available: {SHARED} is absent")
    if not usable(path):
        pytest.skip(f"{path.name}: not a classic pcap; the fast path leaves it to the full reader")
    full, fast = _both(path, cfg)
    assert fast[0] == full[0]


def test_fast_path_keeps_most_packets_out_of_python(cfg) -> None:
    """On the office sample, pass 2 sees only AI servers, DNS and the rest; the C part
    drops the bulk of ordinary flows (a structural check, not a timing one)."""
    sample = ROOT / "samples" / "office-sample.pcap"
    two = TwoPass(cfg, build_classifier(cfg))
    main = Pipeline(cfg, two.discovery.classifier, lambda ev: None, Stats())
    two.analyze(sample, main)
    two.finish(main)
    assert two.skipped > 0
    assert main.stats.packets == sum(1 for _ in iter_frames(sample))


@pytest.mark.parametrize("name", ["shared-address-gemini-and-search", "shared-address-gemini-and-search-vlan"])
def test_pass_two_skips_a_flow_named_not_to_matter_on_a_discovered_address(name: str, cfg) -> None:
    """Gemini makes the Google address one to watch; the www.google.com download on the same
    address was named in pass 1 and never reaches Python again (events: see the golden
    trace and the agreement tests above)."""
    trace = ROOT / "tests" / "golden" / "traces" / f"{name}.pcap"
    two = TwoPass(cfg, build_classifier(cfg))
    fed: list[int] = []
    main = Pipeline(cfg, two.discovery.classifier, lambda ev: None, Stats())
    feed = main.feed
    main.feed = lambda ts, lt, data: (fed.append(1), feed(ts, lt, data))  # type: ignore[method-assign]
    two.analyze(trace, main)
    assert len(two.quiet) == 2 and len(two.loud) == 2, "each flow's two directions"
    frames = sum(1 for _ in iter_frames(trace))
    google_only = frames - len(fed)
    assert google_only > 40, f"pass 2 fed {len(fed)} of {frames} frames"


def test_pass_two_reads_the_file_again_when_pass_one_could_not_keep_the_python_part(cfg, monkeypatch) -> None:
    sample = ROOT / "samples" / "office-sample.pcap"
    kept = _both(sample, cfg)[1]
    monkeypatch.setattr(fastpath, "MAX_RECORDING_BYTES", 1000)
    full, fast = _both(sample, cfg)
    assert fast == full == kept


def test_a_recording_gives_up_past_its_limit() -> None:
    rec = Recording(limit=1000)
    rec.add((0.0, 1, bytes(500)))
    assert rec.frames is not None and len(rec.frames) == 1
    rec.add((0.0, 1, bytes(500)))
    assert rec.frames is None
    rec.add((0.0, 1, b""))
    assert rec.frames is None


def test_skipping_stops_once_the_flows_that_matter_fill_their_bound(cfg, monkeypatch) -> None:
    monkeypatch.setattr(fastpath, "MAX_QUIET_FLOWS", 1)
    two = TwoPass(cfg, build_classifier(cfg))
    flows = [Flow(b.ip_bytes("10.20.1.10"), b.ip_bytes("142.250.1.1"), 51000 + i, 443, 6, 0.0) for i in range(3)]
    two._named(flows[0], True)
    two._named(flows[1], True)  # no room left to remember it
    two._named(flows[2], False)
    assert two.quiet_closed and not two.quiet
    trace = ROOT / "tests" / "golden" / "traces" / "shared-address-gemini-and-search.pcap"
    full, fast = _both(trace, cfg)
    assert fast == full


@pytest.mark.parametrize("path", [p for p in OWN if usable(p)], ids=[p.name for p in OWN if usable(p)])
def test_splitting_a_capture_over_two_processes_changes_nothing(path: Path, cfg) -> None:
    """Flows are shared out by an address hash that is the same in both directions; DNS goes
    to both shares and is reported by one: the union is the one-process result."""
    classifier = build_classifier(cfg)
    full: list = []
    pipe = Pipeline(cfg, classifier, full.append, Stats())
    pipe.run(iter_frames(path))
    pipe.finish()
    events, stats = analyze_shared(path, cfg, classifier, 2)
    assert sorted(map(_key, events)) == sorted(map(_key, full))
    assert _coverage(stats) == _coverage(pipe.stats)
    assert _dns_anomalies(stats) == _dns_anomalies(pipe.stats), "each share counts its own clients' DNS"


def _dns_capture(capture: Path, vlan: int = 0, v6: bool = False) -> Path:
    """Clients with even and odd last bytes (the two shares' lookups), AI and ordinary names,
    and broken messages from both."""
    with PcapWriter(capture) as out:
        ts = 1_790_000_000.0
        for last in range(10, 18):
            ends = (f"2001:db8:20::{last}", "2001:db8:10::53") if v6 else (f"10.20.1.{last}", "10.10.0.53")
            path = WirePath(b.ip_bytes(ends[0]), b.ip_bytes(ends[1]), vlan=vlan)
            for i, name in enumerate(("chatgpt.com", "www.nu.nl", "claude.ai")):
                ts += 0.01
                out.write(ts, path.udp(True, 40000 + i, 53, b.dns_query(last * 8 + i, name, 1)))
                ts += 0.01
                out.write(ts, path.udp(False, 53, 40000 + i, b.dns_response(last * 8 + i, name, 1, [(name, 1, 60, "104.18.0.9")])))
            out.write(ts, path.udp(True, 40010, 53, bytes(8)))  # dns.short_header
            out.write(ts, path.udp(True, 40011, 53, b.dns_query(7, "chatgpt.com", 1)[:20]))  # truncated question
    return capture


@pytest.mark.parametrize(("vlan", "v6"), [(0, False), (120, False), (0, True), (120, True)],
                         ids=["ipv4", "ipv4-vlan", "ipv6", "ipv6-vlan"])
def test_splitting_counts_each_dns_anomaly_once_and_reports_every_clients_lookups(cfg, tmp_path, vlan, v6) -> None:
    capture = _dns_capture(tmp_path / "dns.pcap", vlan, v6)
    classifier = build_classifier(cfg)
    full: list = []
    pipe = Pipeline(cfg, classifier, full.append, Stats())
    pipe.run(iter_frames(capture))
    pipe.finish()
    assert _dns_anomalies(pipe.stats) == {"dns.short_header": 8, "dns.truncated_question": 8}
    assert sum(1 for e in full if e.kind == "dns" and e.service) == 16
    events, stats = analyze_shared(capture, cfg, classifier, 2)
    assert sorted(map(_key, events)) == sorted(map(_key, full))
    assert _dns_anomalies(stats) == _dns_anomalies(pipe.stats)


def test_a_shared_dns_memo_changes_nothing_and_stops_growing_at_its_bound(cfg, tmp_path, monkeypatch) -> None:
    capture = _dns_capture(tmp_path / "dns.pcap")
    classifier = build_classifier(cfg)
    monkeypatch.setattr(pipeline_mod, "MAX_DNS_MEMO", 5)
    results = []
    memo: dict = {}
    for shared in (None, memo, memo):  # without, filling it, reading it
        events: list = []
        pipe = Pipeline(cfg, classifier, events.append, Stats())
        pipe.dns_memo = shared
        pipe.run(iter_frames(capture))
        pipe.finish()
        results.append((sorted(map(_key, events)), pipe.stats.anomalies))
    assert len(memo) == 5
    assert results[0] == results[1] == results[2]


def _dns_anomalies(stats: Stats) -> dict[str, int]:
    return {k: v for k, v in stats.anomalies.items() if k.startswith("dns.")}
