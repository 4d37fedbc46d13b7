"""htpasswd files: bcrypt entries as `htpasswd -B` writes them ($2y$), reloaded on change, weak hashes refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import bcrypt
import pytest

from registry.auth import htpasswd
from registry.auth.htpasswd import HtpasswdError, HtpasswdFile, check_password, parse_htpasswd


def bcrypt_entry(user: str, password: str, prefix: str = "$2y$") -> str:
    """What `htpasswd -B` writes: Apache's $2y$ prefix on an ordinary bcrypt hash (low cost: tests stay fast)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{prefix}{hashed[4:]}"


def test_entries_written_by_apache_htpasswd_verify() -> None:
    tool = shutil.which("htpasswd")
    if tool is None:
        pytest.fail("htpasswd is not installed: `apt-get install apache2-utils` (listed in .ci/apt-packages.txt)")
    entry = subprocess.run([tool, "-nbB", "-C", "5", "alice", "secret"], capture_output=True, text=True, check=True)
    assert entry.stdout.startswith("alice:$2y$05$")
    users = parse_htpasswd(entry.stdout, "test")
    assert check_password("secret", users["alice"])
    assert not check_password("Secret", users["alice"])


def test_passwords_over_72_bytes_are_checked_as_bcrypt_does() -> None:
    """bcrypt reads a password's first 72 bytes (Apache's `htpasswd -B` hashes a longer one so); the bcrypt
    package refuses longer ones with ValueError, which the unknown user's dummy check let through (a 500 telling
    unknown users from known ones, and never counted as a failed login)."""
    tool = shutil.which("htpasswd")
    if tool is None:
        pytest.fail("htpasswd is not installed: `apt-get install apache2-utils` (listed in .ci/apt-packages.txt)")
    long = "é" * 50  # 100 bytes
    entry = subprocess.run([tool, "-nbB", "-C", "4", "alice", long], capture_output=True, text=True, check=True)
    users = parse_htpasswd(entry.stdout, "test")
    assert check_password(long, users["alice"])
    assert check_password(long.encode()[:72].decode(), users["alice"])  # what bcrypt compares
    assert not check_password("é" * 35, users["alice"])
    assert not check_password("p" * 1000, None) and not check_password("p" * 1000, users["alice"])


def test_both_bcrypt_prefixes_and_comments() -> None:
    text = "# users\n\n" + bcrypt_entry("a", "pa") + "\n" + bcrypt_entry("b", "pb", "$2b$") + "\n"
    users = parse_htpasswd(text, "test")
    assert check_password("pa", users["a"]) and check_password("pb", users["b"])
    assert not check_password("pa", users["b"])


@pytest.mark.parametrize(
    "line",
    ["alice:$apr1$abc$def", "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "alice:plain", "no-colon", "alice:"],
)
def test_weak_or_malformed_entries_are_refused(line: str) -> None:
    with pytest.raises(HtpasswdError, match="line 1"):
        parse_htpasswd(line, "test")


def test_unknown_user_is_refused() -> None:
    assert not check_password("anything", None)


async def test_file_is_reloaded_when_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(htpasswd, "RECHECK_SECONDS", 0.0)
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_entry("alice", "one") + "\n")
    users = HtpasswdFile(path)
    users.load()
    assert await users.verify("alice", "one")
    generation = users.generation
    path.write_text(bcrypt_entry("alice", "two") + "\n" + bcrypt_entry("bob", "b") + "\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert await users.verify("alice", "two")
    assert not await users.verify("alice", "one")
    assert users.has_user("bob")
    assert users.generation > generation


async def test_a_password_checked_against_an_entry_gets_that_entrys_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark a token carries is the entry the password matched, never one read after the check: a login with
    the old password racing its reset must not get a token the new entry's mark would keep valid."""
    monkeypatch.setattr(htpasswd, "RECHECK_SECONDS", 0.0)
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_entry("alice", "old") + "\n")
    users = HtpasswdFile(path)
    users.load()
    before = users.credential_mark("alice")
    check = htpasswd.check_password

    def reset_during_the_check(password: str, hashed: bytes | None) -> bool:
        matched = check(password, hashed)
        path.write_text(bcrypt_entry("alice", "new") + "\n")  # the admin resets the password meanwhile
        os.utime(path, ns=(1, 1))
        return matched

    monkeypatch.setattr(htpasswd, "check_password", reset_during_the_check)
    assert await users.verified_mark("alice", "old") == before
    after = users.credential_mark("alice")
    assert after is not None and after != before
    monkeypatch.setattr(htpasswd, "check_password", check)
    assert await users.verified_mark("alice", "new") == after
    assert await users.verified_mark("alice", "old") is None
    assert await users.verified_mark("nobody", "old") is None and users.credential_mark("nobody") is None


async def test_a_broken_edit_keeps_the_users_read_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(htpasswd, "RECHECK_SECONDS", 0.0)
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_entry("alice", "one") + "\n")
    users = HtpasswdFile(path)
    users.load()
    path.write_text("alice:$apr1$weak\n")
    os.utime(path, ns=(1, 1))
    assert await users.verify("alice", "one")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HtpasswdError, match=r"auth\.htpasswd\.path"):
        HtpasswdFile(tmp_path / "nope").load()
