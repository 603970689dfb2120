"""The kernel filters of the live capture, compiled by libpcap and run on frames the
project's own builders write: what each fanout share admits, and what the bulk list drops."""

from __future__ import annotations

import pcapy
import pytest

from detector.capture.live import MAX_BPF_INSNS, MAX_FILTER_FLOWS, prefilter
from detector.synth import builders as b
from detector.synth.path import Path

CLIENT, SERVER, RESOLVER = "10.20.1.10", "104.18.0.77", "10.10.0.53"


def _admits(expression: str, frame: bytes) -> bool:
    return pcapy.compile(pcapy.DLT_EN10MB, 65535, expression, 1, 0).filter(frame) != 0


def _path(server: str, **kw) -> Path:
    return Path(b.ip_bytes(CLIENT), b.ip_bytes(server), **kw)


def _frames(**kw) -> dict[str, bytes]:
    """One frame of each kind that the shares tell apart."""
    dns = _path(RESOLVER, **kw)
    web = _path(SERVER, **kw)
    answer = b.dns_response(7, "chatgpt.com", 1, [("chatgpt.com", 1, 60, f"104.18.0.{i}") for i in range(1, 111)])
    src, dst = dns.ends(False)
    first, rest = b.ipv4_fragments(src, dst, b.UDP_PROTO, b.udp(src, dst, 53, 53000, answer), mtu=1500, ident=9)
    return {
        "dns query": dns.udp(True, 53000, 53, b.dns_query(7, "chatgpt.com", 1)),
        "dns answer, first fragment": dns.frame_ip(False, first),
        "dns answer, later fragment": dns.frame_ip(False, rest),
        "tls download": web.tcp_frame(False, 443, 51000, 1000, 2000, 0x18, 501, b"\x17\x03\x03" + bytes(200)),
        "tls syn": web.tcp_frame(True, 51000, 443, 1, 0, 0x02, 64240, b""),
    }


@pytest.mark.parametrize("tags", [{}, {"vlan": 120}], ids=["untagged", "vlan"])
def test_dns_share_takes_dns_and_every_fragment_and_nothing_else(tags: dict) -> None:
    dns_share, data_share = prefilter(share="dns"), prefilter(share="not-dns")
    want_dns = {"dns query", "dns answer, first fragment", "dns answer, later fragment"}
    for kind, frame in _frames(**tags).items():
        assert _admits(dns_share, frame) == (kind in want_dns), kind
        # Later fragments carry no port: the data share's kernel reassembly owns them there.
        assert _admits(data_share, frame) == (kind not in {"dns query", "dns answer, first fragment"}), kind


def test_bulk_flow_loses_only_its_downloads_and_other_flows_keep_theirs() -> None:
    frames = _frames()
    expression = prefilter([(SERVER, 443, CLIENT, 51000)], share="all")
    assert not _admits(expression, frames["tls download"])
    assert _admits(expression, frames["tls syn"]) and _admits(expression, frames["dns query"])
    other = prefilter([(SERVER, 443, CLIENT, 51001)], share="all")
    assert _admits(other, frames["tls download"])


def test_no_bulk_flows_means_no_filter_and_a_full_list_fits_the_kernel() -> None:
    assert prefilter(share="all") == ""
    many = [(f"2001:db8::{i:x}", 443, "2001:db8:1::10", 40000 + i) for i in range(MAX_FILTER_FLOWS)]
    for share in ("all", "not-dns"):
        program = pcapy.compile(pcapy.DLT_EN10MB, 65535, prefilter(many, share=share), 1, 0)
        assert len(program.get_bpf()) <= MAX_BPF_INSNS, share
