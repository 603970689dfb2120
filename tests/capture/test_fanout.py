"""The fanout program in the kernel: two capture handles in one group on a veth pair in a
network namespace made here, frames of 120 clients sent into the pair (see _fanout_probe);
and the bulk-drop filter with a full list on a live handle: what it drops and what it keeps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from detector.capture import fanout_program as fanout

pytestmark = pytest.mark.root
PROBE = Path(__file__).with_name("_fanout_probe.py")


def _namespace_or_skip() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (`ip`)")
    name = f"sai-fan{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot create a network namespace here: {r.stderr.strip()}")
    return name


def _probe(*args: str, optmem: int | None = None) -> dict:
    ns = _namespace_or_skip()
    try:
        if optmem is not None:
            _lower_optmem_or_skip(ns, optmem)
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=120
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _lower_optmem_or_skip(ns: str, value: int) -> None:
    """Set net.core.optmem_max in the namespace only (a namespace's own since Linux 6.9;
    on an older kernel the write reached the host's, which is put back at once)."""
    host = Path("/proc/sys/net/core/optmem_max")
    before = host.read_text()
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.core.optmem_max={value}"], check=True)
    if host.read_text() != before:
        host.write_text(before)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip("net.core.optmem_max is not per network namespace on this kernel")


@pytest.fixture(scope="module")
def landed() -> dict:
    return _probe()


def test_every_frame_of_a_client_reaches_one_worker_with_its_dns(landed: dict) -> None:
    where = landed["where"]
    assert set(landed["sent"]) <= set(where)
    split = {key: sorted(set(handles)) for key, handles in where.items() if len(set(handles)) > 1}
    assert not split  # lookups, answers (fragmented ones reassembled), TLS and QUIC, both directions


def test_clients_spread_over_the_workers(landed: dict) -> None:
    per_handle = [sum(1 for key, h in landed["where"].items() if "/" not in key and set(h) == {k}) for k in (0, 1)]
    assert min(per_handle) >= 50, per_handle  # 120 clients, sequential addresses


def test_nothing_is_lost_and_fragments_arrive_reassembled(landed: dict) -> None:
    fragmented = sum(1 for c in landed["sent"] if ":" not in c and int(c.rsplit(".", 1)[1]) % 5 == 0)
    received = sum(len(h) for h in landed["where"].values())
    assert received == sum(landed["sent"].values()) - fragmented


def test_program_resolves_every_jump_forward_and_ends_in_a_return() -> None:
    program = fanout.CLIENT_HASH
    assert program[-1][0] == 0x16  # ret a
    for i, (code, jt, jf, k) in enumerate(program):
        if code & 0x07 == 0x05:
            targets = (k,) if code & 0xF0 == 0 else (jt, jf)
            assert all(0 <= t < len(program) - i - 1 for t in targets), i


def _wrong(arrived: dict[str, int], expected_dropped) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {name: n for name, n in arrived.items() if n != (not expected_dropped(name))}


def test_bulk_filter_drops_only_the_listed_downloads_and_keeps_names_handshakes_uploads_and_ends() -> None:
    got = _probe("filters")
    assert got["held"] == got["listed"] and len(got["arrived"]) > 90
    wrong = _wrong(got["arrived"], lambda name: name.startswith("drop"))
    assert not wrong, wrong


def test_bulk_filter_keeps_the_newest_flows_that_fit_when_the_kernel_refuses_a_long_program() -> None:
    # 20 KiB: the default of net.core.optmem_max before Linux 6.9, too little for a full list.
    got = _probe("filters", optmem=20480)
    assert 0 < got["held"] < got["listed"], got["held"]
    # The list is IPv4 then IPv6, oldest first: the last IPv6 flow is still dropped, the
    # first IPv4 flow no more; what must be kept is kept either way.
    arrived = {name: n for name, n in got["arrived"].items() if not name.startswith("drop ipv4 ")}
    wrong = _wrong(arrived, lambda name: name.startswith("drop ipv6"))
    assert not wrong, wrong
    first = [n for name, n in got["arrived"].items() if name.startswith("drop ipv4 first")]
    assert first and all(n == 1 for n in first)
