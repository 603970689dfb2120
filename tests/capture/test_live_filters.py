"""The bulk-drop filter's program, as assembled for the kernel (what it drops and keeps is
tested in the kernel itself: test_fanout.py), and the assembler's own checks."""

from __future__ import annotations

import pytest

from detector.capture import bulk_filter, cbpf
from detector.synth import builders as b


def _flows(n: int, v6: bool) -> list[tuple[bytes, int, bytes, int]]:
    if v6:
        return [(b.ip_bytes(f"2001:db8::{i:x}"), 443, b.ip_bytes("2001:db8:1::10"), 40000 + i) for i in range(n)]
    client = b.ip_bytes("10.20.1.10")
    return [(b.ip_bytes(f"104.18.{i // 250}.{i % 250 + 1}"), 443, client, 40000 + i) for i in range(n)]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_full_list_of_either_family_fits_the_kernel_and_one_more_third_of_ipv6_does_not(v6: bool) -> None:
    program = bulk_filter.program(_flows(bulk_filter.MAX_FILTER_FLOWS, v6))
    assert len(program) <= cbpf.MAX_INSNS
    if v6:
        with pytest.raises(ValueError, match="exceeds"):
            bulk_filter.program(_flows(bulk_filter.MAX_FILTER_FLOWS * 4 // 3, v6))


def test_each_flow_costs_seven_instructions_for_ipv4_and_nineteen_for_ipv6() -> None:
    empty = len(bulk_filter.program([]))
    assert len(bulk_filter.program(_flows(10, False))) - len(bulk_filter.program(_flows(1, False))) == 9 * 7
    assert len(bulk_filter.program(_flows(10, True))) - len(bulk_filter.program(_flows(1, True))) == 9 * 19
    assert empty < 16


def test_an_empty_list_keeps_every_packet_whole() -> None:
    returns = {k for code, _, _, k in bulk_filter.program([]) if code == cbpf.RET | cbpf.K}
    assert returns == {cbpf.KEEP}


def test_the_same_flows_in_any_order_make_the_same_program() -> None:
    flows = _flows(5, False) + _flows(5, True)
    assert bulk_filter.program(flows) == bulk_filter.program(list(reversed(flows)) + flows[:2])


def test_assembler_refuses_a_conditional_jump_beyond_255_instructions_and_a_backward_one() -> None:
    far = [(cbpf.JMP | cbpf.JEQ | cbpf.K, 1, "end", None), *[(cbpf.LD | cbpf.IMM, 0, None, None)] * 256, "end",
           (cbpf.RET | cbpf.K, 0, None, None)]  # fmt: skip
    with pytest.raises(ValueError, match="out of range"):
        cbpf.assemble(far)
    assert len(cbpf.assemble(far[:1] + far[2:])) == 257
    with pytest.raises(ValueError, match="out of range"):
        cbpf.assemble(["top", (cbpf.JMP | cbpf.JA, 0, "top", None)])


def test_bulk_list_keeps_the_newest_flows_and_shrinks_to_what_the_kernel_took() -> None:
    from detector.daemon import BulkFlows

    flows = _flows(6, False)
    bulk = BulkFlows(limit=4)
    for f in flows:
        bulk.add(f)
    assert bulk.flows() == flows[2:] and bulk.changed
    bulk.shrink(2)
    assert bulk.flows() == flows[4:] and bulk.limit == 2
    bulk.changed = False
    bulk.discard(flows[0])
    assert not bulk.changed
    bulk.discard(flows[5])
    assert bulk.changed and bulk.flows() == flows[4:5]
