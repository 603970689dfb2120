"""Which capture worker gets a packet: a classic BPF program that keys AF_PACKET fanout on
the client's address (PACKET_FANOUT_CBPF), so one worker sees all of a client's traffic.

The kernel's own flow hash (PACKET_FANOUT_HASH) keeps each flow on one worker, but puts a
client's DNS answers and the flows they name on different workers; every worker then had
to read all DNS to name its flows from its DNS cache. Keyed on the client, a worker reads
only its own clients' DNS, in order with their flows, on the same handle.

The client is the side with the higher port (an ephemeral port against a service port),
so both directions of a flow and of a lookup choose the same address; with equal ports or
no ports (fragments the kernel did not reassemble, ICMP, GRE, other IPv6 next headers)
both addresses are hashed, which still keeps each flow on one worker. Anything that is
not IPv4 or IPv6, behind at most one remaining VLAN tag, goes to worker 0.

Loads are relative to the network header (see capture.cbpf).
"""

from __future__ import annotations

from detector.capture.cbpf import (
    ALU, IND, IP_AT, JA, JEQ, JGT, JSET, JMP, LD, LDX, MEM, MISC, RET, RET_A, RSH, ST, TAX, XOR,
    B, H, K, W, X, Insn, assemble, net, past_ipv4_header, prologue, set_program,
)  # fmt: skip

# linux/if_packet.h
SOL_PACKET = 263
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_DATA = 22

# Scratch memory beyond M[IP_AT]: temporaries.
_T1, _T2 = 1, 2


def _hash_word(src: int, dst: int, sym: str) -> list[Insn | str]:
    """From sport (in M[1]) and dport (in A): the client's address word, or both xor-ed."""
    return [
        (LDX | MEM, _T1, None, None),
        (JMP | JGT | X, 0, f"{sym}-dst", None),  # dport > sport: the destination is the client
        (JMP | JEQ | X, 0, sym, f"{sym}-src"),
        f"{sym}-src",
        (LDX | MEM, IP_AT, None, None),
        (LD | W | IND, net(src), None, None),
        (JMP | JA, 0, "fold", None),
        f"{sym}-dst",
        (LDX | MEM, IP_AT, None, None),
        (LD | W | IND, net(dst), None, None),
        (JMP | JA, 0, "fold", None),
        sym,
        (LDX | MEM, IP_AT, None, None),
        (LD | W | IND, net(src), None, None),
        (ST, _T1, None, None),
        (LD | W | IND, net(dst), None, None),
        (LDX | MEM, _T1, None, None),
        (ALU | XOR | X, 0, None, None),
        (JMP | JA, 0, "fold", None),
    ]


def _client_word(family: str, to_ports: list[Insn | str], ports: int, addresses: tuple[int, int]) -> list[Insn | str]:
    """From the IP protocol in A: for TCP or UDP, X moved by `to_ports` and the ports read at
    net(ports), then the client's address word (see _hash_word), read at `addresses`."""
    return [
        (JMP | JEQ | K, 6, f"{family}-ports", None),
        (JMP | JEQ | K, 17, f"{family}-ports", f"{family}-both"),
        f"{family}-ports",
        *to_ports,
        (LD | H | IND, net(ports), None, None),
        (ST, _T1, None, None),
        (LD | H | IND, net(ports + 2), None, None),
        *_hash_word(*addresses, f"{family}-both"),
    ]


def _program() -> list[Insn | str]:
    return [
        *prologue("v4", "v6", "other"),
        "other",
        (RET | K, 0, None, None),
        "v4",
        (LD | H | IND, net(6), None, None),
        (JMP | JSET | K, 0x3FFF, "v4-both", None),  # a fragment: no ports in every piece
        (LD | B | IND, net(9), None, None),
        *_client_word("v4", past_ipv4_header(), 0, (12, 16)),
        "v6",
        (LD | B | IND, net(6), None, None),
        *_client_word("v6", [], 40, (20, 36)),  # the last 32 bits of each address
        "fold",  # fold the word so that `% workers` sees every byte of it
        (ST, _T2, None, None),
        (ALU | RSH | K, 16, None, None),
        (MISC | TAX, 0, None, None),
        (LD | MEM, _T2, None, None),
        (ALU | XOR | X, 0, None, None),
        (ST, _T2, None, None),
        (ALU | RSH | K, 8, None, None),
        (MISC | TAX, 0, None, None),
        (LD | MEM, _T2, None, None),
        (ALU | XOR | X, 0, None, None),
        (RET | RET_A, 0, None, None),
    ]


CLIENT_HASH = assemble(_program())


def attach(fd: int) -> None:
    """Give the fanout group of packet socket `fd` its demux program (the socket must have
    joined with PACKET_FANOUT_CBPF). Raises OSError."""
    set_program(fd, SOL_PACKET, PACKET_FANOUT_DATA, CLIENT_HASH)
