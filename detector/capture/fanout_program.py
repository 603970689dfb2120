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

Loads are relative to the network header (SKF_NET_OFF), where the kernel has put IP once
it took an outer VLAN tag off into the packet's metadata.
"""

from __future__ import annotations

import ctypes
import socket
import struct

# linux/filter.h and linux/bpf_common.h: classic BPF opcodes
_LD, _LDX, _ST, _STX, _ALU, _JMP, _RET, _MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
_W, _H, _B = 0x00, 0x08, 0x10
_IMM, _ABS, _IND, _MEM = 0x00, 0x20, 0x40, 0x60
_ADD, _AND, _LSH, _RSH, _XOR = 0x00, 0x50, 0x60, 0x70, 0xA0
_JA, _JEQ, _JGT, _JSET = 0x00, 0x10, 0x20, 0x40
_K, _X = 0x00, 0x08
_RET_A = 0x10
_TAX = 0x00
SKF_AD_PROTOCOL = -0x1000  # SKF_AD_OFF + SKF_AD_PROTOCOL: the packet's EtherType, host order
SKF_NET_OFF = -0x100000  # loads relative to the network header
# linux/if_packet.h
SOL_PACKET = 263
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_DATA = 22

# Scratch memory: M[0] the IP header's offset from the network header (0, or 4 behind a
# tag), M[1] and M[2] temporaries.
_IP_AT, _T1, _T2 = 0, 1, 2

# The program, with symbolic jump targets: (opcode, k, jump if true, jump if false); a
# label is a plain string. `net + k` offsets are from the network header, indexed by X.
_Insn = tuple[int, int, str | None, str | None]


def _net(k: int) -> int:
    return SKF_NET_OFF + k


def _hash_word(src: int, dst: int, sym: str) -> list[_Insn | str]:
    """From sport (in M[1]) and dport (in A): the client's address word, or both xor-ed."""
    return [
        (_LDX | _MEM, _T1, None, None),
        (_JMP | _JGT | _X, 0, f"{sym}-dst", None),  # dport > sport: the destination is the client
        (_JMP | _JEQ | _X, 0, sym, f"{sym}-src"),
        f"{sym}-src",
        (_LDX | _MEM, _IP_AT, None, None),
        (_LD | _W | _IND, _net(src), None, None),
        (_JMP | _JA, 0, "fold", None),
        f"{sym}-dst",
        (_LDX | _MEM, _IP_AT, None, None),
        (_LD | _W | _IND, _net(dst), None, None),
        (_JMP | _JA, 0, "fold", None),
        sym,
        (_LDX | _MEM, _IP_AT, None, None),
        (_LD | _W | _IND, _net(src), None, None),
        (_ST, _T1, None, None),
        (_LD | _W | _IND, _net(dst), None, None),
        (_LDX | _MEM, _T1, None, None),
        (_ALU | _XOR | _X, 0, None, None),
        (_JMP | _JA, 0, "fold", None),
    ]


def _program() -> list[_Insn | str]:
    return [
        (_LD | _W | _ABS, SKF_AD_PROTOCOL, None, None),
        (_LDX | _IMM, 0, None, None),
        (_JMP | _JEQ | _K, 0x8100, "tagged", None),
        (_JMP | _JEQ | _K, 0x88A8, "tagged", "untagged"),
        "tagged",
        (_LD | _H | _ABS, _net(2), None, None),
        (_LDX | _IMM, 4, None, None),
        "untagged",
        (_STX, _IP_AT, None, None),
        (_JMP | _JEQ | _K, 0x0800, "v4", None),
        (_JMP | _JEQ | _K, 0x86DD, "v6", None),
        (_RET | _K, 0, None, None),
        "v4",
        (_LD | _H | _IND, _net(6), None, None),
        (_JMP | _JSET | _K, 0x3FFF, "v4-both", None),  # a fragment: no ports in every piece
        (_LD | _B | _IND, _net(9), None, None),
        (_JMP | _JEQ | _K, 6, "v4-ports", None),
        (_JMP | _JEQ | _K, 17, "v4-ports", "v4-both"),
        "v4-ports",
        (_LD | _B | _IND, _net(0), None, None),
        (_ALU | _AND | _K, 0x0F, None, None),
        (_ALU | _LSH | _K, 2, None, None),
        (_ALU | _ADD | _X, 0, None, None),  # past the IPv4 header and any tag
        (_MISC | _TAX, 0, None, None),
        (_LD | _H | _IND, _net(0), None, None),
        (_ST, _T1, None, None),
        (_LD | _H | _IND, _net(2), None, None),
        *_hash_word(12, 16, "v4-both"),
        "v6",
        (_LD | _B | _IND, _net(6), None, None),
        (_JMP | _JEQ | _K, 6, "v6-ports", None),
        (_JMP | _JEQ | _K, 17, "v6-ports", "v6-both"),
        "v6-ports",
        (_LD | _H | _IND, _net(40), None, None),
        (_ST, _T1, None, None),
        (_LD | _H | _IND, _net(42), None, None),
        *_hash_word(20, 36, "v6-both"),  # the last 32 bits of each address
        "fold",  # fold the word so that `% workers` sees every byte of it
        (_ST, _T2, None, None),
        (_ALU | _RSH | _K, 16, None, None),
        (_MISC | _TAX, 0, None, None),
        (_LD | _MEM, _T2, None, None),
        (_ALU | _XOR | _X, 0, None, None),
        (_ST, _T2, None, None),
        (_ALU | _RSH | _K, 8, None, None),
        (_MISC | _TAX, 0, None, None),
        (_LD | _MEM, _T2, None, None),
        (_ALU | _XOR | _X, 0, None, None),
        (_RET | _RET_A, 0, None, None),
    ]


def assemble(program: list[_Insn | str]) -> list[tuple[int, int, int, int]]:
    """Resolve labels: (code, jt, jf, k) per instruction, as `struct sock_filter` holds them.
    A conditional jump's missing target is the next instruction; `ja` jumps by k."""
    where: dict[str, int] = {}
    insns: list[_Insn] = []
    for item in program:
        if isinstance(item, str):
            where[item] = len(insns)
        else:
            insns.append(item)
    out = []
    for i, (code, k, jt, jf) in enumerate(insns):

        def rel(label: str | None) -> int:
            return 0 if label is None else where[label] - i - 1

        if code & 0x07 == _JMP and code & 0xF0 == _JA:
            out.append((code, 0, 0, rel(jt) & 0xFFFFFFFF))
        else:
            out.append((code, rel(jt), rel(jf), k & 0xFFFFFFFF))
    return out


CLIENT_HASH = assemble(_program())


def attach(fd: int, program: list[tuple[int, int, int, int]] = CLIENT_HASH) -> None:
    """Give the fanout group of packet socket `fd` its demux program (the socket must have
    joined with PACKET_FANOUT_CBPF). Raises OSError."""
    filters = (ctypes.c_uint64 * len(program))()
    struct.pack_into(f"={'HBBI' * len(program)}", filters, 0, *[v for insn in program for v in insn])
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(filters))
    sock = socket.fromfd(fd, socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, fprog)
    finally:
        sock.close()  # a duplicate of fd: the capture keeps its own
