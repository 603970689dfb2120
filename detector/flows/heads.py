"""Which packets of a flow the pipeline must see one by one, and the rest as counted runs.

The fast paths (a capture file, a live link) read frames in batches (libpcap's
`next_batch`: one bytes blob and a record of (seconds, microseconds, offset, length) per
frame). Of each plain IPv4 TCP/UDP flow direction the pipeline needs only the packets that
can name a flow or change its state: the first one, SYN/FIN/RST, the client's stream up to
the end of its TLS ClientHello or HTTP request head (by sequence number), and a UDP flow's
first datagrams and QUIC handshake. Everything else of it only counts: it is folded into
*runs* (one flow direction's packets within RUN_SECONDS: how many, IP bytes, frame bytes,
first and last time), which the flow table counts as if it had seen each packet. Other
frames (DNS, tunnels, fragments, IPv6, anything not IPv4) are always fed whole. The selection is done with numpy over the whole batch (a sort by flow, then
cumulative sums), so Python touches a packet only when it matters.

Selection errs on the side of admitting: a flow direction whose state is forgotten (idle
past the timeout, a new SYN, the state bound) starts over with its head. Two flow
directions share state only when their 64-bit hashes collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from detector.model import IPV4_OFFSETS, MAX_HTTP_HEAD_LEN, TCP, VLAN_TPIDS

# Packets per TCP flow direction admitted whatever they hold: the first, which opens the
# flow (SYN, SYN/ACK, FIN and RST always pass too).
TCP_HEAD = 1
# Datagrams per UDP flow direction admitted whatever they hold (Google QUIC's hello has a
# short header), and within how many a QUIC long header (Initial, Handshake) is admitted:
# the pipeline inspects a UDP flow within its first 16 packets (MAX_QUIC_INITIALS).
UDP_HEAD = 4
UDP_HANDSHAKE = 16
# A run never spans more than this many seconds: a long flow's report every
# `active_timeout` then splits its bytes within this much of where the full path does.
RUN_SECONDS = 60.0

_FIN_SYN_RST = 0x07
_SYN = 0x02
_TLS_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_UDP = 17
_DNS_PORT = 53
# How other link types say "IPv4": at which offset, which bytes (raw IP: only the version).
_IPV4_MARKS = {
    113: (14, (b"\x08\x00",)),  # Linux cooked capture: protocol
    276: (0, (b"\x08\x00",)),  # Linux cooked capture v2: protocol
    0: (0, (b"\x02\x00\x00\x00", b"\x00\x00\x00\x02")),  # BSD loopback: AF_INET in host order
    108: (0, (b"\x00\x00\x00\x02",)),  # OpenBSD loopback: AF_INET in network order
}
# From a frame's start: the EtherType, or a VLAN tag and the EtherType after it.
_LINK = np.arange(12, 18)
# The tags the decoder peels, so a tagged flow folds as the decoder sees it.
_VLAN_TYPES = tuple(VLAN_TPIDS)
# Byte offsets from the IPv4 header: its 20 bytes and a TCP header up to its flags (a UDP
# header's 8); from the first payload byte: a TLS record and handshake header; from the
# payload's end: its last four bytes.
_HEADERS = np.arange(34)
_PEEK = np.arange(9)
_TAIL = np.arange(-4, 0)
_HTTP_RESPONSE = np.frombuffer(b"HTTP/", dtype=np.uint8)
_HEAD_END = np.frombuffer(b"\r\n\r\n", dtype=np.uint8)
# A sequence number this far past the stream's start is before it (a retransmitted SYN's
# data, a stream seen mid-way): admitted, the reassembler sorts it out.
_BEFORE_START = 1 << 31
# Multipliers of a 64-bit hash of a flow direction (splitmix64's constants).
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)


@dataclass(slots=True)
class Runs:
    """One batch's runs, column by column (Python lists, same length). `at` is the index
    of a run's first frame in the batch; `src`/`dst` packed IPv4 addresses."""

    at: list[int]
    first: list[float]
    last: list[float]
    proto: list[int]
    src: list[bytes]
    dst: list[bytes]
    sport: list[int]
    dport: list[int]
    packets: list[int]
    ip_bytes: list[int]
    frame_bytes: list[int]

    @staticmethod
    def none() -> Runs:
        """No runs."""
        return Runs([], [], [], [], [], [], [], [], [], [], [])


class HeadSelector:
    """Per flow direction state across batches; `select` splits one batch."""

    __slots__ = ("linktype", "l2", "whole_ports", "idle_timeout", "inspect_bytes", "max_states", "_state", "_sweep_at")

    def __init__(
        self, linktype: int, *, whole_ports: Iterable[int], idle_timeout: float, inspect_bytes: int, max_states: int
    ) -> None:
        self.linktype = linktype
        # Flow directions whose state is kept, at most (two per flow of the flow table):
        # beyond it the least recently seen half is forgotten; those only start over with
        # their head, so a flood of new flows costs admissions, not memory.
        self.max_states = max_states
        self.l2 = IPV4_OFFSETS[linktype]
        # UDP ports whose datagrams the pipeline needs whole (DNS, tunnels); TCP port 53
        # too (DNS over TCP is read in both directions).
        self.whole_ports = np.array(sorted(set(whole_ports)), dtype=np.int64)
        self.idle_timeout = idle_timeout
        self.inspect_bytes = inspect_bytes
        # flow-direction hash -> (packets seen, stream's first sequence number or -1, stream
        # bytes needed or -1 while unknown, last time)
        self._state: dict[int, tuple[int, int, int, float]] = {}
        self._sweep_at = 0.0

    def __len__(self) -> int:
        return len(self._state)

    def feed(self, data: bytes, meta: bytes, feed: Callable[[float, int, bytes], None], feed_run: RunFeed) -> None:
        """Select a batch (libpcap's `next_batch` result) and feed it in stream order: the
        admitted frames to `feed`, runs to `feed_run` (each where its first frame was)."""
        admitted, runs = self.select(data, meta)
        view = memoryview(meta).cast("I")
        linktype = self.linktype
        at = runs.at
        n_runs = len(at)
        r = 0
        next_run = at[0] if n_runs else -1
        for i in admitted:
            while 0 <= next_run < i:
                _feed_run(runs, r, feed_run)
                r += 1
                next_run = at[r] if r < n_runs else -1
            j = 4 * i
            feed(view[j] + view[j + 1] * 1e-6, linktype, data[view[j + 2] : view[j + 2] + view[j + 3]])
        for r in range(r, n_runs):
            _feed_run(runs, r, feed_run)

    def select(self, data: bytes, meta: bytes) -> tuple[list[int], Runs]:
        """Split a batch of frames: the indices of the frames to feed one by one, in order,
        and the runs that stand for all other frames. Only plain IPv4 TCP/UDP (behind at
        most one VLAN tag on Ethernet), not on a DNS or tunnel port, is folded into runs;
        everything else is fed."""
        m = np.frombuffer(meta, dtype=np.uint32).reshape(-1, 4)
        n = len(m)
        if not data:  # no frames, or only empty ones: nothing to fold
            return list(range(n)), Runs.none()
        b = np.frombuffer(data, dtype=np.uint8)
        ts = m[:, 0] + m[:, 1] * 1e-6
        off = m[:, 2].astype(np.int64)
        caplen = m[:, 3].astype(np.int64)
        l3 = off + self.l2
        if self.linktype == 1:
            link = np.take(b, off[:, None] + _LINK, mode="clip").astype(np.int64)
            tagged = np.isin((link[:, 0] << 8) | link[:, 1], _VLAN_TYPES)
            l3 += tagged * 4
            ipv4 = np.where(tagged, (link[:, 4] << 8) | link[:, 5], (link[:, 0] << 8) | link[:, 1]) == 0x0800
        else:
            at, marks = _IPV4_MARKS.get(self.linktype, (0, ()))
            ipv4 = np.ones(n, dtype=bool) if not marks else np.zeros(n, dtype=bool)
            for mark in marks:
                field = np.take(b, off[:, None] + at + np.arange(len(mark)), mode="clip")
                ipv4 |= (field == np.frombuffer(mark, dtype=np.uint8)).all(axis=1)
        # The IPv4 and TCP/UDP headers without options, and the first payload bytes, as
        # rows (a frame cut short reads bytes of the next one: it is not "plain" below).
        w = np.take(b, l3[:, None] + _HEADERS, mode="clip")
        total = (w[:, 2].astype(np.int64) << 8) | w[:, 3]
        proto = w[:, 9].astype(np.int64)
        ports = _be32(w, 20)
        tcp = proto == TCP
        flags = np.where(tcp, w[:, 33], 0)
        hlen = np.where(tcp, (w[:, 32] >> 4).astype(np.int64) << 2, 8)
        pay = total - 20 - hlen
        # What the ordinary decoder reads as plain TCP/UDP (no IP options, sane lengths,
        # header captured); anything else goes to Python whole, to be decoded or counted
        # as an anomaly there.
        plain = ipv4 & (w[:, 0] == 0x45) & (pay >= 0) & (caplen >= l3 - off + 20 + np.where(tcp, 20, 8))
        plain &= ((w[:, 6] & 0x3F) == 0) & (w[:, 7] == 0)  # not a fragment
        sport, dport = ports >> 16, ports & 0xFFFF
        plain &= np.where(
            tcp,
            (hlen >= 20) & (sport != _DNS_PORT) & (dport != _DNS_PORT),
            (proto == _UDP)
            & (((w[:, 24].astype(np.int64) << 8) | w[:, 25]) == total - 20)
            & ~np.isin(sport, self.whole_ports)
            & ~np.isin(dport, self.whole_ports),
        )
        pay = np.where(plain, pay, 0)
        start = l3 + 20 + hlen
        first_byte = np.take(b, start, mode="clip")
        key = ((_be32(w, 12).astype(np.uint64) << np.uint64(32)) | _be32(w, 16).astype(np.uint64)) * _M1
        key ^= ((ports.astype(np.uint64) << np.uint64(8)) | proto.astype(np.uint64)) * _M2
        key ^= key >> np.uint64(31)

        order = np.argsort(key, kind="stable")  # by flow direction, in time order within one
        k = key[order]
        t = ts[order]
        f = flags[order]
        syn = (f & _SYN) != 0
        p = pay[order]
        seq = np.where(tcp, _be32(w, 24), 0)[order]
        new_key = np.empty(n, dtype=bool)
        new_key[0] = True
        np.not_equal(k[1:], k[:-1], out=new_key[1:])
        gap = np.empty(n, dtype=bool)
        gap[0] = False
        np.greater(t[1:] - t[:-1], self.idle_timeout, out=gap[1:])
        # A segment is one flow direction's life within the batch: a SYN or an idle gap
        # starts a new one (a reused 5-tuple is a new flow to the flow table too).
        seg_start = new_key | syn | gap
        seg = np.cumsum(seg_start) - 1
        seg_first = np.flatnonzero(seg_start)
        heads = np.flatnonzero(new_key)
        uniq = k[heads].tolist()
        # Per segment: packets before the batch, first sequence number, bytes needed.
        base = np.full((len(seg_first), 3), -1, dtype=np.int64)
        base[:, 0] = 0
        rows = np.searchsorted(seg_first, heads)
        state = self._state
        for row, h, i in zip(rows.tolist(), uniq, heads.tolist()):
            c = state.get(h)
            # The batch's first packet of a direction continues its state unless it
            # starts a new life (SYN, or idle since the state was last seen).
            if c is not None and not syn[i] and t[i] - c[3] <= self.idle_timeout:
                base[row] = c[:3]
        rank = np.arange(n) - seg_first[seg] + base[seg, 0]
        # A stream starts after its SYN, else at the first payload seen.
        unknown = base[:, 1] < 0
        syn_first = syn[seg_first] & unknown
        base[syn_first, 1] = (seq[seg_first[syn_first]] + 1) & 0xFFFFFFFF
        carrying = p > 0
        first_pay = np.flatnonzero(carrying & ~syn)
        if len(first_pay):
            segs, at = np.unique(seg[first_pay], return_index=True)
            fresh = base[segs, 1] < 0
            base[segs[fresh], 1] = seq[first_pay[at[fresh]]]
        rel = (seq - base[seg, 1]) & 0xFFFFFFFF
        # The packet at the stream's start tells how much of it the pipeline needs.
        opens = carrying & (rel == 0) & (base[seg, 2] < 0)
        if opens.any():
            at_open = order[opens]  # only these frames' first and last payload bytes are read
            peek = np.take(b, start[at_open, None] + _PEEK, mode="clip")
            tail = np.take(b, (start + pay)[at_open, None] + _TAIL, mode="clip")
            base[seg[opens], 2] = self._stream_limits(peek, tail, p[opens])
        need = np.where(base[seg, 2] < 0, self.inspect_bytes, base[seg, 2])
        is_tcp = tcp[order]
        admit_sorted = (
            ~plain[order]
            | ((f & _FIN_SYN_RST) != 0)
            | np.where(
                is_tcp,
                (rank < TCP_HEAD) | (carrying & ((rel < need) | (rel >= _BEFORE_START))),
                (rank < UDP_HEAD) | ((rank < UDP_HANDSHAKE) & ((first_byte[order] & 0x80) != 0)),
            )
        )
        self._keep(uniq, heads, n, rank, base, seg, t)
        admit = np.empty(n, dtype=bool)
        admit[order] = admit_sorted
        return np.flatnonzero(admit).tolist(), self._runs(
            order, admit_sorted, seg, t, ts, total, caplen, proto, ports, data, l3
        )

    def _stream_limits(self, peek: np.ndarray, tail: np.ndarray, pay: np.ndarray) -> np.ndarray:
        """How many bytes of a stream the pipeline may need, from the packet at its start
        (`peek`: its first payload bytes, `tail`: its last four): a TLS ClientHello up to
        the end of its record (or the inspection buffer, for a hello cut into several
        records); an HTTP request head up to this packet's end when the head ends here,
        else as far as the HTTP decoder ever reads; anything else, this packet only (it
        tells the pipeline what the flow is not)."""
        hs_len = (peek[:, 6].astype(np.int64) << 16) | (peek[:, 7].astype(np.int64) << 8) | peek[:, 8]
        rec_len = (peek[:, 3].astype(np.int64) << 8) | peek[:, 4]
        hello = (peek[:, 0] == _TLS_HANDSHAKE) & (pay >= 9) & (peek[:, 5] == _CLIENT_HELLO)
        tls = np.where(rec_len >= hs_len + 4, 5 + rec_len, self.inspect_bytes)
        request = (peek[:, 0] >= 0x41) & (peek[:, 0] <= 0x5A) & ~(peek[:, :5] == _HTTP_RESPONSE).all(axis=1)
        ends_head = (pay >= 4) & (tail == _HEAD_END).all(axis=1)
        http = np.where(ends_head, pay, MAX_HTTP_HEAD_LEN + 1)
        return np.maximum(np.where(hello, tls, np.where(request, http, 1)), 1)

    def _keep(self, uniq, heads, n, rank, base, seg, t) -> None:  # type: ignore[no-untyped-def]
        """Remember each direction's state as its last segment in this batch left it."""
        ends = np.empty(len(heads), dtype=np.int64)
        ends[:-1] = heads[1:] - 1
        ends[-1] = n - 1
        last = base[seg[ends]]
        state = self._state
        state.update(
            zip(uniq, zip((rank[ends] + 1).tolist(), last[:, 1].tolist(), last[:, 2].tolist(), t[ends].tolist()))
        )
        now = float(t[ends].max())
        if len(state) > self.max_states:
            self._state = dict(sorted(state.items(), key=lambda kv: kv[1][3])[len(state) // 2 :])
        elif now >= self._sweep_at:
            # Directions idle past the timeout: the flow table has ended their flows.
            self._sweep_at = now + self.idle_timeout
            cutoff = now - self.idle_timeout
            self._state = {h: s for h, s in state.items() if s[3] > cutoff}

    def _runs(self, order, admit_sorted, seg, t, ts, total, caplen, proto, ports, data, l3) -> Runs:  # type: ignore[no-untyped-def]
        """Group the frames not admitted into runs: one segment's frames within RUN_SECONDS."""
        drop = np.flatnonzero(~admit_sorted)
        if not len(drop):
            return Runs.none()
        sec = np.floor(t[drop] / RUN_SECONDS).astype(np.int64)
        sg = seg[drop]
        brk = np.empty(len(drop), dtype=bool)
        brk[0] = True
        brk[1:] = (sg[1:] != sg[:-1]) | (sec[1:] != sec[:-1])
        firsts = np.flatnonzero(brk)
        lasts = np.empty(len(firsts), dtype=np.int64)
        lasts[:-1] = firsts[1:] - 1
        lasts[-1] = len(drop) - 1
        frames = order[drop]  # batch indices, grouped by flow direction
        at = frames[firsts]
        # In stream order: each run where its first frame was.
        o = np.argsort(at)
        at = at[o]
        first_l3 = l3[at].tolist()
        return Runs(
            at=at.tolist(),
            first=ts[at].tolist(),
            last=ts[frames[lasts[o]]].tolist(),
            proto=proto[at].tolist(),
            src=[data[i + 12 : i + 16] for i in first_l3],
            dst=[data[i + 16 : i + 20] for i in first_l3],
            sport=(ports[at] >> 16).tolist(),
            dport=(ports[at] & 0xFFFF).tolist(),
            packets=(lasts - firsts + 1)[o].tolist(),
            ip_bytes=np.add.reduceat(total[frames], firsts)[o].tolist(),
            frame_bytes=np.add.reduceat(caplen[frames], firsts)[o].tolist(),
        )


def _be32(rows: np.ndarray, at: int) -> np.ndarray:
    """Columns at..at+3 of byte rows as big-endian 32-bit numbers."""
    return np.ascontiguousarray(rows[:, at : at + 4]).view(">u4")[:, 0].astype(np.int64)


RunFeed = Callable[[float, float, int, bytes, bytes, int, int, int, int, int], None]


def _feed_run(runs: Runs, r: int, feed_run: RunFeed) -> None:
    feed_run(
        runs.first[r], runs.last[r], runs.proto[r], runs.src[r], runs.dst[r], runs.sport[r], runs.dport[r],
        runs.packets[r], runs.ip_bytes[r], runs.frame_bytes[r],
    )  # fmt: skip
