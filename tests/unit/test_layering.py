"""The layering, read from the source: every ``import`` of every module
(those inside functions too; those under ``if TYPE_CHECKING:`` are for the
type checker only and never run, so they are left out).

- The shared plumbing imports no other part: ``datastore`` (the KV store
  port and its adapters) and ``rtnetlink`` (the kernel's netlink wire and
  sockets).
- The subsystems ``ipam``, ``bgpd`` and ``felix_lite`` import only
  themselves and the plumbing: never each other, the root, the lab.
- The composition root ``meshroute`` imports the subsystems and the
  plumbing, never ``bench`` or ``tests``; it names ``lab`` in exactly one
  place, ``meshroute.cmd_lab``, and only inside a function (``meshroute lab``
  and ``meshroute demo`` hand their arguments to the lab's command line).
- The lab is test equipment that drives meshroute from outside, as an
  operator does: the CLI, config files, HTTP. Of the product it imports only
  ``bgpd.bird_config``, a pure renderer, for the fabric's own BIRD routers
  (ToRs, spine, reflector clients), which stand for the operator's network.
- ``bench`` never imports ``tests``.
- No circle of imports among the modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PARTS = (
    "datastore",
    "rtnetlink",
    "ipam",
    "bgpd",
    "felix_lite",
    "meshroute",
    "lab",
    "bench",
    "tests",
)
PLUMBING = ("datastore", "rtnetlink")
SUBSYSTEMS = ("ipam", "bgpd", "felix_lite")
LAB_MAY_USE = ("bgpd.bird_config",)
LAB_ENTRY = "meshroute.cmd_lab"


@dataclass(frozen=True)
class Import:
    target: str  # the module named, as written (``a.b`` of ``from a.b import c``)
    line: int
    lazy: bool  # inside a function


def _part(module: str) -> str:
    return module.split(".", 1)[0]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, lazy: bool = False) -> Iterator[Import]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), lazy)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, lazy)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield Import(node.module, node.lineno, lazy)
            # ``from pkg import submodule`` names the submodule too
            for alias in node.names:
                yield Import(f"{node.module}.{alias.name}", node.lineno, lazy)
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _imports(node, inner)


def read_imports(root: Path = REPO) -> dict[str, list[Import]]:
    """Module name -> its imports of first-party modules."""
    out: dict[str, list[Import]] = {}
    for part in PARTS:
        for path in sorted((root / part).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            out[_module_name(path)] = [i for i in _imports(tree) if _part(i.target) in PARTS]
    return out


def _resolve(target: str, modules: Mapping[str, object]) -> str | None:
    """The module an import names: ``a.b.c`` may be the name ``c`` in ``a.b``."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def violations(graph: Mapping[str, list[Import]]) -> list[str]:
    found = []
    for module, imports in graph.items():
        src = _part(module)
        for imp in imports:
            dst = _part(imp.target)
            if dst == src:
                continue
            where = f"{module}:{imp.line} imports {imp.target}"
            if src in PLUMBING:
                found.append(f"{where}: the plumbing ({src}) imports no other part")
            elif src in SUBSYSTEMS and dst not in PLUMBING:
                found.append(f"{where}: a subsystem imports only itself and the plumbing")
            elif src == "meshroute" and dst in ("bench", "tests"):
                found.append(f"{where}: the product never imports {dst}")
            elif src == "meshroute" and dst == "lab" and (module != LAB_ENTRY or not imp.lazy):
                found.append(f"{where}: only {LAB_ENTRY} names the lab, inside a function")
            elif src == "lab" and not any(
                imp.target == m or imp.target.startswith(m + ".") for m in LAB_MAY_USE
            ):
                found.append(f"{where}: the lab drives meshroute from outside")
            elif src == "bench" and dst == "tests":
                found.append(f"{where}: benchmarks use the lab, never the tests")
    return found


def circles(graph: Mapping[str, list[Import]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module
    importing itself)."""
    edges = {
        m: sorted({d for i in imports if (d := _resolve(i.target, graph)) is not None})
        for m, imports in graph.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is a few hundred modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    return read_imports()


def test_the_parts_keep_their_layers(graph: dict[str, list[Import]]) -> None:
    assert violations(graph) == []


def test_no_import_circles(graph: dict[str, list[Import]]) -> None:
    assert circles(graph) == []


def test_the_reader_sees_the_real_imports(graph: dict[str, list[Import]]) -> None:
    """Guards against a reader that finds nothing, so passes everything."""
    assert {_part(m) for m in graph} == set(PARTS)
    process = {i.target for i in graph["meshroute.node.process"]}
    assert {"bgpd.speaker", "felix_lite.reconciler", "meshroute.etcd_options"} <= process
    assert next(i for i in graph[LAB_ENTRY] if i.target == "lab.cli").lazy
    assert "rtnetlink.client" in {i.target for i in graph["ipam.pod_link"]}
    # type-checking-only imports are no edges (node.metrics names the process
    # for its annotations; the process renders what node.metrics computes)
    assert "meshroute.node.process" not in {i.target for i in graph["meshroute.node.metrics"]}


def _graph(**modules: list[tuple[str, bool]]) -> dict[str, list[Import]]:
    return {
        name.replace("__", "."): [Import(t, 1, lazy) for t, lazy in imports]
        for name, imports in modules.items()
    }


def test_the_rules_catch_each_kind_of_breach() -> None:
    bad = _graph(
        datastore__port=[("ipam.model", False)],
        rtnetlink__client=[("felix_lite.netlink_bulk", False), ("datastore.port", True)],
        bgpd__rib=[("felix_lite.model", False)],
        felix_lite__planner=[("meshroute.node.config", False)],
        ipam__ipam=[("datastore.port", False), ("lab.netns", True)],
        ipam__pod_link=[("rtnetlink.client", False), ("felix_lite.netlink_routes", False)],
        meshroute__cli=[("lab.cli", True)],
        meshroute__cmd_lab=[("lab.cli", False)],
        meshroute__node__process=[("tests.harness", True)],
        lab__up=[("ipam.cni_install", False), ("bgpd.bird_config", False)],
        lab__build=[("meshroute.node.config", True)],
        bench__ipam=[("tests.harness.cni", False), ("lab.etcd", False)],
    )
    found = violations(bad)
    for culprit in (
        "datastore.port:1 imports ipam.model",
        "rtnetlink.client:1 imports felix_lite.netlink_bulk",
        "rtnetlink.client:1 imports datastore.port",
        "bgpd.rib:1 imports felix_lite.model",
        "felix_lite.planner:1 imports meshroute.node.config",
        "ipam.ipam:1 imports lab.netns",
        "ipam.pod_link:1 imports felix_lite.netlink_routes",
        "meshroute.cli:1 imports lab.cli",
        "meshroute.cmd_lab:1 imports lab.cli",
        "meshroute.node.process:1 imports tests.harness",
        "lab.up:1 imports ipam.cni_install",
        "lab.build:1 imports meshroute.node.config",
        "bench.ipam:1 imports tests.harness.cni",
    ):
        assert any(f.startswith(culprit) for f in found), (culprit, found)
    assert len(found) == 13, found  # and nothing allowed is flagged
    assert violations(_graph(meshroute__cmd_lab=[("lab.cli", True)])) == []
    plumbing_users = _graph(
        felix_lite__netlink_bulk=[("rtnetlink.sockets", False), ("datastore.port", False)],
        bgpd__speaker=[("rtnetlink.routes", True)],
        meshroute__node__process=[("rtnetlink.client", False)],
        bench__routes=[("rtnetlink.wire", True)],
    )
    assert violations(plumbing_users) == []


def test_circles_are_found() -> None:
    g = _graph(a__x=[("a.y", False)], a__y=[("a.z.name", False)], a__z=[("a.x", True)], a__w=[])
    assert circles(g) == [["a.x", "a.y", "a.z"]]
    assert circles(_graph(a__x=[("a.y", False)], a__y=[])) == []
