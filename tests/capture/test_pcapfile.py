"""Tests for detector.capture.pcapfile: every file format variant, truncation, corruption,
gzip, directories, progress, the writers, and a differential check on the real captures."""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import struct
import subprocess
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.capture import CaptureError, PcapNgWriter, PcapWriter, expand_paths, file_size, iter_frames, pcapfile

CAPTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "captures"

TS0 = 1700000000.0  # 2023-11-14T22:13:20Z
FRAMES = [bytes([i]) * (20 + 7 * i) for i in range(6)]  # distinct lengths and contents


def read(path: Path, **kw: object) -> tuple[list[tuple[float, int, bytes]], list[str]]:
    """All frames of a file plus the warnings it produced."""
    warnings: list[str] = []
    return list(iter_frames(path, warnings.append, **kw)), warnings


def write_pcap(path: Path, frames: list[bytes] = FRAMES, **kw: object) -> Path:
    with PcapWriter(path, **kw) as w:
        for i, f in enumerate(frames):
            w.write(TS0 + i + 0.25, f)
    return path


def write_pcapng(path: Path, frames: list[bytes] = FRAMES) -> Path:
    with PcapNgWriter(path) as w:
        w.add_interface(1)
        for i, f in enumerate(frames):
            w.write(TS0 + i + 0.25, f)
    return path


def assert_frames(got: list[tuple[float, int, bytes]], frames: list[bytes], linktype: int = 1) -> None:
    assert [f for _, _, f in got] == frames
    assert {lt for _, lt, _ in got} <= {linktype}
    assert [ts for ts, _, _ in got] == pytest.approx([TS0 + i + 0.25 for i in range(len(frames))], abs=1e-6)


# ---------------------------------------------------------------------------
# pcap variants
# ---------------------------------------------------------------------------


def test_pcap_microsecond_round_trip(tmp_path: Path) -> None:
    got, warnings = read(write_pcap(tmp_path / "a.pcap"))
    assert_frames(got, FRAMES)
    assert warnings == []


def test_pcap_nanosecond_keeps_sub_microsecond_time(tmp_path: Path) -> None:
    p = tmp_path / "ns.pcap"
    with PcapWriter(p, linktype=101, nanosecond=True) as w:
        w.write(1700000000.000000250, b"\x45" + b"\0" * 19)
    [(ts, lt, frame)] = read(p)[0]
    assert lt == 101
    assert ts == 1700000000 + 250 / 1e9
    assert p.read_bytes()[:4] == bytes.fromhex("4d3cb2a1")  # ns magic, little-endian


def test_pcap_big_endian_microsecond_by_hand(tmp_path: Path) -> None:
    p = tmp_path / "be.pcap"
    p.write_bytes(
        bytes.fromhex(
            "a1b2c3d4"  # magic: µs, big-endian
            "0002 0004"  # version 2.4
            "00000000"  # thiszone
            "00000000"  # sigfigs
            "00040000"  # snaplen 262144
            "00000071"  # linktype 113 (Linux SLL)
            "6553f100"  # ts_sec 1700000000
            "0001e240"  # ts_usec 123456
            "00000004"  # caplen 4
            "0000003c"  # orig len 60
            "deadbeef"  # frame
        )
    )
    assert read(p) == ([(1700000000.123456, 113, b"\xde\xad\xbe\xef")], [])


def test_pcap_big_endian_nanosecond_by_hand(tmp_path: Path) -> None:
    p = tmp_path / "bens.pcap"
    p.write_bytes(
        bytes.fromhex(
            "a1b23c4d"  # magic: ns, big-endian
            "0002 0004 00000000 00000000 00040000 00000001"  # v2.4, zone, sigfigs, snaplen, Ethernet
            "6553f100"  # ts_sec 1700000000
            "075bcd15"  # ts_nsec 123456789
            "00000002 00000002"  # caplen 2, len 2
            "abcd"
        )
    )
    assert read(p) == ([(1700000000 + 123456789 / 1e9, 1, b"\xab\xcd")], [])


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcap_kuznetzov_modified_format(tmp_path: Path, order: str) -> None:
    # Modified pcap (magic 0xa1b2cd34): each record header has 8 more bytes
    # (ifindex u32, protocol u16, pkt_type u8, pad u8) before the frame.
    header = struct.pack(order + "IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)
    rec = (
        struct.pack(order + "IIII", 1700000000, 5, 3, 3)  # ts 1700000000.000005, caplen 3, len 3
        + struct.pack(order + "IHBx", 2, 0x0800, 0)  # ifindex 2, protocol IPv4, pkt_type host
        + b"xyz"
    )
    p = tmp_path / "kuz.pcap"
    p.write_bytes(header + rec + rec)
    assert read(p) == ([(1700000000.000005, 1, b"xyz")] * 2, [])


def test_pcap_linktype_fcs_bits_are_masked(tmp_path: Path) -> None:
    p = tmp_path / "fcs.pcap"
    # LinkType field with the F bit (28) and FCS length 2 (bits 26-27): link type is still 1.
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 0x18000001)
    p.write_bytes(header + struct.pack("<IIII", 1, 0, 1, 1) + b"z")
    assert read(p)[0] == [(1.0, 1, b"z")]


def test_pcap_written_by_dpkt(tmp_path: Path) -> None:
    # dpkt writes DLT_RAW's platform value (12), which is passed through as the file says.
    for nano, linktype in ((False, dpkt.pcap.DLT_RAW), (True, 1)):
        p = tmp_path / f"dpkt{nano}.pcap"
        with open(p, "wb") as f:
            w = dpkt.pcap.Writer(f, linktype=linktype, nano=nano)
            for i, frame in enumerate(FRAMES):
                w.writepkt(frame, ts=TS0 + i + 0.25)
        got, warnings = read(p)
        assert_frames(got, FRAMES, linktype)
        assert warnings == []


def test_pcap_and_pcapng_written_by_scapy(tmp_path: Path) -> None:
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap, wrpcapng

    pkts = [Ether(dst="02:00:00:00:00:01") / f for f in FRAMES]
    for i, pkt in enumerate(pkts):
        pkt.time = TS0 + i + 0.25
    wrpcap(str(tmp_path / "s.pcap"), pkts)
    wrpcapng(str(tmp_path / "s.pcapng"), pkts)
    for name in ("s.pcap", "s.pcapng"):
        got, warnings = read(tmp_path / name)
        assert_frames(got, [bytes(pkt) for pkt in pkts])
        assert warnings == []


def test_header_only_pcap_is_valid_and_empty(tmp_path: Path) -> None:
    assert read(write_pcap(tmp_path / "h.pcap", frames=[])) == ([], [])


def test_section_header_only_pcapng_is_valid_and_empty(tmp_path: Path) -> None:
    p = tmp_path / "h.pcapng"
    PcapNgWriter(p).close()
    assert read(p) == ([], [])


def test_frames_are_bytes_even_across_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = [bytes([i % 251]) * (1 + (i * 131) % 1500) for i in range(300)]
    plain = write_pcap(tmp_path / "big.pcap", frames)
    ng = write_pcapng(tmp_path / "big.pcapng", frames)
    gz = tmp_path / "big.pcapng.gz"
    gz.write_bytes(gzip.compress(ng.read_bytes()))
    for chunk in (7, 64, 1000, 4096):
        monkeypatch.setattr(pcapfile, "CHUNK", chunk)
        monkeypatch.setattr(pcapfile, "GZIP_CHUNK", chunk)
        for p in (plain, ng, gz):
            got, warnings = read(p)
            assert_frames(got, frames)
            assert all(type(f) is bytes for _, _, f in got)
            assert warnings == []


# ---------------------------------------------------------------------------
# pcapng variants
# ---------------------------------------------------------------------------


def test_pcapng_minimal_big_endian_by_hand(tmp_path: Path) -> None:
    p = tmp_path / "be.pcapng"
    p.write_bytes(
        bytes.fromhex(
            # Section Header Block
            "0a0d0d0a"  # block type SHB
            "0000001c"  # total length 28
            "1a2b3c4d"  # byte-order magic read big-endian
            "0001 0000"  # version 1.0
            "ffffffffffffffff"  # section length unknown
            "0000001c"  # total length again
            # Interface Description Block
            "00000001"  # block type IDB
            "00000014"  # total length 20
            "0065 0000"  # linktype 101 (raw IP), reserved
            "00000000"  # snaplen: none
            "00000014"
            # Enhanced Packet Block
            "00000006"  # block type EPB
            "00000024"  # total length 36
            "00000000"  # interface 0
            "00060a24 18202240"  # timestamp 1700000000123456 µs (default if_tsresol)
            "00000003 00000003"  # caplen 3, orig len 3
            "450000 00"  # frame + 1 byte padding
            "00000024"
        )
    )
    assert read(p) == ([(1700000000.123456, 101, b"\x45\x00\x00")], [])


def _three_interface_two_section_file(path: Path) -> list[tuple[float, int, bytes]]:
    """Write a pcapng with a little-endian section (3 interfaces: 1, 113, 101; µs, ns, 2^-10 s
    with an offset) and a big-endian section; return the frames a reader should give."""
    with PcapNgWriter(path) as w:
        eth = w.add_interface(1)
        sll = w.add_interface(113, tsresol=9)
        raw = w.add_interface(101, tsresol=0x80 | 10, tsoffset=1000)
        w.write(TS0 + 0.5, b"eth-1", eth)
        w.write(TS0 + 0.000123457, b"sll-1", sll)  # needs ns: not a whole µs
        w.write_block(5, struct.pack("<III", 0, 0, 0))  # Interface Statistics Block: skipped
        w.write(TS0 + 1000.25, b"raw-1", raw)
        w.write_block(0x00000BAD, b"\x00\x00\x7e\x3c" + b"vendor data")  # Custom Block: skipped
        w.write(TS0 + 2.0, b"eth-2", eth)
        w.new_section(">")
        w.add_interface(101, tsresol=3)
        w.add_interface(1)
        w.write(TS0 + 3.5, b"raw-2", 0)
        w.write(TS0 + 4.0, b"eth-3", 1)
    return [
        (TS0 + 0.5, 1, b"eth-1"),
        (TS0 + 0.000123457, 113, b"sll-1"),
        (TS0 + 1000.25, 101, b"raw-1"),
        (TS0 + 2.0, 1, b"eth-2"),
        (TS0 + 3.5, 101, b"raw-2"),
        (TS0 + 4.0, 1, b"eth-3"),
    ]


def test_pcapng_interfaces_link_types_resolutions_and_sections(tmp_path: Path) -> None:
    p = tmp_path / "multi.pcapng"
    want = _three_interface_two_section_file(p)
    got, warnings = read(p)
    assert warnings == []
    assert [(lt, f) for _, lt, f in got] == [(lt, f) for _, lt, f in want]
    assert [ts for ts, _, _ in got] == pytest.approx([ts for ts, _, _ in want], abs=1e-9, rel=0)


# Wireshark's WTAP_ENCAP numbers for the link types used here (tshark prints those, not LINKTYPEs).
WTAP_ENCAP = {1: 1, 113: 25, 101: 7}


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_pcapng_multi_interface_file_matches_tshark(tmp_path: Path) -> None:
    p = tmp_path / "multi.pcapng"
    _three_interface_two_section_file(p)
    out = subprocess.run(
        ["tshark", "-r", str(p), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.encap_type"],
        capture_output=True, text=True, check=True,
    ).stdout
    # tshark also lists the Custom Block as a record without fields; it carries no packet.
    ref = [(float(ts), int(enc)) for ts, enc in (line.split("\t") for line in out.splitlines()) if ts]
    got = read(p)[0]
    assert [WTAP_ENCAP[lt] for _, lt, _ in got] == [enc for _, enc in ref]
    assert [ts for ts, _, _ in got] == pytest.approx([ts for ts, _ in ref], abs=1e-6, rel=0)


def test_pcapng_simple_packet_block_uses_interface_0_and_last_timestamp(tmp_path: Path) -> None:
    p = tmp_path / "spb.pcapng"
    with PcapNgWriter(p) as w:
        w.add_interface(113, snaplen=4)
        w.add_interface(1)
        w.write_block(pcapfile.BT_SPB, struct.pack("<I", 2) + b"ab")  # before any timestamp
        w.write(TS0 + 7.0, b"epb", 1)
        w.write_block(pcapfile.BT_SPB, struct.pack("<I", 6) + b"abcd")  # orig 6, cut to snaplen 4
    assert read(p) == ([(0.0, 113, b"ab"), (TS0 + 7.0, 1, b"epb"), (TS0 + 7.0, 113, b"abcd")], [])


def test_pcapng_obsolete_packet_block(tmp_path: Path) -> None:
    p = tmp_path / "pb.pcapng"
    with PcapNgWriter(p, byteorder=">") as w:
        w.add_interface(1)
        w.add_interface(101, tsresol=0)
        # Packet Block: interface u16, drops u16, ts high, ts low, caplen, orig len, data
        w.write_block(pcapfile.BT_PB, struct.pack(">HHIIII", 1, 0, 0, 1700000000, 3, 3) + b"old")
    assert read(p) == ([(1700000000.0, 101, b"old")], [])


def test_pcapng_timestamp_offset_is_added(tmp_path: Path) -> None:
    p = tmp_path / "off.pcapng"
    with PcapNgWriter(p) as w:
        w.add_interface(1, tsoffset=1_600_000_000)
        w.write(1_600_000_012.5, b"x")
    # 12.5 s stored as 12500000 µs; the reader adds the offset back.
    assert struct.unpack_from("<II", p.read_bytes(), len(p.read_bytes()) - 24)[1] == 12_500_000
    assert read(p)[0] == [(1_600_000_012.5, 1, b"x")]


# ---------------------------------------------------------------------------
# gzip
# ---------------------------------------------------------------------------


def test_gzip_detected_by_magic_not_by_name(tmp_path: Path) -> None:
    plain = write_pcap(tmp_path / "plain.pcap")
    disguised = tmp_path / "really-gzip.pcap"
    disguised.write_bytes(gzip.compress(plain.read_bytes()))
    not_gz = tmp_path / "not-gzip.pcap.gz"
    not_gz.write_bytes(plain.read_bytes())
    ng_gz = tmp_path / "x.pcapng.gz"
    ng_gz.write_bytes(gzip.compress(write_pcapng(tmp_path / "x.pcapng").read_bytes()))
    for p in (disguised, not_gz, ng_gz):
        got, warnings = read(p)
        assert_frames(got, FRAMES)
        assert warnings == []


def test_gzip_with_several_members_is_read_to_the_end(tmp_path: Path) -> None:
    data = write_pcap(tmp_path / "a.pcap").read_bytes()
    p = tmp_path / "multi.pcap.gz"
    p.write_bytes(gzip.compress(data[:50]) + gzip.compress(data[50:100]) + gzip.compress(data[100:]))
    assert_frames(read(p)[0], FRAMES)


def test_truncated_gzip_stream_yields_what_it_has_and_warns(tmp_path: Path) -> None:
    data = write_pcap(tmp_path / "a.pcap").read_bytes()
    whole = gzip.compress(data)
    p = tmp_path / "cut.pcap.gz"
    p.write_bytes(whole[:-8])  # CRC and size trailer missing: all data there, stream unfinished
    got, warnings = read(p)
    assert_frames(got, FRAMES)
    assert warnings == [f"{p}: truncated after {len(FRAMES)} packets (gzip stream ends early)"]


def test_corrupt_gzip_data_is_an_error_at_the_start(tmp_path: Path) -> None:
    p = tmp_path / "bad.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 40)
    with pytest.raises(CaptureError, match=r"bad\.gz: corrupt gzip data"):
        iter_frames(p)


def test_gzip_of_a_non_capture_names_the_inner_magic(tmp_path: Path) -> None:
    p = tmp_path / "notes.gz"
    p.write_bytes(gzip.compress(b"Hello world"))
    with pytest.raises(CaptureError, match=r"magic 0x48656c6c after gzip decompression"):
        iter_frames(p)


# ---------------------------------------------------------------------------
# Truncation and corruption
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_cut_anywhere_in_the_last_record_gives_the_complete_packets_and_a_warning(tmp_path: Path, fmt: str) -> None:
    src = write_pcap(tmp_path / "full.pcap") if fmt == "pcap" else write_pcapng(tmp_path / "full.pcapng")
    data = src.read_bytes()
    last = 16 + len(FRAMES[-1]) if fmt == "pcap" else 32 + ((len(FRAMES[-1]) + 3) & ~3)
    start = len(data) - last
    cut = tmp_path / f"cut.{fmt}"
    for size in range(start + 1, len(data)):
        cut.write_bytes(data[:size])
        got, warnings = read(cut)
        assert_frames(got, FRAMES[:-1])
        assert warnings == [
            f"{cut}: truncated after {len(FRAMES) - 1} packets ({size - start} bytes of a partial record)"
        ]
    cut.write_bytes(data[:start])  # cut exactly between records: complete, nothing to say
    assert read(cut)[1] == []


def test_truncated_gzip_inside_a_record_warns_with_the_partial_size(tmp_path: Path) -> None:
    data = write_pcap(tmp_path / "a.pcap").read_bytes()
    p = tmp_path / "a.pcap.gz"
    p.write_bytes(gzip.compress(data[:-3]))
    got, warnings = read(p)
    assert_frames(got, FRAMES[:-1])
    partial = 16 + len(FRAMES[-1]) - 3
    assert warnings == [f"{p}: truncated after 5 packets ({partial} bytes of a partial record)"]


def test_absurd_pcap_caplen_stops_with_a_named_warning(tmp_path: Path) -> None:
    p = write_pcap(tmp_path / "a.pcap", FRAMES[:2])
    with open(p, "ab") as f:
        f.write(struct.pack("<IIII", 1, 0, 0x7FFFFFFF, 60) + b"\0" * 100)
    got, warnings = read(p)
    assert_frames(got, FRAMES[:2])
    assert warnings == [
        f"{p}: corrupt record length (caplen 2147483647 > 262144) after 2 packets; rest of file skipped"
    ]


def test_caplen_just_over_the_limit_is_corrupt_even_when_the_bytes_are_there(tmp_path: Path) -> None:
    p = tmp_path / "big.pcap"
    with PcapWriter(p) as w:
        w.write(TS0, b"\0" * pcapfile.MAX_CAPLEN)
        w.write(TS0, b"\0" * (pcapfile.MAX_CAPLEN + 1))
    got, warnings = read(p)
    assert len(got) == 1 and len(got[0][2]) == pcapfile.MAX_CAPLEN
    assert "caplen 262145 > 262144" in warnings[0]


@pytest.mark.parametrize(
    ("block", "why"),
    [
        # EPB whose caplen runs past the end of its own block
        (
            struct.pack("<IIIIIII", 6, 36, 0, 0, 0, 100, 100) + b"\0" * 4 + struct.pack("<I", 36),
            "caplen 100 overruns a 36-byte block",
        ),
        # EPB on interface 3 of a section with one interface
        (
            struct.pack("<IIIIIII", 6, 36, 3, 0, 0, 4, 4) + b"\0" * 4 + struct.pack("<I", 36),
            "undefined interface 3",
        ),
        # block length not a multiple of 4
        (struct.pack("<II", 5, 13) + b"\0" * 5, "block type 0x5, length 13"),
        # block length shorter than a block header
        (struct.pack("<II", 6, 8) + b"\0" * 8, "block type 0x6, length 8"),
        # second section header with a bad byte-order magic
        (
            struct.pack("<II", 0x0A0D0D0A, 28) + b"\x11\x22\x33\x44" + b"\0" * 16,
            "byte-order magic 0x11223344",
        ),
    ],
)
def test_corrupt_pcapng_block_stops_with_a_named_warning(tmp_path: Path, block: bytes, why: str) -> None:
    p = write_pcapng(tmp_path / "a.pcapng", FRAMES[:3])
    with open(p, "ab") as f:
        f.write(block + p.read_bytes()[:64])
    got, warnings = read(p)
    assert_frames(got, FRAMES[:3])
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{p}: corrupt") and why in warnings[0]
    assert warnings[0].endswith("after 3 packets; rest of file skipped")


# ---------------------------------------------------------------------------
# Files that are not captures
# ---------------------------------------------------------------------------


def test_non_capture_file_raises_before_iteration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("Hello, this is not a capture\n")
    with pytest.raises(CaptureError) as e:
        iter_frames(Path("notes.txt"))  # raised by the call itself, not by the first next()
    assert str(e.value) == "notes.txt: not a pcap or pcapng file (magic 0x48656c6c)"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"\xd4\xc3", "not a pcap or pcapng file (2 bytes)"),
        (bytes.fromhex("d4c3b2a1 0200 0400"), "truncated pcap file header (8 of 24 bytes)"),
        (bytes.fromhex("0a0d0d0a 1c000000 12345678 0100 0000"), "pcapng byte-order magic 0x12345678"),
        (bytes.fromhex("0a0d0d0a 1c000000 4d3c2b1a 0200 0000"), "unsupported pcapng version 2"),
        (bytes.fromhex("0a0d0d0a 1c00"), "truncated pcapng section header (6 bytes)"),
    ],
)
def test_unusable_files_raise_one_line_errors_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "f.pcap"
    p.write_bytes(content)
    with pytest.raises(CaptureError) as e:
        iter_frames(p)
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_directory_raise_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="nope.pcap: No such file"):
        iter_frames(tmp_path / "nope.pcap")
    with pytest.raises(CaptureError, match="Is a directory"):
        iter_frames(tmp_path)
    with pytest.raises(CaptureError, match="nope.pcap"):
        file_size(tmp_path / "nope.pcap")


# ---------------------------------------------------------------------------
# Directories, progress, writers
# ---------------------------------------------------------------------------


def test_expand_paths_finds_captures_recursively_in_order(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "sub" / "deeper").mkdir(parents=True)
    pcap = write_pcap(tmp_path / "src.pcap").read_bytes()
    names = ("b.pcap", "a.pcapng", "sub/c.cap", "sub/deeper/e.pcap.gz", "sub/f.dmp", "g.PCAP", "sub/h.pcapng.gz")
    for name in names:
        (d / name).write_bytes(pcap)
    (d / "noext").write_bytes(pcap)  # no suffix, pcap magic: a capture
    (d / "noextgz").write_bytes(gzip.compress(pcap))  # no suffix, gzipped pcap
    (d / "README").write_text("not a capture")
    (d / "notes.txt").write_bytes(pcap)  # a suffix that is not ours: skipped in directories
    (d / ".hidden").write_text("x")
    single = d / "notes.txt"
    got = expand_paths([single, d])
    assert got[0] == single  # files as given, whatever their name
    assert [p.relative_to(d).as_posix() for p in got[1:]] == [
        "a.pcapng",
        "b.pcap",
        "g.PCAP",
        "noext",
        "noextgz",
        "sub/c.cap",
        "sub/deeper/e.pcap.gz",
        "sub/f.dmp",
        "sub/h.pcapng.gz",
    ]
    with pytest.raises(CaptureError, match="missing: no such file or directory"):
        expand_paths([d, tmp_path / "missing"])


def test_progress_reports_every_file_byte_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcapfile, "CHUNK", 1000)
    frames = [b"\1" * 500] * 40
    p = write_pcap(tmp_path / "a.pcap", frames)
    calls: list[int] = []
    assert len(list(iter_frames(p, progress=calls.append))) == 40
    assert sum(calls) == file_size(p) == 24 + 40 * 516
    assert max(calls) <= 1000 and len(calls) == -(-file_size(p) // 1000)


def test_progress_counts_compressed_bytes_for_gzip(tmp_path: Path) -> None:
    p = tmp_path / "a.pcap.gz"
    p.write_bytes(gzip.compress(write_pcap(tmp_path / "a.pcap").read_bytes()))
    calls: list[int] = []
    list(iter_frames(p, progress=calls.append))
    assert sum(calls) == file_size(p)


def test_writers_accept_file_objects_and_leave_them_open() -> None:
    buf = io.BytesIO()
    with PcapWriter(buf, linktype=113) as w:
        w.write(TS0, b"abc", orig_len=60)
    assert not buf.closed
    r = dpkt.pcap.Reader(io.BytesIO(buf.getvalue()))
    assert r.datalink() == 113 and list(r) == [(TS0, b"abc")]


def test_pcapng_writer_output_reads_in_dpkt(tmp_path: Path) -> None:
    p = write_pcapng(tmp_path / "a.pcapng")
    with open(p, "rb") as f:
        assert [buf for _, buf in dpkt.pcapng.Reader(f)] == FRAMES


def test_frames_can_be_abandoned_midway(tmp_path: Path) -> None:
    frames = iter_frames(write_pcap(tmp_path / "a.pcap"))
    assert next(frames)[2] == FRAMES[0]
    frames.close()  # closes the file; nothing left open or raised


# ---------------------------------------------------------------------------
# Property tests: broken input never raises anything but CaptureError
# ---------------------------------------------------------------------------

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
PCAPNG_HEADER = bytes.fromhex("0a0d0d0a 1c000000 4d3c2b1a 0100 0000 ffffffffffffffff 1c000000")
PCAPNG_IDB = bytes.fromhex("01000000 20000000 0100 0000 00000000 0900 0100 09000000 00000000 20000000")


def _read_bytes_safely(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "fuzz"
    p.write_bytes(data)
    try:
        for ts, lt, frame in iter_frames(p, lambda m: None):
            assert isinstance(ts, float) and isinstance(lt, int) and isinstance(frame, bytes)
            assert len(frame) <= pcapfile.MAX_CAPLEN
    except CaptureError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    head=st.sampled_from([PCAP_HEADER, PCAPNG_HEADER, PCAPNG_HEADER + PCAPNG_IDB, b"\x1f\x8b", b""]),
    tail=st.binary(max_size=600),
)
def test_random_bytes_after_a_valid_header_never_raise_other_errors(tmp_path: Path, head: bytes, tail: bytes) -> None:
    _read_bytes_safely(tmp_path, head + tail)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_valid_files_never_raise_other_errors(tmp_path: Path, data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(_FUZZ_SEEDS))
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _read_bytes_safely(tmp_path, bytes(raw[:cut]))


def _fuzz_seeds() -> list[bytes]:
    out = []
    buf = io.BytesIO()
    with PcapWriter(buf) as w:
        for i, f in enumerate(FRAMES[:3]):
            w.write(TS0 + i, f)
    out.append(buf.getvalue())
    buf = io.BytesIO()
    with PcapNgWriter(buf) as w:
        w.add_interface(1)
        w.add_interface(113, tsresol=0x8A, tsoffset=5)
        w.write(TS0, FRAMES[0], 0)
        w.write_block(pcapfile.BT_SPB, struct.pack("<I", 3) + b"spb")
        w.write(TS0, FRAMES[1], 1)
        w.new_section(">")
        w.add_interface(101)
        w.write_block(pcapfile.BT_PB, struct.pack(">HHIIII", 0, 0, 0, 1, 2, 2) + b"pb")
        w.write(TS0, FRAMES[2], 0)
    out.append(buf.getvalue())
    out.append(gzip.compress(out[0]))
    return out


_FUZZ_SEEDS = _fuzz_seeds()


# ---------------------------------------------------------------------------
# Differential check on the real captures
# ---------------------------------------------------------------------------


def _manifest() -> dict[str, int]:
    path = CAPTURES / "MANIFEST.tsv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row["file"]: int(row["packets"]) for row in csv.DictReader(f, delimiter="\t")}


MANIFEST = _manifest()


@pytest.mark.skipif(not MANIFEST, reason=f"real captures not found in {CAPTURES}")
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_real_capture_matches_manifest_and_reference_readers(name: str) -> None:
    from scapy.utils import RawPcapNgReader, RawPcapReader

    path = CAPTURES / name
    got, warnings = read(path)
    assert warnings == []
    assert len(got) == MANIFEST[name]
    if path.read_bytes()[:4] == pcapfile.PCAPNG_MAGIC:  # some names lie: judge by magic
        ref = [
            (((m.tshigh << 32) | m.tslow) / m.tsresol, m.linktype, d) for d, m in RawPcapNgReader(str(path))
        ]
        assert [(lt, f) for _, lt, f in got] == [(lt, f) for _, lt, f in ref]
        assert [ts for ts, _, _ in got] == pytest.approx([ts for ts, _, _ in ref], abs=1e-6, rel=0)
    else:
        with open(path, "rb") as f:
            r = dpkt.pcap.Reader(f)
            ref = [(ts, r.datalink(), buf) for ts, buf in r]
        assert got == ref  # timestamps, link type and bytes all identical
        assert [f for _, _, f in got] == [d for d, _ in RawPcapReader(str(path))]


@pytest.mark.skipif(not MANIFEST, reason=f"real captures not found in {CAPTURES}")
def test_real_captures_read_the_same_through_gzip(tmp_path: Path) -> None:
    for name in ("encap/zeek__ldap__gap-data-missing.pcapng", "negative/ndpi__teams.pcap"):
        plain = CAPTURES / name
        gz = tmp_path / (plain.name + ".gz")
        gz.write_bytes(gzip.compress(plain.read_bytes()))
        assert read(gz) == read(plain)
