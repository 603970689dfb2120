"""StreamHead: the first bytes of a TCP direction come out whole whatever the segmentation."""

from hypothesis import given, settings
from hypothesis import strategies as st

from detector.flows.reassembly import MAX_PENDING_SEGMENTS, StreamHead

DATA = bytes(range(256)) * 8  # 2 KiB, like a post-quantum ClientHello


def _segments(data: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    points = sorted({0, len(data), *[c % len(data) for c in cuts]})
    return [(a, data[a:b]) for a, b in zip(points, points[1:])]


def test_in_order_segments_join():
    head = StreamHead(4096, isn=1000)
    assert head.add(1000, DATA[:1000])
    assert head.add(2000, DATA[1000:])
    assert head.bytes() == DATA


def test_out_of_order_segment_waits_for_the_gap():
    head = StreamHead(4096, isn=0)
    assert not head.add(1000, DATA[1000:])
    assert head.bytes() == b""
    assert head.add(0, DATA[:1000])
    assert head.bytes() == DATA


def test_retransmission_and_overlap_keep_first_copy():
    head = StreamHead(4096, isn=0)
    head.add(0, DATA[:600])
    head.add(0, b"X" * 600)  # retransmission with other bytes: ignored
    head.add(500, DATA[500:1500])  # overlaps the end
    assert head.bytes() == DATA[:1500]


def test_sequence_wraps_around_two_to_the_32():
    isn = (1 << 32) - 100
    head = StreamHead(4096, isn=isn)
    head.add(isn, DATA[:100])
    head.add(0, DATA[100:300])  # wrapped
    assert head.bytes() == DATA[:300]


def test_missed_start_rebases_on_an_earlier_segment():
    head = StreamHead(4096)  # no SYN seen
    head.add(5000 + 700, DATA[700:1400])
    head.add(5000, DATA[:700])
    assert head.bytes() == DATA[:1400]


def test_bound_stops_buffering_and_flags_overflow():
    head = StreamHead(1000, isn=0)
    head.add(0, DATA[:1500])
    assert head.overflow
    assert len(head.bytes()) == 1000
    assert not head.add(1500, DATA[1500:])


def test_too_many_pending_segments_overflow():
    head = StreamHead(100_000, isn=0)
    for i in range(MAX_PENDING_SEGMENTS + 1):
        head.add(10 + i * 20, b"x")
    assert head.overflow


def test_consume_moves_the_window():
    head = StreamHead(4096, isn=0)
    head.add(0, DATA[:100])
    head.add(150, DATA[150:200])
    head.consume(60)
    head.add(100, DATA[100:150])
    assert head.bytes() == DATA[60:200]


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(st.integers(0, len(DATA)), max_size=12), order=st.randoms(use_true_random=False),
       dup=st.lists(st.integers(0, 20), max_size=4), isn=st.integers(0, (1 << 32) - 1))
def test_any_segmentation_order_and_duplication_gives_the_same_bytes(cuts, order, dup, isn):
    segs = _segments(DATA, cuts)
    segs += [segs[i % len(segs)] for i in dup]
    order.shuffle(segs)
    head = StreamHead(4096, isn=isn)
    for off, chunk in segs:
        head.add((isn + off) % (1 << 32), chunk)
    assert head.bytes() == DATA
