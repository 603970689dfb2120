"""Client pseudonyms: a keyed HMAC of the address, and the key file it needs.

`Pseudonymiser` is pure apart from a bounded memo. `load_or_create_key` is the one function here
that touches the file system; it is kept apart so the rest can be tested without files.

The pseudonym is stable for as long as the key is (so per-client counts work across restarts)
and cannot be reversed without the key: a dictionary attack over the small IPv4 space needs the
key, which is why it lives in a file only the sensor's user can read.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

KEY_BYTES = 32  # HMAC-SHA256 key: the hash's block-size-independent recommended length (RFC 2104 §3)
MIN_KEY_BYTES = 16  # shorter keys weaken the HMAC below 128 bits
# 64 bits of the MAC: collisions among n clients have odds ~ n²/2⁶⁵, nil for a municipality.
PSEUDONYM_HEX = 16
PSEUDONYM_PREFIX = "c-"
# Distinct client addresses on a municipal network are a few thousand; 65536 memo entries
# (~10 MB worst case) keeps every one without letting a scan of spoofed sources grow it without bound.
MEMO_SIZE = 65536

_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"  # RFC 4291 §2.5.5.2


class KeyFileError(Exception):
    """The pseudonym key file cannot be used (unsafe mode, wrong size, not a file)."""


class Pseudonymiser:
    """Keyed HMAC-SHA256 pseudonyms for packed client addresses."""

    __slots__ = ("_key", "_memo", "_memo_size")

    def __init__(self, key: bytes, memo_size: int = MEMO_SIZE) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"pseudonym key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
        self._key = bytes(key)
        self._memo: dict[bytes, str] = {}
        self._memo_size = memo_size

    def pseudonym(self, addr: bytes) -> str:
        """ "c-" + 16 hex digits of HMAC-SHA256(key, address); IPv4-mapped IPv6 counts as IPv4."""
        memo = self._memo
        hit = memo.get(addr)
        if hit is not None:
            return hit
        key = addr[12:] if len(addr) == 16 and addr[:12] == _V4_MAPPED_PREFIX else addr
        value = PSEUDONYM_PREFIX + hmac.digest(self._key, key, "sha256").hex()[:PSEUDONYM_HEX]
        if len(memo) >= self._memo_size:
            del memo[next(iter(memo))]  # oldest first: dicts keep insertion order
        memo[addr] = value
        return value


def load_or_create_key(path: Path) -> bytes:
    """Read the key file, or create it with a fresh random key, mode 0600, if it is absent.

    Creation is atomic: the key is written to a private temporary file (O_CREAT|O_EXCL, 0600)
    in the same directory and hard-linked into place, which fails if another process got there
    first, whose key is then read. An existing file readable or writable by group or others is
    refused, as is one that is not exactly KEY_BYTES long.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # O_EXCL, mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_key(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return key


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: pseudonym key is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"{path}: pseudonym key file is accessible by group/others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise KeyFileError(
            f"{path}: pseudonym key file holds {st.st_size} bytes, expected {KEY_BYTES}; "
            "move it away to create a new key (pseudonyms will change)"
        )
    return data


def _fsync_dir(directory: Path) -> None:
    """Make the new directory entry durable (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
