"""The pure validation of what runtimes hand the CNI plugins: where a
pod's labels and named ports come from, and which ones are refused."""

from __future__ import annotations

import pytest

from ipam import cni_args
from ipam.cni_args import Invalid


def test_later_sources_override_earlier_ones_key_by_key() -> None:
    got = cni_args.workload(
        {"app": "web", "tier": "front"},
        [{"name": "http", "port": 80}, {"name": "metrics", "port": 9100}],
        {"labels": {"tier": "back"}, "ports": [{"name": "http", "port": 8080}]},
        {
            "K8S_POD_NAMESPACE": "shop",
            "K8S_POD_NAME": "web-0",
            "MESHROUTE_LABELS": "app=api,empty=",
            "MESHROUTE_PORTS": "dns/UDP/53,http/81",
        },
        "c1",
        "",
    )
    assert got == {
        "namespace": "shop",
        "pod": "web-0",
        "labels": {"app": "api", "tier": "back", "empty": ""},
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 81},
            {"name": "metrics", "protocol": "TCP", "port": 9100},
            {"name": "dns", "protocol": "UDP", "port": 53},
        ],
    }


def test_without_an_orchestrator_the_pod_is_named_after_its_container() -> None:
    got = cni_args.workload(None, None, {}, {}, "3f2a_b.c", "")
    assert (got["namespace"], got["pod"]) == ("default", "3f2a_b.c")


@pytest.mark.parametrize(
    "key", ["app", "example.com/app", "a.b-c_d", "x" * 63, "k8s.io/" + "n" * 63]
)
def test_label_keys_kubernetes_accepts(key: str) -> None:
    assert cni_args.labels({key: "v"}, "labels") == {key: "v"}


@pytest.mark.parametrize(
    "key", ["", "-app", "app-", "x" * 64, "a/b/c", "Example.com/app", "/app", "a b", "é"]
)
def test_label_keys_kubernetes_refuses(key: str) -> None:
    with pytest.raises(Invalid, match="is not a label key"):
        cni_args.labels({key: "v"}, "labels")


def test_errors_quote_a_short_prefix() -> None:
    with pytest.raises(Invalid) as e:
        cni_args.labels({"app": "x" * 100_000}, "labels")
    assert len(str(e.value)) < 200
