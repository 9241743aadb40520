"""The bulk netlink path in a real network namespace, cross-checked against
what pyroute2 and ``ip route show`` read back."""

from __future__ import annotations

import errno
import json

import pytest
from pyroute2 import IPRoute

from felix_lite.model import DEFAULT_PROTO
from felix_lite.netlink_bulk import OP_ADD, OP_DELETE, OP_REPLACE, BulkRoutes
from lab.netns import Netns, NetnsFactory
from rtnetlink import routes as nr
from rtnetlink import wire as nw

pytestmark = pytest.mark.netns
PROTO = DEFAULT_PROTO


def _host(netns: NetnsFactory) -> tuple[Netns, int]:
    """A namespace with v0 (192.0.2.1/24, 2001:db8:1::1/64) and its veth peer."""
    ns = netns.new("bulk")
    ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ns.ip("link", "set", "v0", "up")
    ns.ip("link", "set", "v1", "up")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "v0")
    ns.ip("addr", "add", "2001:db8:1::1/64", "dev", "v0", "nodad")
    return ns, int(ns.ip("-o", "link", "show", "v0").split(":")[0])


def _routes(oif: int) -> list[nr.WireRoute]:
    """Every route form felix_lite writes, several of each."""
    v4, v6 = nw.AF_INET, nw.AF_INET6
    out = []
    for i in range(40):
        out.append(nr.WireRoute(v4, f"10.244.{i}.0", 26, gateway="192.0.2.2", oif=oif, proto=PROTO))
        out.append(
            nr.WireRoute(
                v4,
                f"10.245.{i}.0",
                26,
                gateway="198.51.100.7",
                oif=oif,
                flags=nr.RTNH_F_ONLINK,
                mtu=1430,
                proto=PROTO,
            )
        )
        out.append(
            nr.WireRoute(
                v4,
                f"10.246.{i}.0",
                26,
                multipath=(
                    nr.WireNexthop("192.0.2.2", oif),
                    nr.WireNexthop("192.0.2.3", oif, hops=2),
                ),
                proto=PROTO,
            )
        )
        out.append(nr.WireRoute(v4, f"10.247.{i}.0", 26, type=nr.RTN_BLACKHOLE, proto=PROTO))
        out.append(
            nr.WireRoute(
                v4, f"10.248.{i}.0", 26, gateway="192.0.2.2", oif=oif, table=1000, proto=PROTO
            )
        )
        out.append(
            nr.WireRoute(
                v6,
                f"fd00:244:{i + 1:x}::",
                122,
                gateway="2001:db8:1::2",
                oif=oif,
                mtu=1400,
                proto=PROTO,
            )
        )
        out.append(
            nr.WireRoute(
                v6,
                f"fd00:245:{i + 1:x}::",
                122,
                gateway="2001:db8:9::9",
                oif=oif,
                flags=nr.RTNH_F_ONLINK,
                proto=PROTO,
            )
        )
        out.append(
            nr.WireRoute(
                v6,
                f"fd00:246:{i + 1:x}::",
                122,
                multipath=(
                    nr.WireNexthop("2001:db8:1::2", oif),
                    nr.WireNexthop("2001:db8:1::3", oif, hops=1),
                ),
                proto=PROTO,
            )
        )
        out.append(
            nr.WireRoute(v6, f"fd00:247:{i + 1:x}::", 122, type=nr.RTN_BLACKHOLE, proto=PROTO)
        )
    return out


def _pyroute2_view(ns: Netns) -> set[nr.WireRoute]:
    """The owned routes as pyroute2 decodes the kernel's dump."""
    got = set()
    with IPRoute(netns=ns.name, flags=0) as ipr:
        for family in (nw.AF_INET, nw.AF_INET6):
            for m in ipr.get_routes(family=family, proto=PROTO):
                if m["proto"] != PROTO:
                    continue
                metrics = m.get_attr("RTA_METRICS")
                mp = m.get_attr("RTA_MULTIPATH") or []
                blackhole = m["type"] == nr.RTN_BLACKHOLE
                got.add(
                    nr.WireRoute(
                        family=family,
                        dst=m.get_attr("RTA_DST"),
                        dst_len=m["dst_len"],
                        type=m["type"],
                        gateway=m.get_attr("RTA_GATEWAY"),
                        oif=None if blackhole else m.get_attr("RTA_OIF"),
                        flags=m["flags"],
                        multipath=tuple(
                            nr.WireNexthop(
                                h.get_attr("RTA_GATEWAY"), h["oif"], h["flags"], h["hops"]
                            )
                            for h in mp
                        ),
                        mtu=metrics.get_attr("RTAX_MTU") if metrics else None,
                        proto=m["proto"],
                        table=m.get_attr("RTA_TABLE"),
                    )
                )
    return got


IpRow = tuple[str, str, str, tuple[str, ...], int | None]


def _ip_view(ns: Netns) -> set[IpRow]:
    """(dst, type, table, gateways, mtu) as ``ip route show proto PROTO`` prints them."""
    out = set()
    for fam in ("-4", "-6"):
        for r in json.loads(ns.ip("-j", fam, "route", "show", "proto", str(PROTO), "table", "all")):
            gws = tuple(sorted(h["gateway"] for h in r.get("nexthops", [])))
            if "gateway" in r:
                gws = (r["gateway"],)
            mtu = next((m["mtu"] for m in r.get("metrics", []) if "mtu" in m), None)
            out.add((r["dst"], r.get("type", "unicast"), str(r.get("table", "main")), gws, mtu))
    return out


def _ip_expect(routes: list[nr.WireRoute]) -> set[IpRow]:
    out = set()
    for r in routes:
        gws = (r.gateway,) if r.gateway else tuple(sorted(h.gateway or "" for h in r.multipath))
        kind = "blackhole" if r.type == nr.RTN_BLACKHOLE else "unicast"
        table = "main" if r.table == 254 else str(r.table)
        out.add((f"{r.dst}/{r.dst_len}", kind, table, gws, r.mtu))
    return out


def test_bulk_install_reads_back_the_same_through_pyroute2_ip_and_our_dump(netns):
    ns, oif = _host(netns)
    routes = _routes(oif)
    # Small batches so that many send()s, each ACKed only at its end, are used.
    with BulkRoutes(ns.name, batch_msgs=50) as bulk:
        assert bulk.apply([(OP_REPLACE, r) for r in routes]) == []
        assert bulk.batches_sent == -(-len(routes) // 50)
        dumped = set(bulk.dump_all(PROTO))
    assert len(dumped) == len(routes)
    assert dumped == set(routes)
    assert _pyroute2_view(ns) == set(routes)
    assert _ip_view(ns) == _ip_expect(routes)


def test_frames_are_the_messages_back_to_back_acked_only_at_each_end(netns):
    ns, oif = _host(netns)
    routes = _routes(oif)
    items = [(OP_ADD, nr.encode_route_body(r)) for r in routes[:7]]
    items.append((OP_DELETE, nr.encode_delete_body(routes[0])))
    items.append((OP_REPLACE, nr.encode_route_body(routes[1])))
    ops, bodies = [op for op, _ in items], [b for _, b in items]
    with BulkRoutes(ns.name, batch_msgs=4, batch_bytes=10_000) as bulk:
        frames = bulk.frame(ops, bodies)
    assert [(f.first, f.count) for f in frames] == [(0, 4), (4, 4), (8, 1)]
    for f in frames:
        assert f.base > 0  # each frame's own block: seqs never repeat
        expect = []
        for j in range(f.count):
            op, _body = items[f.first + j]
            ack = j == f.count - 1
            seq = f.base + j
            r = routes[f.first + j] if f.first + j < 7 else routes[f.first + j - 7]
            if op == OP_DELETE:
                expect.append(nr.encode_del_route(r, seq, ack=ack))
            else:
                expect.append(nr.encode_new_route(r, seq, replace=op == OP_REPLACE, ack=ack))
        assert f.data == b"".join(expect)
    # a batch closes once it holds batch_bytes, whatever batch_msgs allows
    with BulkRoutes(ns.name, batch_bytes=1) as bulk:
        assert [(f.first, f.count) for f in bulk.frame(ops, bodies)] == [(i, 1) for i in range(9)]


def test_a_batch_of_one_shape_is_framed_as_any_other(netns):
    ns, oif = _host(netns)
    routes = [
        nr.WireRoute(nw.AF_INET, f"10.244.{i}.0", 26, gateway="192.0.2.2", oif=oif, proto=PROTO)
        for i in range(10)
    ]
    bodies = [nr.encode_route_body(r) for r in routes]
    size = nw.HDR_LEN + len(bodies[0])
    # cut by count, then by bytes (a frame takes messages while under batch_bytes)
    for batch_msgs, batch_bytes, cuts in (
        (4, 10_000, [(0, 4), (4, 4), (8, 2)]),
        (100, 2 * size + 1, [(0, 3), (3, 3), (6, 3), (9, 1)]),
    ):
        with BulkRoutes(ns.name, batch_msgs=batch_msgs, batch_bytes=batch_bytes) as bulk:
            frames = bulk.frame([OP_REPLACE] * len(bodies), bodies)
            assert [(f.first, f.count) for f in frames] == cuts
            for f in frames:
                assert f.data == b"".join(
                    nr.encode_new_route(routes[f.first + j], f.base + j, ack=j == f.count - 1)
                    for j in range(f.count)
                )
            assert bulk.send_frames(frames) == []
            assert set(bulk.dump_all(PROTO)) == set(routes)
            deletes = [nr.encode_delete_body(r) for r in routes]
            assert bulk.send_frames(bulk.frame([OP_DELETE] * len(deletes), deletes)) == []
            assert list(bulk.dump_all(PROTO)) == []


def test_one_bad_route_in_a_batch_fails_alone_with_its_own_errno(netns):
    ns, oif = _host(netns)
    good = [
        nr.WireRoute(nw.AF_INET, f"10.244.{i}.0", 24, gateway="192.0.2.2", oif=oif, proto=PROTO)
        for i in range(60)
    ]
    off_subnet = nr.WireRoute(
        nw.AF_INET, "10.250.0.0", 24, gateway="198.51.100.7", oif=oif, proto=PROTO
    )
    no_device = nr.WireRoute(nw.AF_INET, "10.251.0.0", 24, oif=9999, proto=PROTO)  # a device route
    ops = [(OP_REPLACE, r) for r in good[:20]]
    ops.append((OP_REPLACE, off_subnet))  # index 20
    ops += [(OP_REPLACE, r) for r in good[20:40]]
    ops.append((OP_REPLACE, no_device))  # index 41
    ops += [(OP_REPLACE, r) for r in good[40:]]
    with BulkRoutes(ns.name) as bulk:
        failures = bulk.apply(ops)
        assert bulk.batches_sent == 1
        assert [(f.index, f.errno) for f in failures] == [
            (20, errno.ENETUNREACH),
            (41, errno.ENODEV),
        ]
        assert failures[0].message == "Nexthop has invalid gateway"  # extended ACK
        assert set(bulk.dump_all(PROTO)) == set(good)
        # the last message of a batch failing is attributed the same way
        last = bulk.apply([(OP_REPLACE, good[0]), (OP_REPLACE, off_subnet)])
        assert [(f.index, f.errno) for f in last] == [(1, errno.ENETUNREACH)]


def test_add_and_delete_never_touch_a_foreign_route(netns):
    ns, oif = _host(netns)
    ns.ip("route", "add", "10.244.7.0/24", "via", "192.0.2.9", "proto", "static")
    foreign_before = ns.ip("route", "show", "10.244.7.0/24")
    ours = nr.WireRoute(nw.AF_INET, "10.244.7.0", 24, gateway="192.0.2.2", oif=oif, proto=PROTO)
    other = nr.WireRoute(nw.AF_INET, "10.244.8.0", 24, gateway="192.0.2.2", oif=oif, proto=PROTO)
    with BulkRoutes(ns.name) as bulk:
        failures = bulk.apply([(OP_ADD, ours), (OP_ADD, other), (OP_DELETE, ours)])
        assert [(f.index, f.errno) for f in failures] == [(0, errno.EEXIST), (2, errno.ESRCH)]
        assert ns.ip("route", "show", "10.244.7.0/24") == foreign_before
        assert list(bulk.dump_all(PROTO)) == [other]
        assert bulk.apply([(OP_DELETE, other)]) == []
        assert list(bulk.dump_all(PROTO)) == []


def test_streaming_dump_yields_chunks_and_skips_foreign_routes(netns):
    ns, oif = _host(netns)
    n = 3000
    routes = [
        nr.WireRoute(
            nw.AF_INET, f"10.{i >> 8}.{i & 255}.0", 24, gateway="192.0.2.2", oif=oif, proto=PROTO
        )
        for i in range(n)
    ]
    foreign = "\n".join(f"route add 172.16.{i}.0/24 via 192.0.2.2 proto static" for i in range(200))
    ns.sh(f"printf '%s\\n' '{foreign}' | ip -batch -")
    with BulkRoutes(ns.name) as bulk:
        assert bulk.apply([(OP_REPLACE, r) for r in routes]) == []
        chunks = list(bulk.dump(PROTO))
        assert len(chunks) > 1  # streamed, one kernel buffer at a time
        assert all(len(c) < n for c in chunks)
        assert sorted((r for c in chunks for r in c), key=lambda r: r.dst) == sorted(
            routes, key=lambda r: r.dst
        )
        # deleting everything through the same path leaves the foreign routes
        assert bulk.apply([(OP_DELETE, r) for r in routes]) == []
        assert list(bulk.dump_all(PROTO)) == []
    assert len(ns.ip("route", "show", "proto", "static").splitlines()) == 200
