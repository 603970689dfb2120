"""Keyed client pseudonyms and the key file's creation and permission checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from detector.classify.pseudonym import KEY_BYTES, KeyFileError, Pseudonymiser, load_or_create_key

KEY = bytes(range(32))
V4 = bytes([10, 20, 8, 9])  # 10.20.8.9
V4_MAPPED = bytes(10) + b"\xff\xff" + V4  # ::ffff:10.20.8.9
V6 = bytes.fromhex("20010db8002000080000000000000042")  # 2001:db8:20:8::42


def test_pseudonym_is_stable_short_and_prefixed() -> None:
    a, b = Pseudonymiser(KEY), Pseudonymiser(KEY)
    p = a.pseudonym(V4)
    assert p == a.pseudonym(V4) == b.pseudonym(V4)
    assert p.startswith("c-") and len(p) == 18 and int(p[2:], 16) >= 0


def test_pseudonym_is_hmac_sha256_of_the_packed_address() -> None:
    import hmac

    assert Pseudonymiser(KEY).pseudonym(V6) == "c-" + hmac.new(KEY, V6, "sha256").hexdigest()[:16]


def test_pseudonym_depends_on_key_and_address() -> None:
    one, other = Pseudonymiser(KEY), Pseudonymiser(bytes(32))
    assert one.pseudonym(V4) != other.pseudonym(V4)
    assert one.pseudonym(V4) != one.pseudonym(V6)


def test_ipv4_mapped_address_gets_the_ipv4_pseudonym() -> None:
    p = Pseudonymiser(KEY)
    assert p.pseudonym(V4_MAPPED) == p.pseudonym(V4)


def test_memo_is_bounded() -> None:
    p = Pseudonymiser(KEY, memo_size=8)
    first = p.pseudonym(b"\x00\x00\x00\x00")
    for i in range(100):
        p.pseudonym(i.to_bytes(4, "big"))
    assert len(p._memo) == 8
    assert p.pseudonym(b"\x00\x00\x00\x00") == first  # recomputed identically after eviction


def test_short_key_is_refused() -> None:
    with pytest.raises(ValueError):
        Pseudonymiser(b"short")


def test_key_file_is_created_with_mode_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "pseudonym.key"
    key = load_or_create_key(path)
    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["pseudonym.key"]  # no temporary left behind


def test_key_file_creation_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "pseudonym.key"
        load_or_create_key(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_key_file_accessible_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(KEY)
    path.chmod(mode)
    with pytest.raises(
        KeyFileError, match=f"accessible by group/others \\(mode {mode:04o}\\); run: chmod 600"
    ):
        load_or_create_key(path)


def test_key_file_of_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(b"x" * 10)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="holds 10 bytes, expected 32"):
        load_or_create_key(path)


def test_key_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_or_create_key(path)


def test_existing_key_file_is_read_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, KEY)
    os.close(fd)
    assert load_or_create_key(path) == KEY
