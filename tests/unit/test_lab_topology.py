"""The lab's plan: every address unique and inside the documentation or pool
ranges, names the kernel accepts, node configs and resources that meshroute's
own loaders accept, and the BGP wiring each topology promises, on one address
family or on both."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from netaddr import IPAddress, IPNetwork

from bgpd.bird_config import BgpNeighbor
from lab.dual_homed import plan_topology
from lab.kernel import kernel_has_module
from lab.topology import (
    CLUSTER_AS,
    DUAL_STACK_TOPOLOGIES,
    MGMT_NET,
    NO_IPIP,
    POOL6_BLOCK,
    POOL6_CIDR,
    RACK_SPACE,
    RACK_SPACE6,
    RR_CLUSTER_ID,
    TOPOLOGIES,
    TRANSIT_SPACE,
    TRANSIT_SPACE6,
    LabParams,
    LabPlan,
    decide_encap,
    finish_node_config,
    plan_lab,
    tor_as,
)
from meshroute.node.config import parse_node_config
from meshroute.resources import (
    BGPConfigurationResource,
    BGPPeerResource,
    IPPoolResource,
    parse_documents,
)

SHAPES = [(1, 1), (2, 2), (3, 4), (4, 19)]


def _addresses(plan: LabPlan) -> list[tuple[str, str | None]]:
    """(address, point-to-point peer) of every bridge and veth end, both families."""
    out: list[tuple[str, str | None]] = [
        (a, None) for b in plan.bridges for a in (b.address, b.address6) if a
    ]
    for v in plan.veths:
        ends = ((v.a_address, v.a_peer), (v.b_address, v.b_peer))
        ends += ((v.a_address6, None), (v.b_address6, None))
        out += [(a, p) for a, p in ends if a]
    return out


@pytest.mark.parametrize("dual_stack", [False, True])
@pytest.mark.parametrize("placement", ["root", "netns"])
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize(("racks", "per_rack"), SHAPES)
def test_addresses_names_and_configs(
    topology: str, racks: int, per_rack: int, placement: str, dual_stack: bool
) -> None:
    params = LabParams(
        topology=topology,  # type: ignore[arg-type]
        racks=racks,
        nodes_per_rack=per_rack,
        run_dir="/run/x",
        node_placement=placement,  # type: ignore[arg-type]
        dual_stack=dual_stack,
    )
    if dual_stack and topology == "dual-homed":
        with pytest.raises(ValueError, match="dual-homed topology is IPv4 only"):
            plan_topology(params)
        return
    plan = plan_topology(params)
    assert ("mgmt" in [n.label for n in plan.namespaces]) == (placement == "netns")
    assert (plan.etcd_endpoint is None) == (placement == "root")
    assert len(plan.nodes) == racks * per_rack
    addrs = _addresses(plan)
    # one address on several point-to-point links is fine, each to its own peer
    assert len({(a.split("/")[0], p) for a, p in addrs}) == len(addrs)
    allowed = (RACK_SPACE, TRANSIT_SPACE, MGMT_NET, RACK_SPACE6, TRANSIT_SPACE6)
    assert all(any(IPNetwork(a).ip in net for net in allowed) for a, _ in addrs)
    assert all(IPNetwork(p).ip in RACK_SPACE for _, p in addrs if p)
    # both ends of every link, and every rack segment, on both families or on IPv4 only
    assert any(":" in a for a, _ in addrs) == dual_stack
    for ns in plan.namespaces:
        assert (ns.default_via6 is not None) == (dual_stack and ns.default_via is not None)

    labels = [n.label for n in plan.namespaces]
    assert len(set(labels)) == len(labels)
    for v in plan.veths:
        assert {v.a_ns, v.b_ns} <= set(labels)
        assert max(len(v.a_if), len(v.b_if)) <= 15  # IFNAMSIZ
    per_ns_ifs = [(v.a_ns, v.a_if) for v in plan.veths] + [(v.b_ns, v.b_if) for v in plan.veths]
    assert len(set(per_ns_ifs)) == len(per_ns_ifs)

    etcd = plan.etcd_endpoint or "127.0.0.1:40000"
    configs = [
        parse_node_config(
            yaml.safe_dump(
                finish_node_config(
                    n,
                    plan.params.node_placement,
                    etcd_endpoint=etcd,
                    netns=f"mrlab1-{i}-{n.ns}",
                    http_port=None if placement == "netns" else 40001 + i,
                )
            ),
            n.name,
        )
        for i, n in enumerate(plan.nodes)
    ]
    for key in (
        lambda c: c.ipam.socket,
        lambda c: c.bgp.work_dir,
        lambda c: c.http.listen,
        lambda c: c.node_name,
    ):
        assert len({key(c) for c in configs}) == len(configs)
    for n, c in zip(plan.nodes, configs, strict=True):
        assert c.labels == {"rack": f"r{n.rack}"}
        assert c.ipam.l2_segment is False  # routed pods by default
        assert c.etcd.endpoints == [etcd]
        assert (c.netns is not None) == (placement == "root")
        assert c.ipam.socket.startswith("/run/x/") and c.bgp.work_dir.startswith("/run/x/")
        assert str(c.ipv4) == n.address
        # a node's gateway is its ToR, on its own subnet
        assert IPNetwork(f"{n.gateway}/26") == IPNetwork(n.address).cidr
        if dual_stack:
            assert str(c.ipv6) == n.address6 and n.gateway6 is not None
            assert IPNetwork(f"{n.gateway6}/64") == IPNetwork(str(n.address6)).cidr
        else:
            assert c.ipv6 is None and n.address6 is None
    if plan.etcd_endpoint:
        assert plan.etcd_endpoint.split(":")[0] in MGMT_NET

    loaded = parse_documents(plan.resources_yaml, "lab.yaml")
    kinds = [type(x.resource) for x in loaded]
    assert kinds.count(IPPoolResource) == 1 + dual_stack
    assert kinds.count(BGPConfigurationResource) == 1


def test_tor_topology_peers_each_node_with_its_own_tor() -> None:
    plan = plan_lab(LabParams(topology="tor", racks=2, nodes_per_rack=3, bgp_password="pw"))
    ases = [n.as_number for n in plan.nodes]
    assert len(set(ases)) == len(ases) and CLUSTER_AS not in ases
    docs = {x.resource.metadata.name: x.resource for x in parse_documents(plan.resources_yaml, "y")}
    bgpconf = docs["default"]
    assert isinstance(bgpconf, BGPConfigurationResource)
    assert bgpconf.spec.node_to_node_mesh_enabled is False
    assert bgpconf.spec.node_as_numbers == {n.name: n.as_number for n in plan.nodes}
    pool = docs["lab-pods"]
    assert isinstance(pool, IPPoolResource) and pool.spec.vxlan_mode.value == "Never"
    for r in (1, 2):
        tor = next(s for s in plan.speakers if s.ns == f"r{r}-tor")
        assert tor.bird.local_as == tor_as(r)
        node_peers = {nb.address: nb for nb in tor.bird.neighbors if nb.name.startswith("node_")}
        rack_nodes = [n for n in plan.nodes if n.rack == r]
        assert set(node_peers) == {n.ip for n in rack_nodes}
        for n in rack_nodes:
            nb = node_peers[n.ip]
            assert nb.peer_as == n.as_number and nb.password == "pw" and nb.passive
        peer = docs[f"rack{r}-tor"]
        assert isinstance(peer, BGPPeerResource)
        assert str(peer.spec.peer_ip) == rack_nodes[0].gateway == tor.bird.router_id
        assert peer.spec.as_number == tor_as(r) and peer.spec.node_selector == f"rack == 'r{r}'"
        assert peer.spec.password == "pw"
        # ToRs carry pod routes to the fabric and into their kernel
        assert tor.bird.kernel_export_bgp and any(nb.name == "spine" for nb in tor.bird.neighbors)


@pytest.mark.parametrize("racks", [1, 2, 3])
def test_rr_topology_has_a_reflector_pair_with_one_cluster_id(racks: int) -> None:
    plan = plan_lab(LabParams(topology="rr", racks=racks))
    # meshroute reflectors, not hand-written BIRD reflectors
    assert not [s for s in plan.speakers if s.role == "reflector"]
    rrs = plan.reflectors
    assert len(rrs) == 2
    assert {r.cluster_id for r in rrs} == {RR_CLUSTER_ID}
    assert rrs[0].ip != rrs[1].ip and rrs[0].socket_path != rrs[1].socket_path
    assert {r.ns for r in rrs} <= {n.label for n in plan.namespaces}
    docs = [x.resource for x in parse_documents(plan.resources_yaml, "y")]
    (peer,) = [d for d in docs if isinstance(d, BGPPeerResource)]
    # every node peers with whatever registers as a reflector
    assert peer.spec.peer_selector == "route-reflector == 'true'"
    assert peer.spec.node_selector == "!has(route-reflector)"
    conf = next(d for d in docs if isinstance(d, BGPConfigurationResource))
    assert conf.spec.node_to_node_mesh_enabled is False
    assert conf.spec.as_number == CLUSTER_AS


def test_mesh_topology_leaves_bgp_to_the_nodes() -> None:
    plan = plan_lab(LabParams(topology="mesh"))
    for s in plan.speakers:
        assert not any(nb.name.startswith("node_") for nb in s.bird.neighbors)
    docs = [x.resource for x in parse_documents(plan.resources_yaml, "y")]
    conf = next(d for d in docs if isinstance(d, BGPConfigurationResource))
    pool = next(d for d in docs if isinstance(d, IPPoolResource))
    assert conf.spec.node_to_node_mesh_enabled and not conf.spec.node_as_numbers
    assert pool.spec.vxlan_mode.value == "CrossSubnet"  # other racks are other subnets
    assert not any(isinstance(d, BGPPeerResource) for d in docs)
    assert {n.as_number for n in plan.nodes} == {CLUSTER_AS}


def test_pods_and_http_ports() -> None:
    plan = plan_lab(LabParams(racks=2, nodes_per_rack=2, pods_per_node=3))
    pods = [p for n in plan.nodes for p in n.pods]
    assert len(pods) == 12
    assert len({p.label for p in pods}) == 12 and len({p.container_id for p in pods}) == 12
    assert len({n.http_port for n in plan.nodes}) == 4


@pytest.mark.parametrize(
    ("params", "words"),
    [
        (LabParams(topology="star"), "topology"),  # type: ignore[arg-type]
        (LabParams(racks=0), "racks"),
        (LabParams(racks=5), "racks"),
        (LabParams(nodes_per_rack=20), "nodes_per_rack"),
        (LabParams(pods_per_node=61), "pods_per_node"),
        (LabParams(node_placement="vm"), "node_placement"),  # type: ignore[arg-type]
    ],
)
def test_bad_parameters_are_named(params: LabParams, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        plan_lab(params)


def test_plan_is_deterministic() -> None:
    a, b = (plan_lab(LabParams(topology="rr", racks=3)) for _ in range(2))
    assert a == b


def test_bridge_pod_mode_puts_the_nodes_on_an_l2_segment() -> None:
    plan = plan_lab(LabParams(pod_mode="bridge"))
    assert all(n.config["ipam"]["l2Segment"] is True for n in plan.nodes)
    assert LabParams(pod_mode="vlan").problems() == [  # type: ignore[arg-type]
        "pod_mode 'vlan': routed or bridge"
    ]


def test_encap_auto_prefers_ipip_and_falls_back_to_vxlan_saying_so() -> None:
    assert decide_encap("auto", kernel_has_ipip=True) == ("ipip", None)
    assert decide_encap("auto", kernel_has_ipip=False) == ("vxlan", NO_IPIP)
    assert NO_IPIP == "this kernel has no ipip module: VXLAN CrossSubnet instead"
    assert decide_encap("vxlan", kernel_has_ipip=True) == ("vxlan", None)
    assert decide_encap("ipip", kernel_has_ipip=True) == ("ipip", None)
    with pytest.raises(ValueError, match="no ipip module"):
        decide_encap("ipip", kernel_has_ipip=False)
    with pytest.raises(ValueError, match="one of auto, ipip, vxlan"):
        decide_encap("gre", kernel_has_ipip=True)


@pytest.mark.parametrize("topology", ["mesh", "rr", "tor"])
@pytest.mark.parametrize("encap", ["ipip", "vxlan"])
def test_the_pool_tunnels_cross_subnet_with_the_chosen_encap(topology: str, encap: str) -> None:
    plan = plan_lab(LabParams(topology=topology, encap=encap))  # type: ignore[arg-type]
    docs = [x.resource for x in parse_documents(plan.resources_yaml, "y")]
    pool = next(d for d in docs if isinstance(d, IPPoolResource))
    modes = (pool.spec.ipip_mode.value, pool.spec.vxlan_mode.value)
    if topology == "tor":  # the fabric carries pod routes
        assert modes == ("Never", "Never")
    else:
        assert modes == (("CrossSubnet", "Never") if encap == "ipip" else ("Never", "CrossSubnet"))
    assert LabParams(encap="gre").problems() == ["encap 'gre': ipip or vxlan"]  # type: ignore[arg-type]


def test_kernel_module_is_found_loaded_built_in_or_loadable(tmp_path: Path) -> None:
    (tmp_path / "vxlan").mkdir()
    assert kernel_has_module("vxlan", tmp_path, loadable=lambda m: False)
    assert kernel_has_module("ipip", tmp_path, loadable=lambda m: m == "ipip")
    assert not kernel_has_module("ipip", tmp_path, loadable=lambda m: False)


def _pools(plan: LabPlan) -> dict[int, IPPoolResource]:
    docs = [x.resource for x in parse_documents(plan.resources_yaml, "y")]
    return {p.spec.cidr.version: p for p in docs if isinstance(p, IPPoolResource)}


@pytest.mark.parametrize("topology", ["mesh", "rr", "tor"])
@pytest.mark.parametrize("encap", ["ipip", "vxlan"])
def test_the_ipv6_pool_uses_vxlan_or_direct_routes_never_ipip(topology: str, encap: str) -> None:
    plan = plan_lab(LabParams(topology=topology, encap=encap, dual_stack=True))  # type: ignore[arg-type]
    pool6 = _pools(plan)[6].spec
    assert pool6.cidr == POOL6_CIDR and pool6.block_size == POOL6_BLOCK
    tunnel = "Never" if topology == "tor" else "CrossSubnet"
    assert (pool6.ipip_mode.value, pool6.vxlan_mode.value) == ("Never", tunnel)
    assert set(_pools(plan_lab(LabParams(topology=topology)))) == {4}  # type: ignore[arg-type]


def _v6_sessions(neighbors: tuple[BgpNeighbor, ...]) -> dict[str, str]:
    return {nb.name: nb.address for nb in neighbors if IPAddress(nb.address).version == 6}


@pytest.mark.parametrize("topology", DUAL_STACK_TOPOLOGIES)
def test_dual_stack_routers_have_ipv6_sessions_of_their_own(topology: str) -> None:
    """The fabric speaks IPv6 on IPv6 sessions (router-ToR), carrying the
    racks' IPv6 subnets and the IPv6 pool's routes; in ``tor`` each ToR also
    has an IPv6 session per node of its rack, which the nodes find through a
    second BGPPeer naming the ToR's IPv6 address."""
    plan = plan_lab(LabParams(topology=topology, racks=2, nodes_per_rack=2, dual_stack=True))  # type: ignore[arg-type]
    router = next(s for s in plan.speakers if s.ns == "router").bird
    assert router.ipv6 and set(_v6_sessions(router.neighbors)) == {"tor1_v6", "tor2_v6"}
    docs = {x.resource.metadata.name: x.resource for x in parse_documents(plan.resources_yaml, "y")}
    for r in (1, 2):
        tor = next(s for s in plan.speakers if s.ns == f"r{r}-tor").bird
        rack_nodes = [n for n in plan.nodes if n.rack == r]
        v6 = _v6_sessions(tor.neighbors)
        expected = {"spine_v6"}
        if topology == "tor":
            expected |= {f"node_r{r}_n{n.index}_v6" for n in rack_nodes}
            assert {v6[f"node_r{r}_n{n.index}_v6"] for n in rack_nodes} == {
                n.ip6 for n in rack_nodes
            }
            peer6 = docs[f"rack{r}-tor6"]
            assert isinstance(peer6, BGPPeerResource)
            assert str(peer6.spec.peer_ip) == rack_nodes[0].gateway6
        assert tor.ipv6 and set(v6) == expected
        for nb in tor.neighbors:
            assert nb.channels == (f"ipv{IPAddress(nb.address).version}",)
        fabric = next(f for f in tor.filters if f.name == "fabric")
        accepted = {IPNetwork(p.cidr).cidr for p in fabric.accept}
        assert {POOL6_CIDR, IPNetwork(f"{rack_nodes[0].gateway6}/64").cidr} <= accepted
    if topology == "rr":
        assert all(r.address6 and IPNetwork(r.address6).ip in RACK_SPACE6 for r in plan.reflectors)
    else:
        assert not plan.reflectors


@pytest.mark.parametrize("topology", DUAL_STACK_TOPOLOGIES)
def test_multiprotocol_carries_ipv6_on_the_ipv4_sessions(topology: str) -> None:
    """``ipv6_transport="MultiProtocol"``: no IPv6 session towards a node
    (no IPv6 ToR peer); a ToR's IPv4 session with a node has an IPv6 channel
    too, with the ToR's rack address as the IPv6 next hop it sets. The
    fabric's own IPv6 sessions stay."""
    plan = plan_lab(
        LabParams(topology=topology, dual_stack=True, ipv6_transport="MultiProtocol")  # type: ignore[arg-type]
    )
    docs = [x.resource for x in parse_documents(plan.resources_yaml, "y")]
    conf = next(d for d in docs if isinstance(d, BGPConfigurationResource))
    assert conf.spec.ipv6_transport == "MultiProtocol"
    peers = [d for d in docs if isinstance(d, BGPPeerResource)]
    assert all(p.spec.peer_ip is None or p.spec.peer_ip.version == 4 for p in peers)
    for r in (1, 2):
        tor = next(s for s in plan.speakers if s.ns == f"r{r}-tor").bird
        assert set(_v6_sessions(tor.neighbors)) == {"spine_v6"}
        to_nodes = [nb for nb in tor.neighbors if nb.name.startswith("node_")]
        assert len(to_nodes) == (2 if topology == "tor" else 0)
        gateway6 = next(n.gateway6 for n in plan.nodes if n.rack == r)
        for nb in to_nodes:
            assert nb.channels == ("ipv4", "ipv6") and nb.next_hop_ipv6 == gateway6


def test_ipv6_transport_is_checked() -> None:
    assert LabParams(ipv6_transport="MultiProtocol").problems() == [
        "ipv6_transport MultiProtocol: only in a dual-stack lab"
    ]
    assert LabParams(dual_stack=True, ipv6_transport="Both").problems() == [  # type: ignore[arg-type]
        "ipv6_transport 'Both': IPv6Peers or MultiProtocol"
    ]
    peers = plan_lab(LabParams(topology="tor", dual_stack=True)).resources_yaml
    assert "ipv6Transport: IPv6Peers" in peers
