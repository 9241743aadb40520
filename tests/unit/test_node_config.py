"""node.yaml: the shipped example loads; mistakes name the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from netaddr import IPAddress

from meshroute.node.config import load_node_config, parse_node_config
from meshroute.runtime.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_example_config_loads_with_documented_defaults() -> None:
    c = load_node_config(str(REPO / "configs" / "node.yaml"))
    assert c.node_name == "rack1-node1" and c.router_id == IPAddress("192.0.2.11")
    assert c.felix.route_protocol == 213 and c.ipam.socket == "/run/meshroute/ipam.sock"
    assert c.labels == {"rack": "r1"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ipv4: 192.0.2.1/24\n", "node.yaml: nodeName: Field required"),
        (
            "nodeName: n\nipv4: 192.0.2.1\n",
            "node.yaml: ipv4: Value error, '192.0.2.1' is not an address with prefix length",
        ),
        (
            "nodeName: n\nipv4: 192.0.2.1/24\nfelix: {routeProtocol: 999}\n",
            "node.yaml: felix.routeProtocol: Input should be less than or equal to 255",
        ),
        (
            "nodeName: n\nipv4: 192.0.2.1/24\nbgp: {routerid: 1.1.1.1}\n",
            "node.yaml: bgp.routerid: Extra inputs are not permitted",
        ),
        (  # gone: each BGPPeer's gracefulRestartTime says it (120 s for the mesh)
            "nodeName: n\nipv4: 192.0.2.1/24\nbgp: {gracefulRestartSeconds: 120}\n",
            "node.yaml: bgp.gracefulRestartSeconds: Extra inputs are not permitted",
        ),
        ("nodeName: [\n", "node.yaml: not valid YAML"),
        ("- a\n", "node.yaml: expected a mapping"),
    ],
)
def test_config_errors_name_file_and_field(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_node_config(text, "node.yaml")
    assert expected in str(e.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"/nonexistent/node\.yaml: cannot read"):
        load_node_config("/nonexistent/node.yaml")
