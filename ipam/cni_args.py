"""Validation of what a CNI runtime hands the plugins about a pod: its
namespace and name, labels and named ports (pure; container ids and
interface names are ``cni_plugin``'s).

Standard library only, and not even ``re``: the plugins import this at
every pod start (see ``cni_plugin``). The IPAM service validates the same
fields again with the same functions, since its socket is an input too.

Labels and named ports reach a pod's WorkloadEndpoint from three places,
later ones overriding earlier ones key by key (ports by name):

1. the network configuration: ``"labels": {"app": "web"}`` and
   ``"ports": [{"name": "http", "protocol": "TCP", "port": 80}]`` (top level
   for ``meshroute-cni``, the ``ipam`` section for ``meshroute-cni-ipam``);
2. ``args.cni.labels`` and ``args.cni.ports`` in it (the CNI convention
   for per-container arguments that a runtime injects into the config);
3. ``CNI_ARGS``: ``MESHROUTE_LABELS=app=web,tier=front`` and
   ``MESHROUTE_PORTS=http/TCP/80,dns/UDP/53``, next to Kubernetes'
   ``K8S_POD_NAMESPACE`` and ``K8S_POD_NAME``.
"""

from __future__ import annotations

from ipam.quoting import quote

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_LABELS = 64
MAX_PORTS = 64
PROTOCOLS = ("TCP", "UDP", "SCTP")
DEFAULT_NAMESPACE = "default"

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ID_CHARS = _ALNUM | frozenset("-_.")
_DNS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class Invalid(ValueError):
    """A field that fails validation; the message names it."""


def _chars_ok(s: str, allowed: frozenset[str]) -> bool:
    return all(c in allowed for c in s)


def _dns_label(s: str, max_len: int = 63) -> bool:
    return 0 < len(s) <= max_len and _chars_ok(s, _DNS_CHARS) and s[0] != "-" and s[-1] != "-"


def namespace(value: str, field: str = "K8S_POD_NAMESPACE") -> str:
    if not _dns_label(value):
        raise Invalid(f"{field} {quote(value)} is not a namespace name (a DNS label)")
    return value


def pod_name(value: str, field: str = "K8S_POD_NAME") -> str:
    """A Kubernetes pod name (a DNS subdomain), or a container id: a pod
    started without an orchestrator is named after its container."""
    ok = (
        0 < len(value) <= 253
        and _chars_ok(value, _ID_CHARS)
        and value[0] in _ALNUM
        and value[-1] in _ALNUM
    )
    if not ok:
        raise Invalid(f"{field} {quote(value)} is not a pod name")
    return value


def _label_part(s: str) -> bool:
    """A label name or non-empty value: <= 63 characters, alphanumerics at
    both ends, ``-_.`` and alphanumerics between."""
    return 0 < len(s) <= 63 and _chars_ok(s, _ID_CHARS) and s[0] in _ALNUM and s[-1] in _ALNUM


def label_key(key: object, field: str) -> str:
    """Kubernetes' syntax: an optional DNS-subdomain prefix and ``/``, then a name."""
    if not isinstance(key, str):
        raise Invalid(f"{field}: label key {quote(key)} is not a string")
    prefix, slash, name = key.rpartition("/")
    ok = _label_part(name)
    if slash:
        ok = ok and 0 < len(prefix) <= 253 and all(_dns_label(p) for p in prefix.split("."))
    if not ok:
        raise Invalid(f"{field}: {quote(key)} is not a label key")
    return key


def label_value(value: object, field: str) -> str:
    if not isinstance(value, str) or (value and not _label_part(value)):
        raise Invalid(f"{field}: {quote(value)} is not a label value")
    return value


def labels(value: object, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"{field} must be a mapping of label keys to values")
    if len(value) > MAX_LABELS:
        raise Invalid(f"{field} has {len(value)} labels, at most {MAX_LABELS} are allowed")
    return {label_key(k, field): label_value(v, f"{field}.{k}") for k, v in value.items()}


def parse_labels(raw: str, field: str) -> dict[str, str]:
    """``k=v,k2=v2`` (an empty value is allowed: ``k=``)."""
    out: dict[str, object] = {}
    for pair in raw.split(","):
        if not pair:
            continue
        k, sep, v = pair.partition("=")
        if not sep:
            raise Invalid(f"{field}: {quote(pair)} is not key=value")
        out[k] = v
    return labels(out, field)


def port(value: object, field: str) -> dict[str, object]:
    """One named port: ``{"name", "protocol", "port"}``; the name is an
    IANA service name as Kubernetes has it (<= 15 characters, lower case)."""
    if not isinstance(value, dict) or set(value) - {"name", "protocol", "port"}:
        raise Invalid(f"{field} must be {{name, protocol, port}}")
    name, proto, number = value.get("name"), value.get("protocol", "TCP"), value.get("port")
    if not isinstance(name, str) or not (
        0 < len(name) <= 15
        and _chars_ok(name, _DNS_CHARS)
        and name[0] != "-"
        and name[-1] != "-"
        and not name.isdigit()
    ):
        raise Invalid(f"{field}.name: {quote(name)} is not a port name")
    if proto not in PROTOCOLS:
        raise Invalid(f"{field}.protocol: {quote(proto)} is not one of {', '.join(PROTOCOLS)}")
    if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
        raise Invalid(f"{field}.port: {quote(number)} is not a port number (1-65535)")
    return {"name": name, "protocol": proto, "port": number}


def ports(value: object, field: str) -> list[dict[str, object]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(f"{field} must be a list of {{name, protocol, port}}")
    if len(value) > MAX_PORTS:
        raise Invalid(f"{field} has {len(value)} ports, at most {MAX_PORTS} are allowed")
    return [port(p, f"{field}[{i}]") for i, p in enumerate(value)]


def parse_ports(raw: str, field: str) -> list[dict[str, object]]:
    """``name/PROTO/port,...`` (``name/port`` means TCP)."""
    out: list[object] = []
    for item in raw.split(","):
        if not item:
            continue
        parts = item.split("/")
        if len(parts) == 2:
            parts.insert(1, "TCP")
        if len(parts) != 3 or not parts[2].isdigit() or len(parts[2]) > 5:
            raise Invalid(f"{field}: {quote(item)} is not name/PROTOCOL/port")
        out.append({"name": parts[0], "protocol": parts[1].upper(), "port": int(parts[2])})
    return ports(out, field)


def merge_ports(*lists: list[dict[str, object]]) -> list[dict[str, object]]:
    """Later lists override earlier ones by name, in first-seen order."""
    out: dict[object, dict[str, object]] = {}
    for lst in lists:
        for p in lst:
            out[p["name"]] = p
    return list(out.values())


def workload(
    conf_labels: object,
    conf_ports: object,
    args_section: Mapping[str, object],
    env_args: Mapping[str, str],
    container: str,
    where: str,
) -> dict[str, object]:
    """Namespace, pod, labels and named ports of one pod, from the three
    sources in the module docstring (``where`` names the config section)."""
    ns = env_args.get("K8S_POD_NAMESPACE") or DEFAULT_NAMESPACE
    pod = env_args.get("K8S_POD_NAME") or container
    merged = {
        **labels(conf_labels, f"{where}labels"),
        **labels(args_section.get("labels"), "args.cni.labels"),
        **parse_labels(env_args.get("MESHROUTE_LABELS", ""), "CNI_ARGS MESHROUTE_LABELS"),
    }
    if len(merged) > MAX_LABELS:
        raise Invalid(f"{len(merged)} labels in all, at most {MAX_LABELS} are allowed")
    named = merge_ports(
        ports(conf_ports, f"{where}ports"),
        ports(args_section.get("ports"), "args.cni.ports"),
        parse_ports(env_args.get("MESHROUTE_PORTS", ""), "CNI_ARGS MESHROUTE_PORTS"),
    )
    if len(named) > MAX_PORTS:
        raise Invalid(f"{len(named)} named ports in all, at most {MAX_PORTS} are allowed")
    return {
        "namespace": namespace(ns),
        "pod": pod_name(pod),
        "labels": merged,
        "ports": named,
    }
