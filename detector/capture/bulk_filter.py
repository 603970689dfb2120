"""The sensor's own kernel prefilter ("auto"): a classic BPF socket filter that drops the
downloads of known bulk flows before they reach Python.

It drops only what is proven useless: the server->client data segments (TCP without
SYN/FIN/RST, QUIC short headers) of flows that were named, found to be no AI service,
resolver or candidate, and kept on downloading. It names whole 5-tuples, not servers: a
new flow to the same (shared, CDN) address is admitted whole until it is known not to
matter, so no AI flow ever loses a packet to the filter. Names, handshakes, uploads, DNS,
flow ends and IP fragments are always admitted.

Each flow is a handful of instructions (its ports word first, so a packet of another flow
costs one comparison): 7 for IPv4, 19 for IPv6, hence MAX_FILTER_FLOWS of either family
within the kernel's 4096.
"""

from __future__ import annotations

from collections.abc import Iterable

from detector.capture.cbpf import (
    IND, IP_AT, JA, JEQ, JMP, JSET, KEEP, LD, LDX, MEM, RET, ST,
    B, H, K, W, Insn, Program, assemble, net, past_ipv4_header, prologue,
)  # fmt: skip

# One flow of the bulk list: (server address, server port, client address, client port),
# addresses packed (4 or 16 bytes).
BulkFlow = tuple[bytes, int, bytes, int]

# Flows in the list, at most: all IPv6 (19 instructions each) still fits BPF_MAXINSNS.
MAX_FILTER_FLOWS = 192

# Scratch memory beyond M[IP_AT]: the packet's ports word, which A holds between entries.
_PORTS = 1
_TCP, _UDP = 6, 17
_FIN_SYN_RST = 0x07
_LONG_HEADER = 0x80


def program(flows: Iterable[BulkFlow]) -> Program:
    """The socket filter that drops the server->client data segments of `flows` and keeps
    everything else whole. Raises ValueError beyond what the kernel takes."""
    v4 = sorted(f for f in set(flows) if len(f[0]) == 4 and len(f[2]) == 4)
    v6 = sorted(f for f in set(flows) if len(f[0]) == 16 and len(f[2]) == 16)
    # Conditional jumps reach 255 instructions ahead: each family's checks jump to a
    # return of their own, and the far jump to IPv6 is an unconditional one.
    return assemble(
        [
            *prologue("v4", "to-v6", "keep"),
            "to-v6",
            (JMP | JA, 0, "v6" if v6 else "keep", None),
            "keep",
            (RET | K, KEEP, None, None),
            *(_ipv4(v4) if v4 else ["v4", (RET | K, KEEP, None, None)]),
            *(_ipv6(v6) if v6 else ()),
        ]
    )


def _ipv4(flows: list[BulkFlow]) -> list[Insn | str]:
    return [
        "v4",
        (LD | H | IND, net(6), None, None),
        (JMP | JSET | K, 0x3FFF, "v4-keep", None),  # a fragment: no ports in every piece
        (LD | B | IND, net(9), None, None),
        (ST, _PORTS, None, None),  # the protocol, until the ports take its place
        *past_ipv4_header(),
        (LD | MEM, _PORTS, None, None),
        *_server_data("v4", 0),
        (LDX | MEM, IP_AT, None, None),
        *_entries(flows, "v4", (12,), (16,)),
    ]


def _ipv6(flows: list[BulkFlow]) -> list[Insn | str]:
    # Only TCP or UDP right behind the fixed header, as libpcap's own `port` test reads IPv6.
    return [
        "v6",
        (LD | B | IND, net(6), None, None),
        *_server_data("v6", 40),
        *_entries(flows, "v6", (8, 12, 16, 20), (24, 28, 32, 36)),
    ]


def _server_data(family: str, l4: int) -> list[Insn | str]:
    """From the IP protocol in A and the TCP/UDP header at net(l4) + X: keep the packet
    unless it is a TCP segment without SYN/FIN/RST or a QUIC short header; else leave its
    ports word in A and M[_PORTS]."""
    keep, data, udp = f"{family}-keep", f"{family}-data", f"{family}-udp"
    return [
        (JMP | JEQ | K, _TCP, None, udp),
        (LD | B | IND, net(l4 + 13), None, None),
        (JMP | JSET | K, _FIN_SYN_RST, keep, data),
        udp,
        (JMP | JEQ | K, _UDP, None, keep),
        (LD | B | IND, net(l4 + 8), None, None),
        (JMP | JSET | K, _LONG_HEADER, keep, data),
        keep,
        (RET | K, KEEP, None, None),
        data,
        (LD | W | IND, net(l4), None, None),
        (ST, _PORTS, None, None),
    ]


def _entries(flows: list[BulkFlow], family: str, src: tuple[int, ...], dst: tuple[int, ...]) -> list[Insn | str]:
    """Per flow: its ports word against A (which holds the packet's, as M[_PORTS] does),
    then its addresses word by word, read at the IP header's offset in X; a match drops
    the packet, and the last flow's miss keeps it."""
    out: list[Insn | str] = []
    for i, (server, sport, client, cport) in enumerate(flows):
        this, nxt, reload = f"{family}-{i}", f"{family}-{i + 1}", f"{family}-{i}-reload"
        out += [this, (JMP | JEQ | K, (sport << 16) | cport, None, nxt)]
        for at, address in ((src, server), (dst, client)):
            for k, off in enumerate(at):
                word = int.from_bytes(address[4 * k : 4 * k + 4], "big")
                out += [(LD | W | IND, net(off), None, None), (JMP | JEQ | K, word, None, reload)]
        out += [(RET | K, 0, None, None), reload, (LD | MEM, _PORTS, None, None)]
    return [*out, f"{family}-{len(flows)}", (RET | K, KEEP, None, None)]
