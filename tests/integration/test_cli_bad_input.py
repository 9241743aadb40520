"""Bad input through the CLI: a clear message naming the file and field,
a non-zero exit, and nothing half-written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from datastore.etcd import EtcdStore
from ipam.ipam import AssignRequest, Ipam
from lab.etcd import EtcdCluster
from tests.harness.cli import cli

pytestmark = pytest.mark.etcd
REPO = Path(__file__).resolve().parents[2]


def pool(name: str, cidr: str, extra: str = "") -> str:
    return (
        f"apiVersion: meshroute.io/v1\nkind: IPPool\nmetadata: {{name: {name}}}\n"
        f"spec: {{cidr: {cidr}{extra}}}\n"
    )


def pools_in(server: EtcdCluster, prefix: str) -> list[str]:
    out = cli(server, prefix, "get", "pools", "-o", "json")
    assert out.returncode == 0, out.stderr
    return [p["metadata"]["name"] for p in json.loads(out.stdout)]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            pool("bad", "10.300.0.0/16"),
            "document 2 (IPPool bad): spec.cidr: Value error, '10.300.0.0/16' is not a valid CIDR",
        ),
        (pool("bad", "10.9.0.0"), "spec.cidr: Value error, '10.9.0.0' is not a CIDR"),
        (
            pool("bad", "10.9.0.0/16", ", blockSize: 33"),
            "document 2 (IPPool bad): spec.blockSize: 33 is out of range 20..32 for IPv4",
        ),
        (
            pool("bad", "10.9.0.0/16", ", ipipMode: Always, vxlanMode: Always"),
            "spec.ipipMode: ipipMode and vxlanMode cannot both be enabled",
        ),
        (pool("bad", "10.9.0.0/16", ", nodeSelector: \"rack = 'x'\""), "spec.nodeSelector"),
        (pool("bad", "10.9.0.0/16", ", colour: blue"), "spec.colour: Extra inputs"),
        (
            pool("bad", "10.244.128.0/17"),
            "document 2 (IPPool bad): spec.cidr: 10.244.128.0/17 "
            "overlaps pool good (10.244.0.0/16)",
        ),
        ("kind: IPPool\n", "apiVersion: Field required"),
        ("a: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_pool_file_names_file_and_field_and_applies_nothing(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path, doc: str, expected: str
) -> None:
    f = tmp_path / "pools.yaml"
    f.write_text(pool("good", "10.244.0.0/16") + "---\n" + doc)
    r = cli(etcd_server, etcd_prefix, "apply", "-f", str(f))
    assert r.returncode == 1
    assert "nothing applied" in r.stderr and expected in r.stderr, r.stderr
    if "YAML" not in expected:
        assert str(f) in r.stderr
    assert pools_in(etcd_server, etcd_prefix) == []


def test_overlap_with_an_existing_pool_is_refused(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    assert (
        cli(
            etcd_server, etcd_prefix, "apply", "-f", "-", stdin=pool("a", "10.244.0.0/16")
        ).returncode
        == 0
    )
    r = cli(
        etcd_server,
        etcd_prefix,
        "apply",
        "-f",
        "-",
        stdin=pool("c", "10.1.0.0/16") + "---\n" + pool("b", "10.244.64.0/18"),
    )
    assert r.returncode == 1
    assert "document 2 (IPPool b): spec.cidr: 10.244.64.0/18 overlaps existing pool a" in r.stderr
    assert pools_in(etcd_server, etcd_prefix) == ["a"]  # c was not applied either


def test_unreachable_etcd_fails_fast(etcd_prefix: str) -> None:
    t = time.monotonic()
    r = cli("127.0.0.1:1", etcd_prefix, "get", "pools")
    assert r.returncode == 1
    assert "etcd unreachable at 127.0.0.1:1" in r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - t < 10


def test_release_of_unknown_handle_and_address(etcd_server: EtcdCluster, etcd_prefix: str) -> None:
    assert (
        cli(
            etcd_server, etcd_prefix, "apply", "-f", "-", stdin=pool("a", "10.244.0.0/16")
        ).returncode
        == 0
    )
    r = cli(etcd_server, etcd_prefix, "ipam", "release", "--handle", "nope.eth0")
    assert r.returncode == 1 and "handle 'nope.eth0' is unknown: nothing released" in r.stderr
    r = cli(etcd_server, etcd_prefix, "ipam", "release", "--ip", "10.244.3.3")
    assert r.returncode == 1 and "not allocated, nothing released: 10.244.3.3" in r.stderr
    r = cli(etcd_server, etcd_prefix, "ipam", "release", "--ip", "10.244.3.300")
    assert r.returncode == 1 and "--ip" in r.stderr


def test_delete_pool_in_use_is_refused_with_the_way_out(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    assert cli(etcd_server, etcd_prefix, "delete", "pool", "ghost").returncode == 1
    assert (
        cli(
            etcd_server, etcd_prefix, "apply", "-f", "-", stdin=pool("a", "10.244.0.0/16")
        ).returncode
        == 0
    )
    assert cli(etcd_server, etcd_prefix, "delete", "pool", "a").returncode == 0
    assert pools_in(etcd_server, etcd_prefix) == []


def test_bgp_resources_round_trip_and_bad_ones_are_refused(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    ok = cli(etcd_server, etcd_prefix, "apply", "-f", str(REPO / "configs" / "bgp.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "bgppeer/rack1-tor created" in ok.stdout
    peers = json.loads(cli(etcd_server, etcd_prefix, "get", "bgppeers", "-o", "json").stdout)
    assert [p["metadata"]["name"] for p in peers] == ["rack1-tor", "to-reflectors"]
    assert peers[0]["spec"]["peerIP"] == "192.0.2.1" and peers[0]["spec"]["asNumber"] == 65001
    conf = json.loads(cli(etcd_server, etcd_prefix, "get", "bgpconfig", "-o", "json").stdout)
    assert conf[0]["spec"]["communities"] == ["64512:100"]
    bad = (
        "apiVersion: meshroute.io/v1\nkind: BGPPeer\nmetadata: {name: x}\n"
        "spec: {peerIP: 192.0.2.9, peerSelector: \"a == 'b'\", asNumber: 4294967296,"
        " holdTime: 2, nodeSelector: 'rack ~ 1'}\n"
    )
    r = cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=bad)
    assert r.returncode == 1
    for expected in ("spec.asNumber: Input should be less than or equal to 4294967295",):
        assert expected in r.stderr, r.stderr
    bad2 = bad.replace(" asNumber: 4294967296,", " asNumber: 65000,")
    r = cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=bad2)
    for expected in (
        "spec.peerIP: give exactly one of peerIP and peerSelector",
        "spec.holdTime: 2 must be 0 or 3..65535",
        "spec.nodeSelector: unexpected",
    ):
        assert expected in r.stderr, r.stderr
    assert cli(etcd_server, etcd_prefix, "delete", "bgppeer", "rack1-tor").returncode == 0
    assert cli(etcd_server, etcd_prefix, "delete", "bgppeer", "rack1-tor").returncode == 1


def _ipamconfig(name: str, spec: str = "{}") -> str:
    return (
        f"apiVersion: meshroute.io/v1\nkind: IPAMConfiguration\nmetadata: {{name: {name}}}\n"
        f"spec: {spec}\n"
    )


HOSTILE_FILES = {
    "name-10MB": pool("n" * 10_000_000, "10.9.0.0/16").encode(),
    "name-100KB": pool("n" * 100_000, "10.9.0.0/16").encode(),
    "cidr-100KB": pool("bad", "1" * 100_000).encode(),
    "selector-100KB": pool(
        "bad", "10.9.0.0/16", ", nodeSelector: '" + "(" * 100_000 + "'"
    ).encode(),
    "5k-documents": b"---\n{}\n" * 5_000,
    "int-100KB": _ipamconfig("default", "{maxBlocksPerHost: " + "9" * 100_000 + "}").encode(),
    "kind-100KB": b"apiVersion: meshroute.io/v1\nkind: " + b"K" * 100_000 + b"\n",
    "deep-flow": b"a: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "deep-block": b"".join(b"  " * i + b"a:\n" for i in range(5_000)),
    "invalid-utf8": pool("bad", "10.9.0.0/16").encode() + b"# \xff\xfe\n",
    "inf": _ipamconfig("default", "{minBlockAgeSeconds: .inf}").encode(),
    "1e999": _ipamconfig("default", "{minBlockAgeSeconds: 1e999}").encode(),
    "nan": _ipamconfig("default", "{minBlockAgeSeconds: .nan}").encode(),
    "90k-documents": b"".join(
        pool(f"p{i}", f"10.{i // 256 % 256}.{i % 256}.0/24").encode() + b"---\n"
        for i in range(90_000)
    ),
    "ipamconfig-not-default": _ipamconfig("other", "{strictAffinity: true}").encode(),
    "bgpconfig-not-default": (
        b"apiVersion: meshroute.io/v1\nkind: BGPConfiguration\nmetadata: {name: other}\n"
        b"spec: {asNumber: 65000}\n"
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_hostile_files_get_a_short_clear_error(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path, name: str
) -> None:
    f = tmp_path / "hostile.yaml"
    f.write_bytes(pool("good", "10.244.0.0/16").encode() + b"---\n" + HOSTILE_FILES[name])
    t = time.monotonic()
    r = cli(etcd_server, etcd_prefix, "apply", "-f", str(f))
    took = time.monotonic() - t
    assert r.returncode == 1, r.stdout[:300]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "nothing applied" in r.stderr and str(f) in r.stderr, r.stderr[:500]
    assert len(r.stderr) < 2000, r.stderr[:500]
    assert took < 20, took
    assert pools_in(etcd_server, etcd_prefix) == []
    conf = json.loads(cli(etcd_server, etcd_prefix, "get", "ipamconfig", "-o", "json").stdout)
    assert conf[0]["spec"]["strictAffinity"] is False


def test_a_long_name_is_quoted_by_a_short_prefix(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    r = cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=pool("n" * 100_000, "10.9.0.0/16"))
    assert r.returncode == 1
    assert "'nnnnnnnn" in r.stderr and "(100000 characters)" in r.stderr, r.stderr[:500]
    assert "metadata.name" in r.stderr


async def _allocate_one(server: EtcdCluster, prefix: str, pool_name: str) -> None:
    store = EtcdStore([server.endpoint])
    try:
        await Ipam(store, prefix=prefix).assign(AssignRequest("node-a", "c1.eth0"))
    finally:
        await store.close()


async def test_apply_is_all_or_nothing_when_a_check_needs_the_datastore(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    assert (
        cli(
            etcd_server, etcd_prefix, "apply", "-f", "-", stdin=pool("a", "10.244.0.0/16")
        ).returncode
        == 0
    )
    await _allocate_one(etcd_server, etcd_prefix, "a")
    f = tmp_path / "change.yaml"
    f.write_text(
        pool("new", "10.9.0.0/16")
        + "---\n"
        + _ipamconfig("default", "{strictAffinity: true}")
        + "---\n"
        + pool("a", "10.244.0.0/16", ", blockSize: 28")
    )
    r = cli(etcd_server, etcd_prefix, "apply", "-f", str(f))
    assert r.returncode == 1
    assert "nothing applied" in r.stderr
    assert f"{f}: document 3 (IPPool a): spec.blockSize: " in r.stderr, r.stderr
    assert sorted(pools_in(etcd_server, etcd_prefix)) == ["a"]
    conf = json.loads(cli(etcd_server, etcd_prefix, "get", "ipamconfig", "-o", "json").stdout)
    assert conf[0]["spec"]["strictAffinity"] is False


def test_one_resource_twice_in_a_file_is_refused(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    r = cli(
        etcd_server,
        etcd_prefix,
        "apply",
        "-f",
        "-",
        stdin=pool("a", "10.244.0.0/16") + "---\n" + pool("a", "10.9.0.0/16"),
    )
    assert r.returncode == 1
    assert "<stdin>: document 2 (IPPool a): also in document 1" in r.stderr, r.stderr
    assert pools_in(etcd_server, etcd_prefix) == []


def test_a_file_larger_than_one_transaction_is_refused_whole(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    f = tmp_path / "many.yaml"
    f.write_text("---\n".join(pool(f"p{i}", f"10.{i}.0.0/16") for i in range(200)))
    r = cli(etcd_server, etcd_prefix, "apply", "-f", str(f))
    assert r.returncode == 1
    assert "nothing applied" in r.stderr and str(f) in r.stderr, r.stderr
    assert "split" in r.stderr and "--max-txn-ops" in r.stderr, r.stderr
    assert pools_in(etcd_server, etcd_prefix) == []
    half = tmp_path / "half.yaml"
    half.write_text("---\n".join(pool(f"p{i}", f"10.{i}.0.0/16") for i in range(100)))
    ok = cli(etcd_server, etcd_prefix, "apply", "-f", str(half))
    assert ok.returncode == 0, ok.stderr
    assert len(pools_in(etcd_server, etcd_prefix)) == 100


LONG = "x" * 100_000


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ("ipam", "release", "--handle", LONG),
        ("ipam", "release", "--ip", LONG),
        ("delete", "pool", LONG),
        ("delete", "node", LONG),
        ("delete", "bgppeer", LONG),
        ("get", LONG),
        ("ipam", "serve", "--labels", LONG),
        ("--etcd", LONG, "get", "pools"),
    ],
    ids=["handle", "ip", "pool", "node", "bgppeer", "kind", "labels", "etcd"],
)
def test_long_arguments_are_quoted_by_a_short_prefix(
    etcd_server: EtcdCluster, etcd_prefix: str, args: tuple[str, ...]
) -> None:
    r = cli(etcd_server, etcd_prefix, *args)
    assert r.returncode in (1, 2), r.stdout[:300]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(r.stderr) < 2000, r.stderr[:300]
    assert "'xxxxxxxx" in r.stderr, r.stderr[:500]


def bfd_doc(name: str, spec: str = "{}") -> str:
    head = "apiVersion: meshroute.io/v1\nkind: BFDProfile\n"
    return f"{head}metadata: {{name: {name}}}\nspec: {spec}\n"


def test_bfd_profiles_apply_get_delete_and_bad_ones_are_refused(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    peer = (
        "apiVersion: meshroute.io/v1\nkind: BGPPeer\nmetadata: {name: tor}\n"
        "spec: {peerIP: 192.0.2.1, asNumber: 65001, bfdProfile: fast}\n"
    )
    # a peer naming a profile that exists nowhere: nothing applied
    f = tmp_path / "peer.yaml"
    f.write_text(peer)
    r = cli(etcd_server, etcd_prefix, "apply", "-f", str(f))
    assert r.returncode == 1
    assert f"{f}: document 1 (BGPPeer tor): spec.bfdProfile: no BFDProfile named 'fast'" in r.stderr
    assert json.loads(cli(etcd_server, etcd_prefix, "get", "bgppeers", "-o", "json").stdout) == []

    # profile and peer in one file: one transaction writes both
    f.write_text(peer + "---\n" + bfd_doc("fast", "{receiveInterval: 50, transmitInterval: 50}"))
    r = cli(etcd_server, etcd_prefix, "apply", "-f", str(f))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["bfdprofile/fast created", "bgppeer/tor created"]
    got = json.loads(cli(etcd_server, etcd_prefix, "get", "bfdprofiles", "-o", "json").stdout)
    assert got[0]["spec"] == {
        "receiveInterval": 50,
        "transmitInterval": 50,
        "detectMultiplier": 3,
        "passiveMode": False,
        "minimumTtl": 254,
    }
    table = cli(etcd_server, etcd_prefix, "get", "bfdprofiles").stdout
    assert "fast" in table and "MIN_TTL" in table

    bad = bfd_doc(
        "bad",
        "{receiveInterval: 5, transmitInterval: .nan, detectMultiplier: 0,"
        " minimumTtl: 255, echoMode: true}",
    )
    r = cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=bad)
    assert r.returncode == 1
    for expected in (
        "<stdin>: document 1 (BFDProfile bad): spec.receiveInterval: Input should be greater",
        "spec.transmitInterval: Input should be a finite number",
        "spec.detectMultiplier: Input should be greater than or equal to 2",
        "spec.minimumTtl: Input should be less than or equal to 254",
        "spec.echoMode: Extra inputs are not permitted",
    ):
        assert expected in r.stderr, r.stderr
    mesh = (
        "apiVersion: meshroute.io/v1\nkind: BGPConfiguration\nmetadata: {name: default}\n"
        f"spec: {{nodeToNodeMeshBFDProfile: {'x' * 300}}}\n"
    )
    r = cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=mesh)
    assert r.returncode == 1
    assert "spec.nodeToNodeMeshBFDProfile: String should have at most" in r.stderr
    assert "x" * 100 not in r.stderr  # quotes a short prefix at most

    # in use: refused with who uses it; unused: deleted
    r = cli(etcd_server, etcd_prefix, "delete", "bfdprofile", "fast")
    assert r.returncode == 1 and "in use by bgppeer/tor" in r.stderr
    assert cli(etcd_server, etcd_prefix, "delete", "bgppeer", "tor").returncode == 0
    r = cli(etcd_server, etcd_prefix, "delete", "bfdprofile", "fast")
    assert r.returncode == 0 and "bfdprofile/fast deleted" in r.stdout
    assert cli(etcd_server, etcd_prefix, "delete", "bfdprofile", "fast").returncode == 1
