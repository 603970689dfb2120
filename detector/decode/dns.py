"""DNS message decoder: questions and A/AAAA/CNAME answers, over UDP or length-framed TCP.

References:
    RFC 1035 §4.1 (message format), §4.1.4 (compression pointers), §2.3.4 (size
        limits: labels 63 octets, names 255 octets), §4.2.2 (TCP: 2-byte length prefix)
    RFC 7766 §6.2.1 (several messages per TCP segment, a message over several segments)
    RFC 2181 §8 (a TTL with the top bit set is treated as zero)
    RFC 3596 §2.2 (AAAA rdata is 16 octets)
    RFC 6895 §2.2 (opcodes: 0 Query, 1 IQuery, 2 Status, 4 Notify, 5 Update; RFC 8490: 6 DSO)
    RFC 6762 §10.2 (mDNS: top bit of the class is the cache-flush flag)

Truncation policy: the sensor needs query names most and answers second. When the
header and the question section are intact, a message always decodes to a
DnsMessage: the answer section is read until it ends, the buffer ends (TC bit,
short capture) or a record is broken, and holds the answers read so far. Anomalies
are reported only for a broken header or question section.
"""

from __future__ import annotations

from socket import AF_INET6, inet_ntoa, inet_ntop
from struct import Struct, unpack_from

from detector.decode._reader import DecodeError
from detector.model import Anomaly, DnsAnswer, DnsMessage

HEADER_LEN = 12
# RFC 1035 §2.3.4: labels are 63 octets or less; length bytes 0x40-0xBF are the
# reserved/extended label types of RFC 6891 §5, which nobody sends.
MAX_LABEL_LEN = 63
# RFC 1035 §2.3.4: a name is 255 octets or less on the wire, length bytes included.
MAX_NAME_LEN = 255
# A 255-octet name has at most 127 labels, so a real compressor cannot chain more
# pointers than that; more hops means a crafted chain that only burns CPU.
MAX_POINTER_HOPS = 127
# Unicast DNS carries one question (RFC 9619); mDNS packs a few per query. 64 covers
# both and bounds per-message work when qdcount is garbage.
MAX_QUESTIONS = 64
# The DNS cache keeps a handful of addresses per name; more than 128 records in one
# answer serve no attribution and only cost work (a TCP answer can hold ~4000).
MAX_ANSWERS = 128

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
CLASS_IN = 1
_CLASS_MASK = 0x7FFF  # drop the mDNS cache-flush bit
_TTL_MAX = 0x7FFFFFFF
# Opcodes in use (RFC 6895 §2.2, RFC 8490); others mean the bytes are not DNS.
_OPCODES = frozenset((0, 1, 2, 4, 5, 6))

ANOMALIES: dict[str, str] = {
    "dns.short_header": "fewer than 12 bytes: no complete DNS header",
    "dns.truncated_question": "the question section runs past the end of the message",
    "dns.too_many_questions": f"qdcount above {MAX_QUESTIONS}",
    "dns.label_too_long": "a label length byte of 64-191 (over 63 octets or a reserved label type)",
    "dns.name_too_long": f"a name over {MAX_NAME_LEN} octets on the wire",
    "dns.pointer_forward": "a compression pointer to itself or forward (a possible loop)",
    "dns.pointer_chain_too_long": f"more than {MAX_POINTER_HOPS} compression pointer hops in one name",
    "dns.tcp_not_dns": "a length-framed message on a DNS/TCP stream that is not DNS",
}

SHORT_HEADER = Anomaly("dns.short_header")
TRUNCATED_QUESTION = Anomaly("dns.truncated_question")
TOO_MANY_QUESTIONS = Anomaly("dns.too_many_questions")
LABEL_TOO_LONG = Anomaly("dns.label_too_long")
NAME_TOO_LONG = Anomaly("dns.name_too_long")
POINTER_FORWARD = Anomaly("dns.pointer_forward")
POINTER_CHAIN_TOO_LONG = Anomaly("dns.pointer_chain_too_long")
TCP_NOT_DNS = Anomaly("dns.tcp_not_dns")

_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = bytes.maketrans(_UPPER, _UPPER.lower())
# Label bytes shown as themselves; others (dot, backslash, space, control, 8-bit)
# are written \DDD as in RFC 1035 §5.1 master files, so a name stays unambiguous.
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in b".\\")
_PLAIN_SET = frozenset(_PLAIN)
_PLAIN_OR_DOT = _PLAIN + b"."
_RR = Struct("!HHIH")
_KEPT = frozenset((TYPE_A, TYPE_AAAA, TYPE_CNAME))
# Names read in one message, by the offset they were read from: text, labels, wire length,
# pointer hops (see _read_name).
_Names = dict[int, tuple[str, int, int, int]]


def parse_dns(msg: bytes) -> DnsMessage | Anomaly | None:
    """Decode one DNS message (a whole UDP payload or one TCP-framed message).

    Names are lower-cased, without the trailing dot; IDNA labels stay as sent.
    Never returns NeedMore: a datagram is all there is (see the truncation policy
    in the module docstring). None means the bytes are not DNS.
    """
    if len(msg) < HEADER_LEN:
        return SHORT_HEADER
    txid, flags, qdcount, ancount = unpack_from("!HHHH", msg)
    if (flags >> 11) & 0xF not in _OPCODES or (qdcount == 0 and ancount == 0):
        return None
    if qdcount > MAX_QUESTIONS:
        return TOO_MANY_QUESTIONS
    names: _Names = {}
    try:
        questions, pos = _questions(msg, qdcount, names)
    except DecodeError as err:
        return err.anomaly
    return DnsMessage(
        txid=txid,
        is_response=bool(flags & 0x8000),
        rcode=flags & 0xF,
        questions=questions,
        answers=_answers(msg, pos, min(ancount, MAX_ANSWERS), names) if ancount else (),
    )


def parse_dns_tcp(stream: bytes) -> tuple[list[DnsMessage | Anomaly], int]:
    """Decode the complete length-prefixed messages at the start of a DNS/TCP stream.

    Returns the decoded messages and the number of bytes consumed; the caller keeps
    the rest (a message cut by the segment boundary) for the next call.
    """
    out: list[DnsMessage | Anomaly] = []
    pos, n = 0, len(stream)
    while pos + 2 <= n:
        end = pos + 2 + ((stream[pos] << 8) | stream[pos + 1])
        if end > n:
            break
        result = parse_dns(stream[pos + 2 : end])
        out.append(TCP_NOT_DNS if result is None else result)
        pos = end
    return out, pos


def _questions(msg: bytes, count: int, names: _Names) -> tuple[tuple[tuple[str, int], ...], int]:
    pos = HEADER_LEN
    questions = []
    for _ in range(count):
        name, pos = _read_name(msg, pos, names)
        if pos + 4 > len(msg):
            raise DecodeError(TRUNCATED_QUESTION)
        questions.append((name, (msg[pos] << 8) | msg[pos + 1]))
        pos += 4  # qtype, qclass
    return tuple(questions), pos


def _answers(msg: bytes, pos: int, count: int, names: _Names) -> tuple[DnsAnswer, ...]:
    """A/AAAA/CNAME records of the answer section, up to the first one that is cut or broken."""
    answers = []
    n = len(msg)
    for _ in range(count):
        try:
            name, pos = _read_name(msg, pos, names)
        except DecodeError:
            break
        if pos + 10 > n:
            break
        rtype, rclass, ttl, rdlength = _RR.unpack_from(msg, pos)
        start = pos + 10
        pos = start + rdlength
        if pos > n:
            break
        if rclass & _CLASS_MASK != CLASS_IN or rtype not in _KEPT:
            continue
        value = _rdata(msg, rtype, start, rdlength, names)
        if value is not None:
            answers.append(DnsAnswer(name, rtype, 0 if ttl > _TTL_MAX else ttl, value))
    return tuple(answers)


def _rdata(msg: bytes, rtype: int, start: int, length: int, names: _Names) -> str | None:
    """The text of an A/AAAA/CNAME rdata; None for a malformed rdata (skipped)."""
    if rtype == TYPE_A:
        return inet_ntoa(msg[start : start + 4]) if length == 4 else None
    if rtype == TYPE_AAAA:
        return inet_ntop(AF_INET6, msg[start : start + 16]) if length == 16 else None
    try:
        target, end = _read_name(msg, start, names)
    except DecodeError:
        return None
    return target if end <= start + length else None


def _read_name(msg: bytes, pos: int, names: _Names) -> tuple[str, int]:
    """The name at `pos` and the offset just after it; raises DecodeError.

    Every pointer must point before the start of the label run that holds it, so
    each hop moves strictly backwards and no chain can loop; hops are also capped.
    A name running past the end of the message raises TRUNCATED_QUESTION (the
    answer section catches every DecodeError and stops there).

    `names` holds, per offset where a name was read from (a question or a pointer's
    target), its text, label count, wire length and pointer hops: answers point back
    at the question, and each pointer target is read once per message.
    """
    n = len(msg)
    if pos + 1 < n and msg[pos] >= 0xC0:
        # A bare pointer to a name already read: most owner names in an answer.
        target = ((msg[pos] & 0x3F) << 8) | msg[pos + 1]
        known = names.get(target)
        if known is not None and target < pos and known[3] < MAX_POINTER_HOPS:
            return known[0], pos + 2
    labels: list[bytes] = []
    wire = 1  # the root label's length byte
    after = -1  # offset after the name where it was written (before any jump)
    run_start = pos
    hops = 0
    # (offset, labels so far, wire so far, hops so far) where each run began
    runs = [(pos, 0, 1, 0)]
    tail = ""
    tail_count = 0
    while True:
        if pos >= n:
            raise DecodeError(TRUNCATED_QUESTION)
        length = msg[pos]
        if length == 0:
            break
        if length >= 0xC0:
            if pos + 1 >= n:
                raise DecodeError(TRUNCATED_QUESTION)
            target = ((length & 0x3F) << 8) | msg[pos + 1]
            if after < 0:
                after = pos + 2
            if target >= run_start:
                raise DecodeError(POINTER_FORWARD)
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise DecodeError(POINTER_CHAIN_TOO_LONG)
            known = names.get(target)
            if known is not None:
                tail, tail_count, tail_wire, tail_hops = known
                if hops + tail_hops > MAX_POINTER_HOPS:
                    raise DecodeError(POINTER_CHAIN_TOO_LONG)
                wire += tail_wire - 1
                if wire > MAX_NAME_LEN:
                    raise DecodeError(NAME_TOO_LONG)
                hops += tail_hops
                break
            pos = run_start = target
            runs.append((pos, len(labels), wire, hops))
            continue
        if length > MAX_LABEL_LEN:
            raise DecodeError(LABEL_TOO_LONG)
        wire += length + 1
        if wire > MAX_NAME_LEN:
            raise DecodeError(NAME_TOO_LONG)
        end = pos + 1 + length
        if end > n:
            raise DecodeError(TRUNCATED_QUESTION)
        labels.append(msg[pos + 1 : end])
        pos = end
    count = len(labels) + tail_count
    after = pos + 1 if after < 0 else after
    low = b".".join(labels).translate(_LOWER)
    # Plain when no byte needs escaping and every dot is a label boundary: then one decode.
    plain = not low.translate(None, _PLAIN_OR_DOT) and low.count(b".") == len(labels) - 1
    if plain and len(runs) == 1 and not tail_count:  # the common case: one run of labels
        text = low.decode("ascii")
        names[runs[0][0]] = (text, count, wire, hops)
        return text, after
    texts = low.decode("ascii").split(".") if plain else list(map(_label_text, labels))
    for start, k, w, h in runs:
        names[start] = (_joined(texts, k, tail, tail_count), count - k, wire - w + 1, hops - h)
    return names[runs[0][0]][0], after


def _joined(texts: list[str], k: int, tail: str, tail_count: int) -> str:
    """The name made of texts[k:] followed by the `tail_count` labels of `tail`."""
    head = ".".join(texts[k:]) if k < len(texts) else ""
    if not tail_count:
        return head
    return f"{head}.{tail}" if head else tail


def _label_text(raw: bytes) -> str:
    """A label lower-cased (ASCII only), with unsafe bytes escaped as \\DDD."""
    low = raw.translate(_LOWER)
    if not low.translate(None, _PLAIN):
        return low.decode("ascii")
    return "".join(chr(b) if b in _PLAIN_SET else f"\\{b:03d}" for b in low)
