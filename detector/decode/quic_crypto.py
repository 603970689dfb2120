"""QUIC Initial packet protection: key derivation, header protection, AEAD (pure, no state but bounded memo caches).

Initial keys are public by design: anyone who sees the client's Destination
Connection ID can derive them. This module only ever derives Initial keys.

References:
  RFC 9001 §5.1 (packet protection keys, HKDF-Expand-Label with "quic key"/"quic iv"/"quic hp"),
  §5.2 (Initial secrets, v1 salt), §5.3 (AEAD nonce = iv XOR packet number),
  §5.4 (header protection: sample, AES-ECB mask), Appendix A (test vectors).
  RFC 9369 §3.3.1 (v2 salt), §3.3.2 (v2 labels "quicv2 key"/"quicv2 iv"/"quicv2 hp"), Appendix A.
  RFC 8446 §7.1 (HKDF-Expand-Label), RFC 5869 (HKDF).
  RFC 9000 §17.2 (long header), §16 (variable-length integers).
  draft-ietf-quic-tls-23..34 §5.2 (draft salts); mvfst quic/handshake/HandshakeLayer.cpp (mvfst salts).
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# ---------------------------------------------------------------------------
# Versions, salts and labels
# ---------------------------------------------------------------------------

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF

_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")  # RFC 9001 §5.2 (also draft-33/34)
_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")  # RFC 9369 §3.3.1
_SALT_DRAFT_29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")  # draft-ietf-quic-tls-29..32
_SALT_DRAFT_23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")  # draft-ietf-quic-tls-23..28
_SALT_DRAFT_22 = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")  # draft-ietf-quic-tls-22
# Google's TLS-based gQUIC versions use IETF packet protection with their own salts
# (Chromium quic_crypto_utils.cc; also in Wireshark and nDPI).
_SALT_T050 = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")
_SALT_T051 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")

_LABELS_V1 = (b"quic key", b"quic iv", b"quic hp")
_LABELS_V2 = (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")

VERSION_T050 = 0x54303530  # "T050"
VERSION_T051 = 0x54303531  # "T051"

# version -> (salt, labels). Versions missing here get no keys (None).
_VERSIONS: dict[int, tuple[bytes, tuple[bytes, bytes, bytes]]] = {
    VERSION_1: (_SALT_V1, _LABELS_V1),
    VERSION_2: (_SALT_V2, _LABELS_V2),
    0xFF000016: (_SALT_DRAFT_22, _LABELS_V1),
    **{0xFF000000 | d: (_SALT_DRAFT_23, _LABELS_V1) for d in range(23, 29)},
    **{0xFF000000 | d: (_SALT_DRAFT_29, _LABELS_V1) for d in range(29, 33)},
    0xFF000021: (_SALT_V1, _LABELS_V1),  # draft-33
    0xFF000022: (_SALT_V1, _LABELS_V1),  # draft-34
    # Facebook mvfst: 0xfaceb001 is draft-22 based; the draft-27 based versions and
    # their experimental aliases keep the draft-23 salt; 0xfaceb003 is a v1 alias.
    0xFACEB001: (_SALT_DRAFT_22, _LABELS_V1),
    **{
        v: (_SALT_DRAFT_23, _LABELS_V1)
        for v in (0xFACEB002, 0xFACEB00D, 0xFACEB00E, 0xFACEB00F, 0xFACEB010, 0xFACEB011, 0xFACEB012, 0xFACEB013)
    },
    0xFACEB003: (_SALT_V1, _LABELS_V1),
    VERSION_T050: (_SALT_T050, _LABELS_V1),
    VERSION_T051: (_SALT_T051, _LABELS_V1),
}

SUPPORTED_VERSIONS: frozenset[int] = frozenset(_VERSIONS)

# Google QUIC Q050 protects its Initials like T050, but they carry a QUIC-crypto CHLO in
# gQUIC frames, which decode.gquic reads; so Q050 stays out of _VERSIONS and
# SUPPORTED_VERSIONS (initial_keys gives None) and has its own entry point, q050_initial_keys.
VERSION_Q050 = 0x51303530  # "Q050"
_SALT_Q050 = bytes.fromhex("504574efd066fe2f9d945cfcdbd3a7f0d3b56b45")  # Chromium quic_crypto_utils.cc
_CHLO_VERSIONS = {VERSION_Q050: (_SALT_Q050, _LABELS_V1)}

# Long-header packet type -> the Initial type bits for each version family (RFC 9369 §3.2).
INITIAL_TYPE_V1 = 0
INITIAL_TYPE_V2 = 1

# Bounds on the memo caches. One QUIC connection sends 1-3 client Initials with the
# same DCID within a few milliseconds (ClientHellos with post-quantum key shares
# span two Initials), so a small cache catches them; entries are ~1 KiB of cipher state.
KEY_CACHE_SIZE = 512

AEAD_TAG_LEN = 16  # AEAD_AES_128_GCM tag (RFC 5116 §5.1)
HP_SAMPLE_LEN = 16  # RFC 9001 §5.4.2: AES-based header protection samples 16 bytes
MAX_CID_LEN = 20  # RFC 9000 §17.2: a v1 connection ID is at most 20 bytes


@dataclass(slots=True, frozen=True)
class InitialKeys:
    """AEAD key (16), IV (12) and header-protection key (16) of one Initial direction."""

    key: bytes
    iv: bytes
    hp: bytes


def initial_type_bits(version: int) -> int:
    """The long-header type value of an Initial packet for `version` (v2 renumbered them)."""
    return INITIAL_TYPE_V2 if version == VERSION_2 else INITIAL_TYPE_V1


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    # HKDF-Expand-Label with an empty context; every output here is at most one
    # SHA-256 block, so HKDF-Expand is a single HMAC over (info || 0x01).
    full = b"tls13 " + label
    info = struct.pack(">HB", length, len(full)) + full + b"\x00\x01"
    return hmac.digest(secret, info, "sha256")[:length]


def initial_keys(version: int, dcid: bytes, is_client: bool = True) -> InitialKeys | None:
    """Derive the Initial keys for `version` from the client's first Destination Connection ID.

    is_client selects the client's ("client in") or the server's ("server in") keys.
    Returns None for versions whose salt is unknown (GREASE, unknown, gQUIC Q0xx).
    """
    if version not in _VERSIONS:
        return None
    return _derive(version, bytes(dcid), bool(is_client))


def q050_initial_keys(dcid: bytes) -> InitialKeys:
    """The client Initial keys of Google QUIC Q050 from the client's Destination Connection ID."""
    return _derive(VERSION_Q050, bytes(dcid), True)


# Derivation is five HMAC-SHA256 calls (~50 µs); a connection's later Initials reuse it.
@lru_cache(maxsize=KEY_CACHE_SIZE)
def _derive(version: int, dcid: bytes, is_client: bool) -> InitialKeys:
    salt, (key_label, iv_label, hp_label) = _VERSIONS.get(version) or _CHLO_VERSIONS[version]
    prk = hmac.digest(salt, dcid, "sha256")  # HKDF-Extract
    secret = _expand_label(prk, b"client in" if is_client else b"server in", 32)
    return InitialKeys(
        key=_expand_label(secret, key_label, 16),
        iv=_expand_label(secret, iv_label, 12),
        hp=_expand_label(secret, hp_label, 16),
    )


# Building a cryptography cipher context costs ~30 µs, the AES operation ~1 µs, so the
# contexts are memoised per key. An ECB encryptor fed whole blocks keeps no state
# between calls, so reusing it is safe (single-threaded decode, as in the pipeline).
@lru_cache(maxsize=KEY_CACHE_SIZE)
def _hp_encryptor(hp: bytes):  # type: ignore[no-untyped-def]
    return Cipher(algorithms.AES(hp), modes.ECB()).encryptor()


@lru_cache(maxsize=KEY_CACHE_SIZE)
def _aead(key: bytes) -> AESGCM:
    return AESGCM(key)


def header_mask(hp: bytes, sample: bytes) -> bytes:
    """The 5-byte header-protection mask AES-ECB(hp, sample)[:5] (RFC 9001 §5.4.3)."""
    return _hp_encryptor(bytes(hp)).update(bytes(sample))[:5]


def remove_header_protection(packet: bytearray | bytes, pn_offset: int, hp: bytes) -> tuple[bytes, int, int] | None:
    """Undo header protection of one packet that starts at packet[0].

    pn_offset: offset of the Packet Number field. Returns (unprotected header up to and
    including the packet number, packet number as sent (truncated), its length 1-4),
    or None when the packet is too short to hold the 16-byte sample.
    """
    if pn_offset < 1 or len(packet) < pn_offset + 4 + HP_SAMPLE_LEN:
        return None
    sample_at = pn_offset + 4
    mask = header_mask(hp, packet[sample_at : sample_at + HP_SAMPLE_LEN])
    first = packet[0]
    first ^= mask[0] & (0x0F if first & 0x80 else 0x1F)  # long vs short header bits
    pn_len = (first & 0x03) + 1
    pn_end = pn_offset + pn_len
    pn = int.from_bytes(packet[pn_offset:pn_end], "big") ^ int.from_bytes(mask[1 : 1 + pn_len], "big")
    header = bytes((first,)) + bytes(packet[1:pn_offset]) + pn.to_bytes(pn_len, "big")
    return header, pn, pn_len


def _nonce(iv: bytes, pn: int) -> bytes:
    return (int.from_bytes(iv, "big") ^ pn).to_bytes(len(iv), "big")


def aead_open(keys: InitialKeys, pn: int, header: bytes, ciphertext: bytes) -> bytes | None:
    """Decrypt and authenticate one Initial payload (AEAD_AES_128_GCM); None if the tag fails."""
    if len(ciphertext) < AEAD_TAG_LEN:
        return None
    try:
        return _aead(keys.key).decrypt(_nonce(keys.iv, pn), bytes(ciphertext), bytes(header))
    except (InvalidTag, ValueError, OverflowError):
        return None


def aead_seal(keys: InitialKeys, pn: int, header: bytes, plaintext: bytes) -> bytes:
    """Encrypt one Initial payload (the inverse of aead_open); used by protect_initial."""
    return _aead(keys.key).encrypt(_nonce(keys.iv, pn), bytes(plaintext), bytes(header))


def encode_varint(value: int, size: int = 0) -> bytes:
    """RFC 9000 §16 variable-length integer; size 0 picks the shortest of 1/2/4/8 bytes."""
    if value < 0 or value >= 1 << 62:
        raise ValueError(f"varint out of range: {value}")
    if not size:
        size = 1 if value < 1 << 6 else 2 if value < 1 << 14 else 4 if value < 1 << 30 else 8
    if size not in (1, 2, 4, 8) or value >= 1 << (8 * size - 2):
        raise ValueError(f"varint {value} does not fit in {size} bytes")
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[size]
    return ((prefix << (8 * size - 2)) | value).to_bytes(size, "big")


def protect_initial(
    version: int,
    dcid: bytes,
    scid: bytes,
    pn: int,
    payload: bytes,
    token: bytes = b"",
    is_client: bool = True,
    *,
    pn_len: int = 0,
    key_dcid: bytes | None = None,
) -> bytes:
    """Build one complete protected Initial packet (long header, Length, AEAD, header protection).

    For test traffic and the traffic generator; the inverse of what parse_quic_initials
    reads. payload: the plaintext frames; it is padded with PADDING frames only as far
    as header protection needs a full sample (add your own PADDING for the 1200-byte
    minimum of RFC 9000 §14.1). pn_len: packet-number length 1-4 (0 = shortest that
    holds pn). key_dcid: the DCID the keys derive from, when it is not the header's
    (server Initials and client Initials after the server chose its CID).
    Raises ValueError for unsupported versions or out-of-range arguments.
    """
    keys = initial_keys(version, bytes(dcid if key_dcid is None else key_dcid), is_client)
    if keys is None:
        raise ValueError(f"no Initial keys for version {version:#010x}")
    if len(dcid) > MAX_CID_LEN or len(scid) > MAX_CID_LEN:
        raise ValueError("connection ID longer than 20 bytes")
    if not pn_len:
        pn_len = 1 if pn < 1 << 8 else 2 if pn < 1 << 16 else 3 if pn < 1 << 24 else 4
    if not 1 <= pn_len <= 4 or not 0 <= pn < 1 << (8 * pn_len):
        raise ValueError(f"packet number {pn} does not fit in {pn_len} bytes")
    # The sample starts 4 bytes after the packet number field (RFC 9001 §5.4.2).
    payload = bytes(payload) + bytes(max(0, 4 - pn_len - len(payload)))
    length = pn_len + len(payload) + AEAD_TAG_LEN
    first = 0xC0 | (initial_type_bits(version) << 4) | (pn_len - 1)
    header = (
        bytes((first,))
        + version.to_bytes(4, "big")
        + bytes((len(dcid),))
        + bytes(dcid)
        + bytes((len(scid),))
        + bytes(scid)
        + encode_varint(len(token))
        + bytes(token)
        + encode_varint(length, 2 if length < 1 << 14 else 0)
    )
    pn_offset = len(header)
    header += pn.to_bytes(pn_len, "big")
    ciphertext = aead_seal(keys, pn, header, payload)
    sample_at = 4 - pn_len
    mask = header_mask(keys.hp, ciphertext[sample_at : sample_at + HP_SAMPLE_LEN])
    out = bytearray(header + ciphertext)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_offset + i] ^= mask[1 + i]
    return bytes(out)
