"""WorkloadEndpoint records against the real store (etcd from the fixture,
and the memory twin): written with the handle, holding every address of a
dual-stack pod, deleted with the last address by every release path;
``check`` finds and ``gc`` mends both orphan kinds and stale addresses; a
crash before any transaction of an ADD or DEL leaves nothing ``gc`` cannot
mend; labels change with compare-and-swap writes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from netaddr import IPAddress, IPNetwork

from datastore.port import Compare, KvStore, Op, Put
from ipam.allocator import IpamError
from ipam.check import Finding
from ipam.cni_args import Invalid
from ipam.endpoint import NamedPort, WorkloadEndpoint
from ipam.ipam import AssignRequest, Ipam
from ipam.model import Pool, dumps

POOL4 = Pool("v4", IPNetwork("10.10.0.0/16"), 26)
POOL6 = Pool("v6", IPNetwork("fd00:10::/48"), 122)
HOST = "node-a"
LIVE = {HOST}


def template(cid: str, labels: dict[str, str] | None = None) -> WorkloadEndpoint:
    return WorkloadEndpoint(
        node=HOST,
        namespace="shop",
        pod=f"pod-{cid}",
        container_id=cid,
        ifname="eth0",
        host_iface=f"mr{cid:0>12}"[:14],
        labels=labels if labels is not None else {"app": "web"},
        ports=(NamedPort("http", "TCP", 80),),
    )


def request(cid: str, v6: bool = False, endpoint: bool = True) -> AssignRequest:
    ep = template(cid)
    return AssignRequest(
        host=HOST,
        handle=ep.handle,
        attrs={
            "namespace": ep.namespace,
            "pod": ep.pod,
            "containerId": cid,
            "node": HOST,
            "hostIface": ep.host_iface,
        },
        num_v4=1,
        num_v6=int(v6),
        endpoint=ep if endpoint else None,
    )


async def make_ipam(kv: KvStore, prefix: str) -> Ipam:
    ipam = Ipam(kv, prefix=prefix)
    await ipam.apply_pool(POOL4)
    await ipam.apply_pool(POOL6)
    return ipam


async def records(ipam: Ipam) -> dict[str, WorkloadEndpoint]:
    return {ep.handle: ep for ep, _ in await ipam.endpoints()}


async def test_endpoint_comes_and_goes_with_the_handle(kv: KvStore, etcd_prefix: str) -> None:
    ipam = await make_ipam(kv, etcd_prefix)
    got = await ipam.assign(request("c1", v6=True))
    [ep] = (await records(ipam)).values()
    assert ep.ips == tuple(f"{a.ip}/{32 if a.ip.version == 4 else 128}" for a in got)
    assert ep == WorkloadEndpoint(**{**template("c1").__dict__, "ips": ep.ips})
    assert await ipam.check(LIVE) == []

    await ipam.release_handle("c1.eth0")
    assert await records(ipam) == {}

    # release by address (gc of a gone host, or an operator) frees the last one: record goes too
    got = await ipam.assign(request("c2"))
    await ipam.release_ips([(got[0].ip, None)])
    assert await records(ipam) == {}
    assert await ipam.check(LIVE) == []


async def test_check_and_gc_mend_both_orphan_kinds(kv: KvStore, etcd_prefix: str) -> None:
    ipam = await make_ipam(kv, etcd_prefix)
    # an allocation without a record (an ADD of an older version, or a lost write)
    await ipam.assign(request("lost", endpoint=False))
    # a record without an allocation (a crash while undoing a failed ADD)
    stray = template("stray").with_ips([IPAddress("10.10.9.9")])
    key = ipam.keys.endpoint(HOST, stray.handle)
    assert await kv.txn([Compare(key, 0)], [Put(key, dumps(stray.to_dict()))])
    # a record that names an address its pod does not hold
    await ipam.assign(request("stale"))
    recs = await records(ipam)
    wrong = WorkloadEndpoint(**{**recs["stale.eth0"].__dict__, "ips": ("10.10.8.8/32",)})
    skey = ipam.keys.endpoint(HOST, "stale.eth0")
    await kv.txn([], [Put(skey, dumps(wrong.to_dict()))])

    found = {(i.kind, i.subject) for i in await ipam.check(LIVE)}
    assert found == {
        (Finding.ALLOCATION_WITHOUT_ENDPOINT, f"{HOST}/lost.eth0"),
        (Finding.ENDPOINT_WITHOUT_ALLOCATION, f"{HOST}/stray.eth0"),
        (Finding.ENDPOINT_ADDRESSES_DIFFER, f"{HOST}/stale.eth0"),
    }
    done = {r.subject: outcome for r, outcome in await ipam.gc(LIVE)}
    assert done == {
        f"{HOST}/lost.eth0": "recreated",
        f"{HOST}/stray.eth0": "deleted",
        f"{HOST}/stale.eth0": "rebuilt",
    }
    assert await ipam.check(LIVE) == []
    recs = await records(ipam)
    assert set(recs) == {"lost.eth0", "stale.eth0"}
    lost = recs["lost.eth0"]
    # rebuilt from the allocation's attributes: identity and host end, not labels
    assert (lost.namespace, lost.pod) == ("shop", "pod-lost")
    assert lost.host_iface == template("lost").host_iface
    assert lost.labels == {} and lost.ports == ()
    [addr] = await ipam.addresses_of("lost.eth0")
    assert lost.ips == (f"{addr.ip}/32",)
    assert recs["stale.eth0"].labels == {"app": "web"}, "a rebuild keeps the labels"


async def test_gone_host_takes_its_records_along(kv: KvStore, etcd_prefix: str) -> None:
    ipam = await make_ipam(kv, etcd_prefix)
    await ipam.assign(request("c1", v6=True))
    await ipam.gc(set())  # node-a is gone
    assert await records(ipam) == {}
    assert await ipam.check(set()) == []


class Crash(Exception):
    pass


class CrashingStore:
    """The real store until the n-th transaction, which never happens: the
    process 'dies' right before it."""

    def __init__(self, inner: KvStore, crash_at: int) -> None:
        self.inner = inner
        self.left = crash_at

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> int:
        if self.left == 0:
            raise Crash
        self.left -= 1
        return await self.inner.txn(compares, ops)


@pytest.mark.parametrize("crash_at", range(11))
async def test_crash_before_any_write_is_mended(
    kv: KvStore, etcd_prefix: str, crash_at: int
) -> None:
    """ADD (dual stack, claiming two blocks) then DEL, dying before the
    ``crash_at``-th of its 11 transactions: afterwards records and allocations either
    agree already or ``gc`` makes them agree."""
    await make_ipam(kv, etcd_prefix)
    crashing = Ipam(CrashingStore(kv, crash_at), prefix=etcd_prefix)  # type: ignore[arg-type]
    try:
        await crashing.assign(request("c1", v6=True))
        await crashing.release_handle("c1.eth0", HOST)
    except Crash:
        pass
    ipam = Ipam(kv, prefix=etcd_prefix)
    await ipam.gc(LIVE, pending_grace_s=0)
    assert await ipam.check(LIVE, pending_grace_s=0) == []
    recs = await records(ipam)
    held = await ipam.addresses_of("c1.eth0")
    assert ("c1.eth0" in recs) == bool(held)
    if held:
        assert set(recs["c1.eth0"].ips) == {
            f"{a.ip}/{32 if a.ip.version == 4 else 128}" for a in held
        }


async def test_relabel_pod(kv: KvStore, etcd_prefix: str) -> None:
    ipam = await make_ipam(kv, etcd_prefix)
    await ipam.assign(request("c1"))
    [ep] = await ipam.relabel_pod("shop", "pod-c1", {"tier": "front", "app": "api"}, [])
    assert ep.labels == {"app": "api", "tier": "front"}
    [ep] = await ipam.relabel_pod("shop", "pod-c1", {}, ["app", "absent"])
    assert ep.labels == {"tier": "front"}
    assert (await records(ipam))["c1.eth0"].labels == {"tier": "front"}
    with pytest.raises(IpamError, match="shop/nobody"):
        await ipam.relabel_pod("shop", "nobody", {"a": "b"}, [])
    with pytest.raises(Invalid):
        await ipam.relabel_pod("shop", "pod-c1", {"bad key!": "b"}, [])
    assert (await records(ipam))["c1.eth0"].labels == {"tier": "front"}
