"""The lab summary's table of the nodes' own BGP sessions, from the peer
table of each node's ``/status`` (shape as ``NodeProcess.status`` writes it)."""

from __future__ import annotations

import json

from lab.status import NodeSession, format_node_sessions, parse_node_status

STATUS = {
    "node": "rack1-node1",
    "asn": 64512,
    "routerId": "192.0.2.11",
    "ready": True,
    "peers": [
        {
            "peer": "192.0.2.1",
            "asn": 65001,
            "type": "node specific",
            "state": "established",
            "since": 1.0,
            "accepted": 3,
            "received": 3,
            "rejected": {},
        },
        {
            "peer": "192.0.2.12",
            "asn": 64512,
            "type": "node-to-node mesh",
            "state": "connect",
            "since": 2.0,
            "accepted": 0,
            "received": 0,
            "rejected": {},
        },
    ],
}


def test_parse_node_status() -> None:
    assert parse_node_status(json.dumps(STATUS).encode()) == [
        NodeSession("192.0.2.1", "node specific", "established"),
        NodeSession("192.0.2.12", "node-to-node mesh", "connect"),
    ]


def test_format_node_sessions_rows_errors_and_no_peers() -> None:
    text = format_node_sessions(
        {
            "rack1-node1": parse_node_status(json.dumps(STATUS).encode()),
            "rack1-node2": "/status answered nothing",
            "rack2-node1": [],
        }
    )
    rows = [line.split() for line in text.splitlines()]
    assert rows[0] == ["node", "peer", "type", "state"]
    assert rows[1] == ["rack1-node1", "192.0.2.1", "node", "specific", "established"]
    assert rows[2] == ["rack1-node1", "192.0.2.12", "node-to-node", "mesh", "connect"]
    assert rows[3] == ["rack1-node2", "-", "-", "/status", "answered", "nothing"]
    assert rows[4] == ["rack2-node1", "-", "-", "no", "peers"]
