"""The kernel filter of the live capture, compiled by libpcap and run on frames the
project's own builders write: what the bulk list drops, and that a full list fits."""

from __future__ import annotations

import pcapy

from detector.capture.live import MAX_BPF_INSNS, MAX_FILTER_FLOWS, prefilter
from detector.synth import builders as b
from detector.synth.path import Path

CLIENT, SERVER, RESOLVER = "10.20.1.10", "104.18.0.77", "10.10.0.53"


def _admits(expression: str, frame: bytes) -> bool:
    return pcapy.compile(pcapy.DLT_EN10MB, 65535, expression, 1, 0).filter(frame) != 0


def _path(server: str, **kw) -> Path:
    return Path(b.ip_bytes(CLIENT), b.ip_bytes(server), **kw)


def _frames(**kw) -> dict[str, bytes]:
    """One frame of each kind the filter tells apart."""
    dns = _path(RESOLVER, **kw)
    web = _path(SERVER, **kw)
    return {
        "dns query": dns.udp(True, 53000, 53, b.dns_query(7, "chatgpt.com", 1)),
        "tls download": web.tcp_frame(False, 443, 51000, 1000, 2000, 0x18, 501, b"\x17\x03\x03" + bytes(200)),
        "tls syn": web.tcp_frame(True, 51000, 443, 1, 0, 0x02, 64240, b""),
    }


def test_bulk_flow_loses_only_its_downloads_and_other_flows_keep_theirs() -> None:
    frames = _frames()
    expression = prefilter([(SERVER, 443, CLIENT, 51000)])
    assert not _admits(expression, frames["tls download"])
    assert _admits(expression, frames["tls syn"]) and _admits(expression, frames["dns query"])
    other = prefilter([(SERVER, 443, CLIENT, 51001)])
    assert _admits(other, frames["tls download"])


def test_no_bulk_flows_means_no_filter_and_a_full_list_compiles_within_the_instruction_limit() -> None:
    assert prefilter() == ""
    many = [(f"2001:db8::{i:x}", 443, "2001:db8:1::10", 40000 + i) for i in range(MAX_FILTER_FLOWS)]
    program = pcapy.compile(pcapy.DLT_EN10MB, 65535, prefilter(many), 1, 0)
    assert len(program.get_bpf()) <= MAX_BPF_INSNS
