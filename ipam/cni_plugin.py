"""``meshroute-cni-ipam``, the CNI IPAM plugin, and ``meshroute-cni``, the
main plugin for routed pods (spec 1.0.0, also speaking 0.3.0, 0.3.1 and
0.4.0). One module: the network configuration's ``type`` says which it is.

The runtime executes it once per pod and interface, so it must start fast:
it imports only the standard library and ``cni_json`` (never netaddr, the
etcd client or the rest of ``ipam``) and asks the host's local IPAM service
(``cni_service``, run by ``meshroute ipam serve``) over a unix socket, which
holds the etcd connection. When the service is down or silent the plugin
fails at once with a CNI error; it never hangs. ``cni_install`` puts it
into a runtime's plugin directory as a launcher that starts in ~10 ms.

Network configuration (``ipam`` section of the netconf on stdin)::

    {"type": "meshroute-cni-ipam",
     "socket": "/run/meshroute/ipam.sock",   # default
     "assign_ipv4": true, "assign_ipv6": false,   # bools or "true"/"false"
     "ipv4_pools": ["pool-a"], "ipv6_pools": [],  # pool names, optional
     "ips": ["10.244.0.9"],                       # requested addresses, optional
     "timeout": 30}                               # seconds for one request

Requested addresses may also come from ``runtimeConfig.ips``,
``args.cni.ips`` or ``IP=a,b`` in ``CNI_ARGS``; they replace auto-assignment.

``CNI_CONTAINERID`` and ``CNI_IFNAME`` are checked as the CNI spec and
libcni check them (an id of ASCII letters, digits, ``_ . -`` starting with
a letter or digit; an interface name of at most 15 bytes without ``/``,
``:`` or whitespace, not ``.`` or ``..``), and pod names from ``CNI_ARGS``
as Kubernetes names, before anything reaches the service or etcd.

The main plugin (``"type": "meshroute-cni"``) takes the same settings at
the top level of the network configuration (``socket``, ``timeout``, and
``mtu`` of the pod's veth, default 1500) and the address settings in an
optional ``ipam`` section without a ``type``. It asks the same service to
assign the addresses and to make the pod's routed veth (see
``pod_link``): no bridge, a /32 (/128) route per pod address on the node,
the link-local gateway 169.254.1.1 answered by proxy ARP.

Both plugins pass the pod's namespace, name, labels and named ports to the
service, which records them in the pod interface's WorkloadEndpoint (see
``cni_args`` for where they come from).

Errors are CNI error objects on stdout with exit status 1, whatever the
input (deep nesting, NaN, invalid UTF-8, huge values); they quote at most a
short prefix of what they got. Codes: the
spec's 1 (incompatible version), 4 (invalid environment variables), 6
(cannot decode stdin), 7 (invalid network config), 11 (try again later:
etcd unreachable or too many concurrent changes), and ours: 100 pool
exhausted, 101 IPAM service unavailable (not running or not answering),
102 address request refused, 103 CHECK found a mismatch, 104 the request
is too large for the datastore, 105 the pod's interface could not be set
up, 110 internal error of the service or plugin.

Results of the IPAM plugin: ``ips`` and ``routes``. In L2-segment mode
(``meshroute ipam serve --l2-segment``: pods on a bridge whose subnet is the
block) an address carries the block's prefix length and its ``gateway`` (the
block's first host address, which the bridge plugin puts on the bridge with
``isGateway``), plus a default route via it per address family; a host gets
one block per family there (the bridge has one subnet). In routed mode the
address is a host route (/32, /128) with no gateway and no routes, for a main
plugin that routes each pod address itself (Debian's ``ptp`` cannot: it
needs a gateway). Results of the main plugin add ``interfaces`` (the veth's
host end, then the pod's) and the pod's default routes.
"""

from __future__ import annotations

import _socket  # not ``socket``: its enums and selectors cost ~2 ms of start time
import os
import sys

from ipam import cni_args, cni_json  # not ``json``: see there
from ipam.quoting import quote

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, TextIO

MAIN_TYPE = "meshroute-cni"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
CURRENT_VERSION = "1.0.0"
DEFAULT_SOCKET = "/run/meshroute/ipam.sock"
CONNECT_TIMEOUT_S = 1.0
DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 3600.0
MAX_REPLY = 1 << 20
MAX_STDIN = 1 << 22  # a network configuration is a few KB; prevResult adds little
MAX_CONTAINER_ID = 255
MAX_IFNAME_BYTES = 15  # IFNAMSIZ - 1
MAX_K8S_NAME = 253  # a DNS subdomain
MAX_CNI_ARG = 1024
MAX_LIST = 64  # entries of ipv4_pools, ipv6_pools, ips
MAX_LIST_ITEM = 253

# CNI spec error codes
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_ENV = 4
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
# meshroute's own codes (>= 100), shared with cni_service
ERR_POOL_EXHAUSTED = 100
ERR_SERVICE_UNAVAILABLE = 101
ERR_ADDRESS_REFUSED = 102
ERR_CHECK_FAILED = 103
ERR_TOO_LARGE = 104
ERR_LINK = 105
ERR_INTERNAL = 110


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (0,)


def _utf8(value: str) -> bool:
    """False for text that came from bytes that are not UTF-8 (the
    interpreter decodes the environment with surrogate escapes)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def container_id_problem(value: str) -> str | None:
    """Why ``value`` is not a container id (libcni's rule), or None."""
    if not value:
        return "is empty"
    if len(value) > MAX_CONTAINER_ID:
        return f"is longer than {MAX_CONTAINER_ID} characters"
    if not (value.isascii() and all(c.isalnum() or c in "_.-" for c in value)):
        return "may hold only ASCII letters, digits, '_', '.' and '-'"
    if not value[0].isalnum():
        return "must start with a letter or a digit"
    return None


def ifname_problem(value: str) -> str | None:
    """Why ``value`` is not an interface name (the kernel's and libcni's
    rules), or None."""
    if not value:
        return "is empty"
    if not _utf8(value):
        return "is not valid UTF-8"
    if len(value.encode()) > MAX_IFNAME_BYTES:
        return f"is longer than {MAX_IFNAME_BYTES} bytes"
    if value in (".", ".."):
        return "cannot be '.' or '..'"
    if any(c in "/:" or c.isspace() or not c.isprintable() for c in value):
        return "cannot hold '/', ':', whitespace or control characters"
    return None


def k8s_name_problem(value: str) -> str | None:
    """Why ``value`` is not a pod or namespace name we can store, or None."""
    if len(value) > MAX_K8S_NAME:
        return f"is longer than {MAX_K8S_NAME} characters"
    if not _utf8(value) or not value.isprintable():
        return "must be printable UTF-8"
    return None


def check_container_id(value: str) -> str:
    problem = container_id_problem(value)
    if problem:
        raise CniError(ERR_INVALID_ENV, f"CNI_CONTAINERID {quote(value)} {problem}")
    return value


def check_ifname(value: str) -> str:
    problem = ifname_problem(value)
    if problem:
        raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME {quote(value)} {problem}")
    return value


def parse_cni_args(raw: str) -> dict[str, str]:
    """``K=V;K2=V2`` (CNI_ARGS) to a dict; malformed pairs, values that are
    not UTF-8 or too long, and bad pod names are refused."""
    out: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: {quote(pair)} is not KEY=VALUE")
        if not _utf8(pair):
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: {quote(pair)} is not valid UTF-8")
        if len(pair) > MAX_CNI_ARG:
            raise CniError(
                ERR_INVALID_ENV, f"CNI_ARGS: {quote(pair)} is longer than {MAX_CNI_ARG} characters"
            )
        if k in ("K8S_POD_NAME", "K8S_POD_NAMESPACE"):
            problem = k8s_name_problem(v)
            if problem:
                raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: {k} {quote(v)} {problem}")
        out[k] = v
    return out


def _flag(value: object, default: bool, name: str) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise CniError(ERR_INVALID_CONFIG, f"ipam.{name} must be true or false, not {quote(value)}")


def _str_list(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
        raise CniError(ERR_INVALID_CONFIG, f"{name} must be a list of strings")
    if len(value) > MAX_LIST:
        raise CniError(ERR_INVALID_CONFIG, f"{name} has more than {MAX_LIST} entries")
    for x in value:
        if len(x) > MAX_LIST_ITEM:
            raise CniError(
                ERR_INVALID_CONFIG, f"{name}: {quote(x)} is longer than {MAX_LIST_ITEM} characters"
            )
    return list(value)


def decode_config(stdin: bytes) -> dict[str, Any]:
    what = "cannot decode the network configuration"
    if len(stdin) > MAX_STDIN:
        raise CniError(ERR_DECODE, f"{what}: it is larger than {MAX_STDIN >> 20} MiB")
    try:
        conf = cni_json.loads(stdin)
    except UnicodeDecodeError as e:
        raise CniError(ERR_DECODE, f"{what}: it is not valid UTF-8", str(e)) from e
    except RecursionError as e:
        raise CniError(ERR_DECODE, f"{what}: it is nested too deeply") from e
    except ValueError as e:
        raise CniError(ERR_DECODE, what, str(e)[:200]) from e
    if not isinstance(conf, dict):
        raise CniError(ERR_DECODE, "the network configuration is not a JSON object")
    return conf


def check_version(conf: Mapping[str, Any]) -> str:
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(ERR_INVALID_CONFIG, "network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"cniVersion {quote(version)} is not supported",
            "supported: " + ", ".join(SUPPORTED_VERSIONS),
        )
    return version


def _require_env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise CniError(ERR_INVALID_ENV, f"{name} is not set")
    return value


def _dict(value: object, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CniError(ERR_INVALID_CONFIG, f"{name} must be a JSON object")
    return value


def plan_request(command: str, env: Mapping[str, str], conf: Mapping[str, Any]) -> dict[str, Any]:
    """The service request for ADD, DEL or CHECK (pure)."""
    version = check_version(conf)
    if not isinstance(conf.get("name"), str) or not conf["name"]:
        raise CniError(ERR_INVALID_CONFIG, "network configuration has no name")
    main = conf.get("type") == MAIN_TYPE
    ipam = conf.get("ipam")
    if main:
        ipam = _dict(ipam, "ipam")
    elif not isinstance(ipam, dict):
        raise CniError(ERR_INVALID_CONFIG, "network configuration has no ipam section")
    container_id = check_container_id(_require_env(env, "CNI_CONTAINERID"))
    ifname = check_ifname(_require_env(env, "CNI_IFNAME"))
    netns = env.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK"):
        _require_env(env, "CNI_NETNS")
    if len(netns) > 4096:
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS {quote(netns)} is not a path")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    source = conf if main else ipam
    args_cni = _dict(_dict(conf.get("args"), "args").get("cni"), "args.cni")
    try:
        pod = cni_args.workload(
            source.get("labels"),
            source.get("ports"),
            args_cni,
            args,
            container_id,
            "" if main else "ipam.",
        )
    except cni_args.Invalid as e:
        env_fault = "CNI_ARGS" in str(e) or "K8S_POD" in str(e)
        raise CniError(ERR_INVALID_ENV if env_fault else ERR_INVALID_CONFIG, str(e)) from e
    req: dict[str, Any] = {
        "op": command.lower(),
        "containerId": container_id,
        "ifname": ifname,
        "network": conf["name"],
        **pod,
    }
    if main:
        mtu = conf.get("mtu", 1500)
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 65535:
            raise CniError(ERR_INVALID_CONFIG, f"mtu {quote(mtu)} is not 576-65535")
        req["attach"] = {"netns": netns, "mtu": mtu}
    if command == "ADD":
        req["ipv4"] = _flag(ipam.get("assign_ipv4"), True, "assign_ipv4")
        req["ipv6"] = _flag(ipam.get("assign_ipv6"), False, "assign_ipv6")
        req["ipv4Pools"] = _str_list(ipam.get("ipv4_pools"), "ipam.ipv4_pools")
        req["ipv6Pools"] = _str_list(ipam.get("ipv6_pools"), "ipam.ipv6_pools")
        req["ips"] = _requested_ips(conf, ipam, args)
        if not (req["ipv4"] or req["ipv6"] or req["ips"]):
            raise CniError(ERR_INVALID_CONFIG, "assign_ipv4 and assign_ipv6 are both false")
    elif command == "CHECK":
        if _version_tuple(version) < (0, 4, 0):
            raise CniError(
                ERR_INCOMPATIBLE_VERSION, f"CHECK is not defined for cniVersion {quote(version)}"
            )
        prev = conf.get("prevResult")
        if not isinstance(prev, dict):
            raise CniError(ERR_INVALID_CONFIG, "CHECK needs a prevResult")
        ips = prev.get("ips", [])
        if not isinstance(ips, list) or not all(
            isinstance(x, dict) and isinstance(x.get("address"), str) for x in ips
        ):
            raise CniError(ERR_INVALID_CONFIG, "prevResult.ips is malformed")
        req["expect"] = _str_list([x["address"].split("/")[0] for x in ips], "prevResult.ips")
    return req


def _requested_ips(
    conf: Mapping[str, Any], ipam: Mapping[str, Any], args: Mapping[str, str]
) -> list[str]:
    ips = _str_list(ipam.get("ips"), "ipam.ips")
    for section, name in (("runtimeConfig", "runtimeConfig.ips"), ("args", "args.cni.ips")):
        sub = conf.get(section)
        if section == "args" and isinstance(sub, dict):
            sub = sub.get("cni")
        if isinstance(sub, dict):
            ips += _str_list(sub.get("ips"), name)
    if args.get("IP"):
        ips += [x.strip() for x in args["IP"].split(",") if x.strip()]
    return _str_list([ip.split("/")[0] for ip in ips], "requested ips")


def call_service(path: str, request: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """One request, one newline-terminated JSON reply, on a fresh connection."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(CONNECT_TIMEOUT_S)
        try:
            s.connect(path)
        except OSError as e:
            raise CniError(
                ERR_SERVICE_UNAVAILABLE,
                f"the meshroute IPAM service is not running (cannot connect to {path})",
                f"{e}; start it with 'meshroute ipam serve' (or 'meshroute node')",
            ) from e
        s.settimeout(timeout)
        buf = b""
        try:
            s.sendall(cni_json.dumps(request).encode() + b"\n")
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_REPLY:
                    break
        except OSError as e:
            raise CniError(
                ERR_SERVICE_UNAVAILABLE,
                f"the meshroute IPAM service at {path} did not answer within {timeout:g} s",
                str(e),
            ) from e
    finally:
        s.close()
    try:
        reply = cni_json.loads(buf)
    except ValueError as e:
        raise CniError(
            ERR_SERVICE_UNAVAILABLE, f"the meshroute IPAM service at {path} sent a bad reply"
        ) from e
    if not isinstance(reply, dict):
        raise CniError(ERR_SERVICE_UNAVAILABLE, f"the IPAM service at {path} sent a bad reply")
    if not reply.get("ok"):
        raise CniError(
            int(reply.get("code", ERR_INTERNAL)),
            str(reply.get("msg", "IPAM service error")),
            str(reply.get("details", "")),
        )
    return reply


def format_result(version: str, reply: Mapping[str, Any]) -> dict[str, Any]:
    """The CNI result of ADD in the requested version (pure). Before 1.0.0
    each entry of ``ips`` also names its IP version."""
    ips = []
    for entry in reply.get("ips", []):
        ip: dict[str, Any] = {"address": entry["address"]}
        if entry.get("gateway"):
            ip["gateway"] = entry["gateway"]
        if "interface" in entry:
            ip["interface"] = entry["interface"]
        if _version_tuple(version) < (1, 0, 0):
            ip["version"] = "6" if ":" in entry["address"] else "4"
        ips.append(ip)
    routes = [{k: v for k, v in r.items() if k in ("dst", "gw")} for r in reply.get("routes", [])]
    out: dict[str, Any] = {"cniVersion": version}
    if reply.get("interfaces"):
        out["interfaces"] = reply["interfaces"]
    return {**out, "ips": ips, "routes": routes, "dns": {}}


def error_object(version: str, err: CniError) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version, "code": err.code, "msg": err.msg}
    if err.details:
        out["details"] = err.details
    return out


def _setting(conf: Mapping[str, Any], name: str, default: object) -> object:
    """A service setting: the main plugin's top level, else the ipam section."""
    if conf.get("type") == MAIN_TYPE and name in conf:
        return conf[name]
    ipam = conf.get("ipam")
    return ipam.get(name, default) if isinstance(ipam, dict) else default


def _timeout(conf: Mapping[str, Any]) -> float:
    t = _setting(conf, "timeout", DEFAULT_TIMEOUT_S)
    where = "timeout" if conf.get("type") == MAIN_TYPE else "ipam.timeout"
    # ``not 0 < t <= max`` also catches an infinity (JSON's 1e999) and NaN.
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= MAX_TIMEOUT_S:
        raise CniError(
            ERR_INVALID_CONFIG,
            f"{where} must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}",
        )
    return float(t)


def run(env: Mapping[str, str], stdin: bytes, stdout: TextIO) -> int:
    """The whole plugin; returns the exit status."""
    version = CURRENT_VERSION
    try:
        command = env.get("CNI_COMMAND", "")
        if command == "VERSION":
            info = {"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}
            stdout.write(cni_json.dumps(info))
            return 0
        if command not in ("ADD", "DEL", "CHECK"):
            raise CniError(
                ERR_INVALID_ENV,
                f"CNI_COMMAND {quote(command)} is not ADD, DEL, CHECK or VERSION"
                if command
                else "CNI_COMMAND is not set",
            )
        conf = decode_config(stdin)
        if isinstance(conf.get("cniVersion"), str) and conf["cniVersion"] in SUPPORTED_VERSIONS:
            version = conf["cniVersion"]
        request = plan_request(command, env, conf)
        path = _setting(conf, "socket", None) or DEFAULT_SOCKET
        if not isinstance(path, str) or len(path) > MAX_LIST_ITEM or "\0" in path:
            raise CniError(ERR_INVALID_CONFIG, "socket must be a path")
        reply = call_service(path, request, _timeout(conf))
        if command == "ADD":
            stdout.write(cni_json.dumps(format_result(version, reply)))
        return 0
    except CniError as e:
        stdout.write(cni_json.dumps(error_object(version, e)))
        return 1
    except Exception as e:  # our bug: still an answer in the protocol, not a traceback
        err = CniError(ERR_INTERNAL, "internal error of the CNI plugin", type(e).__name__)
        stdout.write(cni_json.dumps(error_object(version, err)))
        return 1


def main() -> int:
    # One byte more than allowed is enough to refuse it; never read a huge input whole.
    rc = run(os.environ, sys.stdin.buffer.read(MAX_STDIN + 1), sys.stdout)
    sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())
