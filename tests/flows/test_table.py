"""FlowTable: direction, counters, timeouts on packet time, eviction at the bound."""

from detector.flows.table import FlowTable
from detector.model import ACK, FIN, SYN, TCP, UDP, EndReason, L4Packet

C, S = bytes([10, 10, 1, 5]), bytes([104, 18, 32, 47])


def pkt(ts, src, dst, sport, dport, size=100, flags=ACK, proto=TCP, payload=b""):
    return L4Packet(ts, src, dst, proto, sport, dport, size, flags if proto == TCP else 0, 0, payload)


def test_syn_sender_is_the_client_even_on_a_high_port():
    t = FlowTable()
    flow, up = t.observe(pkt(0, S, C, 50000, 60000, flags=SYN))
    assert up and flow.client == S and flow.cport == 50000


def test_synack_receiver_is_the_client_when_the_syn_was_missed():
    t = FlowTable()
    flow, up = t.observe(pkt(0, S, C, 443, 51000, flags=SYN | ACK))
    assert not up and flow.client == C and flow.sport == 443


def test_mid_flow_start_uses_the_well_known_port():
    t = FlowTable()
    flow, up = t.observe(pkt(0, S, C, 443, 51000))
    assert not up and flow.client == C and not flow.saw_start


def test_bytes_and_packets_are_counted_per_direction():
    t = FlowTable()
    t.observe(pkt(0, C, S, 51000, 443, 60, SYN))
    t.observe(pkt(0.1, S, C, 443, 51000, 60, SYN | ACK))
    t.observe(pkt(0.2, C, S, 51000, 443, 1500))
    rec = t.drain()[0]
    assert (rec.bytes_up, rec.bytes_down, rec.packets) == (1560, 60, 3)
    assert rec.reason is EndReason.EOF


def test_idle_flows_end_on_packet_time():
    t = FlowTable(idle_timeout=30)
    t.observe(pkt(0, C, S, 51000, 443))
    t.observe(pkt(31, C, S, 51001, 443))  # another flow advances the clock
    t.observe(pkt(32, C, S, 51001, 443))
    ended = t.take()
    assert [r.client_port for r in ended] == [51000]
    assert ended[0].reason is EndReason.IDLE


def test_fin_exchange_ends_after_the_linger():
    t = FlowTable(linger=5)
    t.observe(pkt(0, C, S, 51000, 443, flags=FIN | ACK))
    t.observe(pkt(0.1, S, C, 443, 51000, flags=FIN | ACK))
    t.observe(pkt(0.2, C, S, 51000, 443))  # last ACK stays in the same flow
    t.observe(pkt(10, C, S, 51002, 443))
    ended = t.take()
    assert len(ended) == 1 and ended[0].reason is EndReason.FIN and ended[0].packets == 3


def test_active_timeout_reports_a_long_flow_in_pieces():
    t = FlowTable(active_timeout=60, idle_timeout=1000)
    for i in range(0, 150, 10):
        t.observe(pkt(i, C, S, 51000, 443, 100))
    pieces = t.take() + t.drain()
    assert [r.reason for r in pieces] == [EndReason.ACTIVE, EndReason.ACTIVE, EndReason.EOF]
    assert sum(r.bytes_up for r in pieces) == 1500


def test_table_bound_evicts_least_recent_and_counts_it():
    t = FlowTable(max_flows=100)
    for i in range(250):
        t.observe(pkt(i * 0.001, C, S, 10000 + i, 443))
    assert len(t) == 100 and t.evicted == 150
    assert all(r.reason is EndReason.EVICTED for r in t.take())


def test_time_going_backwards_is_clamped():
    t = FlowTable(idle_timeout=30)
    t.observe(pkt(100, C, S, 51000, 443))
    flow, _ = t.observe(pkt(50, C, S, 51000, 443))
    assert flow.last_ts == 100


def test_udp_first_sender_is_client_towards_a_known_port():
    t = FlowTable()
    flow, up = t.observe(pkt(0, C, S, 55555, 443, proto=UDP))
    assert up and flow.sport == 443 and flow.transport == "udp"
