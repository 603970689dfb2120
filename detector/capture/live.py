"""Live capture from mirror-port interfaces through libpcap (pcapy-ng), with a kernel prefilter
(capture.bulk_filter).

Why libpcap through pcapy-ng rather than a raw AF_PACKET socket of our own: libpcap gives
TPACKET_V3 memory-mapped rings, the BPF compiler for the operator's own filter expressions,
kernel drop counters, and PACKET_FANOUT, all in maintained C; `next_batch` hands Python a
whole batch per call, so the per-packet crossing into Python is one slice, not one object tree.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pcapy

from detector.capture import bulk_filter, cbpf
from detector.capture import fanout_program as fanout
from detector.capture.bulk_filter import BulkFlow

# Packets per `next_batch` call: large enough to amortise the call, small enough that a
# quiet link still delivers promptly (the read timeout below bounds the wait).
BATCH = 512
# libpcap read timeout: how long a quiet interface may hold back a partial batch. Short,
# because the filter learns AI endpoints from ClientHellos and must do so within a round trip.
READ_TIMEOUT_MS = 10
# A window of frames handed on whole (see `read_window`): large enough that most of a
# flow's packets in it fold into one run, small enough to bound memory and delay.
WINDOW_FRAMES = 32_768
WINDOW_BYTES = 16 << 20
WINDOW_SECONDS = 0.25
# linux/if_packet.h: reassemble IPv4 fragments before fanout (and before the filter).
PACKET_FANOUT_FLAG_DEFRAG = 0x8000

# linux/asm-generic/socket.h
SO_ATTACH_FILTER = 26
# linux/sockios.h and linux/ethtool.h: the ethtool ioctl, and what it reads
SIOCETHTOOL = 0x8946
ETHTOOL_GFLAGS, ETHTOOL_GGRO = 0x25, 0x2B
ETH_FLAG_LRO = 1 << 15


class CaptureSetupError(Exception):
    """An interface cannot be opened; the message says what the operator should do."""


@dataclass(slots=True)
class InterfaceStats:
    """Kernel counters of one capture handle (cumulative since it opened)."""

    received: int = 0
    kernel_drops: int = 0
    interface_drops: int = 0


class LiveInterface:
    """One promiscuous capture handle; `read()` returns a batch of frames."""

    def __init__(self, name: str, *, snaplen: int, promiscuous: bool, buffer_mib: int, bpf: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        try:
            cap = pcapy.create(name)
            cap.set_snaplen(snaplen)
            cap.set_promisc(1 if promiscuous else 0)
            cap.set_timeout(READ_TIMEOUT_MS)
            cap.set_buffer_size(buffer_mib << 20)
            status = cap.activate()
        except pcapy.PcapError as exc:
            raise CaptureSetupError(_explain(name, str(exc))) from None
        # pcap_activate(3) reports failure as a negative status, not as an exception.
        if status is not None and status < 0:
            raise CaptureSetupError(_explain(name, _ACTIVATE_ERRORS.get(status, f"pcap_activate failed ({status})")))
        self._cap = cap
        self._closed = False
        self._last = InterfaceStats()
        self.linktype = cap.datalink()
        if bpf:
            self.set_filter(bpf)

    def set_filter(self, expression: str) -> None:
        """Set the operator's own filter, a tcpdump expression, compiled by libpcap for this
        handle. Only at start (the constructor's `bpf`): libpcap attaches a reject-all
        program while it swaps in the new one, and what arrives meanwhile is lost uncounted."""
        try:
            with self._lock:
                self._cap.setfilter(expression)
        except pcapy.PcapError as exc:
            raise CaptureSetupError(f"{self.name}: bad capture filter: {exc}") from None

    def drop_flows(self, flows: Sequence[BulkFlow]) -> int:
        """Make the kernel filter drop the downloads of `flows` (capture.bulk_filter), oldest
        first. The kernel swaps the program atomically: no packet is lost to an update, as
        one is to libpcap's `set_filter`. When the kernel refuses a long program for the
        socket's option memory (net.core.optmem_max, 20 KiB on older kernels), the newest
        flows that fit are kept. Returns how many flows the filter holds."""
        flows = list(flows)
        while True:
            try:
                with self._lock:
                    cbpf.set_program(self._cap.getfd(), socket.SOL_SOCKET, SO_ATTACH_FILTER, bulk_filter.program(flows))
                return len(flows)
            except OSError as exc:
                if exc.errno != errno.ENOMEM or not flows:
                    raise CaptureSetupError(f"{self.name}: kernel refused the bulk filter: {exc.strerror}") from None
                flows = flows[len(flows) // 2 + 1 :]

    def join_fanout(self, group: int) -> None:
        """Share this interface's packets with the other handles of `group`, by client: all
        of a client's flows and DNS reach one handle (see capture.fanout_program).

        The kernel reassembles IPv4 fragments before it chooses (a fanout flag), so a
        fragmented datagram reaches its client's worker whole.
        """
        try:
            self._cap.set_fanout(group, fanout.PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_DEFRAG)
            fanout.attach(self._cap.getfd())
        except (pcapy.PcapError, OSError) as exc:
            raise CaptureSetupError(f"{self.name}: cannot join fanout group {group}: {exc}") from None

    def read(self) -> list[tuple[float, int, bytes]]:
        """Up to BATCH frames, or none after the read timeout on a quiet link."""
        data, meta = self._cap.next_batch(BATCH)
        if not meta:
            return []
        lt = self.linktype
        view = memoryview(meta).cast("I")
        out = []
        for i in range(0, len(view), 4):
            sec, usec, off, caplen = view[i], view[i + 1], view[i + 2], view[i + 3]
            out.append((sec + usec * 1e-6, lt, data[off : off + caplen]))
        return out

    def read_window(self) -> tuple[bytes, bytes] | list:
        """Frames as one `next_batch`-shaped batch (frame bytes, packed records): a read,
        and what else the ring holds, up to WINDOW_FRAMES frames, WINDOW_BYTES or
        WINDOW_SECONDS; [] on a quiet link. For the head selection (flows.heads), which
        folds more of each flow into one run the more of it a batch holds."""
        data, meta = self._cap.next_batch(BATCH)
        if not meta:
            return []
        datas, metas = [data], [meta]
        frames, size = len(meta) // 16, len(data)
        deadline = time.monotonic() + WINDOW_SECONDS
        # Only what the ring already holds joins the window: a read that waits may not
        # come back before the link is busy again, and the frames gathered so far would
        # wait with it.
        blocking = not self._cap.getnonblock()
        if blocking:
            self._cap.setnonblock(1)
        try:
            while frames < WINDOW_FRAMES and size < WINDOW_BYTES and time.monotonic() < deadline:
                data, meta = self._cap.next_batch(BATCH)
                if not meta:
                    break
                datas.append(data)
                metas.append(meta)
                frames += len(meta) // 16
                size += len(data)
        finally:
            if blocking:
                self._cap.setnonblock(0)
        return joined_batches(datas, metas)

    def drain(self, max_batches: int, window: bool = False) -> list:
        """What is still queued in the kernel ring, without waiting for more (at shutdown,
        once the reader thread is gone): frames, or windows with `window`."""
        out: list = []
        try:
            self._cap.setnonblock(1)
            for _ in range(max_batches):
                batch = self.read_window() if window else self.read()
                if not batch:
                    break
                if window:
                    out.append(batch)
                else:
                    out.extend(batch)
        except (pcapy.PcapError, ValueError):
            pass
        return out

    def stats(self) -> InterfaceStats:
        """Kernel counters: packets received, dropped for lack of buffer, dropped by the NIC
        (the last ones read, once the handle is closed)."""
        if not self._closed:
            try:
                recv, drop, ifdrop = self._cap.stats()
                self._last = InterfaceStats(recv, drop, ifdrop)
            except (pcapy.PcapError, ValueError):
                pass
        return self._last

    def close(self) -> None:
        """Release the handle (its counters stay readable)."""
        self.stats()
        self._closed = True
        self._cap.close()


def merged_segments(name: str) -> list[str]:
    """Which of the interface's receive offloads that merge TCP segments before capture are
    on ("GRO", "LRO"); [] when none is, or when the driver does not say."""
    on = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for what, cmd, mask in (("GRO", ETHTOOL_GGRO, 1), ("LRO", ETHTOOL_GFLAGS, ETH_FLAG_LRO)):
            value = ctypes.create_string_buffer(struct.pack("=II", cmd, 0))
            ifreq = struct.pack("=16sQ", name.encode()[:15], ctypes.addressof(value))
            try:
                fcntl.ioctl(sock, SIOCETHTOOL, ifreq)
            except OSError:
                continue  # no such interface, or a driver without this ethtool call
            if struct.unpack_from("=II", value)[1] & mask:
                on.append(what)
    return on


def joined_batches(datas: list[bytes], metas: list[bytes]) -> tuple[bytes, bytes]:
    """Several `next_batch` results as one (each record's offset moved past the frames
    before it)."""
    if len(datas) == 1:
        return datas[0], metas[0]
    records = [np.frombuffer(m, dtype=np.uint32).reshape(-1, 4).copy() for m in metas]
    start = 0
    for data, rec in zip(datas, records):
        rec[:, 2] += start
        start += len(data)
    return b"".join(datas), np.concatenate(records).tobytes()


# pcap_activate(3) negative statuses, phrased as libpcap's own messages (matched below).
_ACTIVATE_ERRORS = {
    -4: "interface is not up",
    -5: "no such device",
    -8: "permission denied",
    -11: "permission denied (promiscuous mode)",
    -12: "timestamp precision not supported",
}


def _explain(name: str, message: str) -> str:
    low = message.lower()
    if "no such device" in low or "doesn't exist" in low:
        return f"interface {name!r} does not exist (see `ip link`; name the mirror-port interface with --interface)"
    if "not up" in low:
        return f"interface {name!r} is down: bring it up (`ip link set {name} up`) and connect the mirror port"
    if "permission" in low or "not permitted" in low:
        who = "root" if os.geteuid() else "this user"
        return (
            f"cannot capture on {name!r}: {who} lacks CAP_NET_RAW/CAP_NET_ADMIN "
            "(run under the shipped systemd unit, or `setcap cap_net_raw,cap_net_admin=eip` on the Python binary)"
        )
    return f"cannot capture on {name!r}: {message}"
