"""Resolving BGPPeer passwords (pure), and the file reader's refusals,
none of which quotes the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshroute.bgp_secrets import plan_peer_passwords, read_password_file
from meshroute.resources import BGPPeerSpec, bgp_peer_problems


def peer(**kw: str) -> BGPPeerSpec:
    return BGPPeerSpec.model_validate({"peerIP": "192.0.2.1", "asNumber": 65001, **kw})


def test_each_source_ends_as_the_inline_password() -> None:
    peers = {
        "literal": peer(password="lit"),
        "file": peer(passwordFile="/s/f"),
        "secret": peer(passwordSecret="s1"),
        "none": peer(),
    }
    r = plan_peer_passwords(peers, {"/s/f": "from-file"}, {"s1": "from-etcd"})
    assert {n: p.password for n, p in r.peers.items()} == {
        "literal": "lit",
        "file": "from-file",
        "secret": "from-etcd",
        "none": None,
    }
    assert all(p.password_file is None and p.password_secret is None for p in r.peers.values())
    assert r.problems == () and r.files == frozenset({"/s/f"})


def test_a_peer_without_its_password_is_left_out_and_named() -> None:
    peers = {
        "a": peer(passwordFile="/s/a"),
        "b": peer(passwordSecret="gone"),
        "c": peer(passwordSecret="bad"),
        "ok": peer(),
    }
    files = {"/s/a": ValueError("passwordFile /s/a: cannot read: No such file or directory")}
    r = plan_peer_passwords(peers, files, {"gone": None, "bad": 'has"quote'})
    assert list(r.peers) == ["ok"]
    assert r.problems == (
        "BGPPeer a: passwordFile /s/a: cannot read: No such file or directory;"
        " its sessions are left out",
        "BGPPeer b: passwordSecret gone: no such secret; its sessions are left out",
        "BGPPeer c: passwordSecret bad: only printable ASCII without double quote or"
        " backslash is accepted; its sessions are left out",
    )
    assert r.files == frozenset({"/s/a"})


def test_the_password_file_reader(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    assert read_password_file(str(f)) == "s3cret"
    for content, why in (
        (b"", "empty"),
        (b"x" * 81, "longer than 80"),
        (b"tab\there", "printable ASCII"),
        (b"\xff\xfe" * 10, "printable ASCII"),
        (b"A" * 10_000_000, "larger than 4096 bytes"),
    ):
        f.write_bytes(content)
        with pytest.raises(ValueError, match=why) as e:
            read_password_file(str(f))
        assert str(f) in str(e.value) and "there" not in str(e.value)


def test_one_password_source_per_peer_and_files_are_absolute() -> None:
    assert bgp_peer_problems(peer(password="a", passwordSecret="b")) == [
        "spec.password: give one of password, passwordFile and passwordSecret"
    ]
    with pytest.raises(ValueError, match="passwordFile"):
        peer(passwordFile="relative/path")
    with pytest.raises(ValueError, match="passwordSecret"):
        peer(passwordSecret="../x")
    assert "lit" not in repr(peer(password="lit"))
