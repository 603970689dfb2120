"""The offline fast path (libpcap's BPF, numpy's head selection, one pass) reports exactly
what the full path reports: same events, same byte and packet counts, on every capture we
have."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector import fastpath
from detector.app import build_classifier
from detector.capture.libpcap import splittable
from detector.capture.pcapfile import PcapWriter
from detector.synth import builders as b
from detector.synth.path import Path as WirePath
from detector.capture.pcapfile import iter_frames
from detector.fastpath import analyze_shared, usable
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
    assert fastpath.analyze(path, main, cfg) is None
    main.finish()
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


def test_fast_path_feeds_few_packets_one_by_one(cfg) -> None:
    """On the office sample most packets reach the pipeline folded into runs (a structural
    check, not a timing one), and every packet is counted."""
    sample = ROOT / "samples" / "office-sample.pcap"
    main = Pipeline(cfg, build_classifier(cfg), lambda ev: None, Stats())
    fed: list[int] = []
    feed = main.feed
    main.feed = lambda ts, lt, data: (fed.append(1), feed(ts, lt, data))  # type: ignore[method-assign]
    fastpath.analyze(sample, main, cfg)
    main.finish()
    frames = sum(1 for _ in iter_frames(sample))
    assert main.stats.packets == frames
    assert len(fed) < frames / 2, f"{len(fed)} of {frames} frames fed one by one"


@pytest.mark.parametrize("shares", [2, 4])
@pytest.mark.parametrize("path", [p for p in OWN if usable(p)], ids=[p.name for p in OWN if usable(p)])
def test_splitting_a_capture_over_processes_changes_nothing(path: Path, cfg, shares: int) -> None:
    """Clients are shared out with their flows and DNS; fragments reach every share, and each
    keeps its own clients' datagrams: the union is the one-process result (a fragmented
    answer names a flow in another share through that share's cache)."""
    classifier = build_classifier(cfg)
    full: list = []
    pipe = Pipeline(cfg, classifier, full.append, Stats())
    pipe.run(iter_frames(path))
    pipe.finish()
    events, stats, cut = analyze_shared(path, cfg, classifier, shares)
    assert cut is None
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
    events, stats, _ = analyze_shared(capture, cfg, classifier, 2)
    assert sorted(map(_key, events)) == sorted(map(_key, full))
    assert _dns_anomalies(stats) == _dns_anomalies(pipe.stats)


def _dns_anomalies(stats: Stats) -> dict[str, int]:
    return {k: v for k, v in stats.anomalies.items() if k.startswith("dns.")}


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_capture_cut_mid_record_gives_what_the_full_path_gives_and_says_so(cfg, tmp_path, keep) -> None:
    """libpcap loses the batch that holds a truncated record; the fast path reads up to the
    cut again, so every whole packet before it still counts."""
    sample = ROOT / "samples" / "office-sample.pcap"
    data = sample.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: int(len(data) * keep)])
    classifier = build_classifier(cfg)
    full: list = []
    warnings: list[str] = []
    pipe = Pipeline(cfg, classifier, full.append, Stats())
    pipe.run(iter_frames(cut, on_warning=warnings.append))
    pipe.finish()
    fast: list = []
    main = Pipeline(cfg, classifier, fast.append, Stats())
    message = fastpath.analyze(cut, main, cfg)
    main.finish()
    assert warnings and message and "truncated" in message
    assert sorted(map(_key, fast)) == sorted(map(_key, full))
    assert _coverage(main.stats) == _coverage(pipe.stats)


def test_with_all_every_flow_comes_out_of_the_fast_path_as_out_of_the_full_one(cfg) -> None:
    """--all reports every flow, AI or not: the fast path sees every flow too."""
    sample = ROOT / "samples" / "office-sample.pcap"
    classifier = build_classifier(cfg)
    full: list = []
    pipe = Pipeline(cfg, classifier, full.append, Stats(), include_unmatched=True)
    pipe.run(iter_frames(sample))
    pipe.finish()
    events, _, _ = analyze_shared(sample, cfg, classifier, 2, include_all=True)
    assert sorted(map(_key, events)) == sorted(map(_key, full))
    assert sum(1 for e in full if not e.service) > 50, "ordinary flows are in the output too"


def test_a_short_snap_length_capture_is_not_split_since_its_cut_frames_would_reach_no_share(cfg, tmp_path) -> None:
    sample = ROOT / "samples" / "office-sample.pcap"
    short = tmp_path / "short.pcap"
    with PcapWriter(short, snaplen=40) as out:
        for ts, _, frame in iter_frames(sample):
            out.write(ts, frame[:40], len(frame))
    assert splittable(sample) and not splittable(short)
    _, stats, _ = analyze_shared(short, cfg, build_classifier(cfg), 2)
    assert stats.packets < sum(1 for _ in iter_frames(short)), "BPF rejects a frame on a load past its end"
