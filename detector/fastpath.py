"""The offline fast path: one pass over a capture, most packets never reaching Python one by one.

libpcap reads the file in batches; of plain IPv4 TCP/UDP flows, `flows.heads` admits per
flow direction only what can name a flow or change its state (its first packet, SYN/FIN/RST,
the client's ClientHello or request head, a UDP flow's handshake) and folds the rest into
counted runs; everything else (DNS, IPv6, tunnels, other link content) reaches the pipeline
whole. The ordinary pipeline takes both in time order, so events, byte counts, timeouts and
coverage figures come out as the full path gives them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from detector.capture.libpcap import batches, fast_path_linktype
from detector.capture.pcapfile import CaptureError
from detector.config import Config
from detector.decode.tunnels import UDP_TUNNELS
from detector.flows.heads import HeadSelector
from detector.model import DNS_UDP_PORTS, Stats, UsageEvent
from detector.pipeline import Pipeline

# UDP that must reach Python whole: DNS feeds the cache, tunnels carry whole flows inside.
PYTHON_UDP_PORTS = frozenset(DNS_UDP_PORTS | set(UDP_TUNNELS))


def usable(path: Path) -> bool:
    """Whether a file can take the fast path (plain pcap/pcapng libpcap reads, known link type)."""
    return fast_path_linktype(path) is not None


def analyze(path: Path, main: Pipeline, cfg: Config, part: tuple[int, int] | None = None) -> str | None:
    """One file through `main`; events come out of it as usual. Returns libpcap's message
    when the file ends in a truncated record (what came before it was analysed), else
    None. Raises FastPathUnavailable, before `main` saw anything, when the fast path
    cannot read the file."""
    dlt = fast_path_linktype(path)
    if dlt is None:
        raise FastPathUnavailable(f"{path}: not readable by the fast path")
    selector = HeadSelector(
        dlt, whole_ports=PYTHON_UDP_PORTS, idle_timeout=cfg.flows.idle_timeout, inspect_bytes=cfg.flows.inspect_bytes,
        max_states=2 * cfg.flows.max_flows,
    )  # fmt: skip
    cut: list[str] = []
    try:
        for data, meta in batches(path, dlt, part, cut):
            selector.feed(data, meta, main.feed, main.feed_run)
    except CaptureError as exc:
        raise FastPathUnavailable(str(exc)) from None
    return cut[0] if cut else None


class FastPathUnavailable(Exception):
    """libpcap cannot read the file; take the full path for it."""


# -- both cores: one file's flows in shares, one process per share ------------------------------

# What forked share processes inherit instead of receiving it pickled (a classifier holds
# compiled patterns and caches): set just before the pool starts.
_SHARED: tuple[Config, object, bool] | None = None


def _share(args: tuple[Path, int, int]) -> tuple[list[UsageEvent], Stats, str | None]:
    path, k, n = args
    cfg, classifier, include_all = _SHARED  # type: ignore[misc]
    events: list[UsageEvent] = []
    main = Pipeline(cfg, classifier, events.append, Stats(), include_unmatched=include_all)
    main.share = (k, n)
    cut = analyze(path, main, cfg, part=(k, n))
    main.finish()
    return events, main.stats, cut


def analyze_shared(
    path: Path, cfg: Config, classifier: object, shares: int, include_all: bool = False
) -> tuple[list[UsageEvent], Stats, str | None]:
    """One file on `shares` processes (a power of two), each taking the clients whose
    address hash falls in its share, with their DNS (see capture.libpcap): the events of
    all shares, their counters added up, and libpcap's message if the file ends in a
    truncated record. Flows do not cross shares, so the result equals one process's (with
    `include_all`, an event for every flow); raises FastPathUnavailable when the fast path
    cannot read the file."""
    import multiprocessing as mp

    global _SHARED
    _SHARED = (cfg, classifier, include_all)
    try:
        with mp.get_context("fork").Pool(shares) as pool:
            results = pool.map(_share, [(path, k, shares) for k in range(shares)])
    finally:
        _SHARED = None
    events: list[UsageEvent] = []
    total = Stats()
    for evs, st, _ in results:
        events.extend(evs)
        add_stats(total, st)
    return events, total, results[0][2]


def add_stats(into: Stats, other: Stats) -> None:
    """Add `other`'s counters to `into`."""
    for f in dataclasses.fields(Stats):
        mine, theirs = getattr(into, f.name), getattr(other, f.name)
        if isinstance(theirs, dict):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        else:
            setattr(into, f.name, mine + theirs)
