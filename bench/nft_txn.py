"""What one small nftables transaction costs against a large ``inet
meshroute`` table, by kind of change and by port (``nft -f`` process per
call against libnftables in this process), beside the same against the
table of 10 pods with the same policies.

``python -m bench.nft_txn --pods 5000 --policies 500 --json`` loads
``bench.policy``'s ruleset for N pods into a network namespace, then times,
``--runs`` times each, alternating which port goes first:

- ``pod_add``: the script the reconciler writes for one more pod (its set
  elements and its two dispatch map elements);
- ``set_elem``: one element into a selector's member set;
- ``map_elem``: one dispatch map element (a jump: the kernel validates the
  table's jump graph at commit);
- ``chain``: one policy chain flushed and filled again;
- ``list``, ``list_terse``: the table read back as JSON (with and without
  set elements).

Each change is undone (untimed) before the next. Figures are milliseconds,
wall (``*_ms``) and CPU (``*_cpu_ms``: nft's for the process port, this
process's for the library, whose kernel work runs in this process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.policy import Bench, record
from bench.report import alternating, print_result, require_root
from felix_lite.nft_lib import NftLib
from felix_lite.nft_model import TableState
from felix_lite.nft_reconciler import NftCli, NftPort, PolicyReconciler
from felix_lite.nft_script import T, plan_nft_script
from felix_lite.policy_compiler import PolicyCompiler
from lab.netns import NetnsFactory
from meshroute.policy_lowering import endpoint_from_record, plan_policy_input

Step = Callable[[NftPort], Awaitable[Any]]


def _cpu() -> float:
    """This process's and its finished children's CPU seconds."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


async def _timed(port: NftPort, step: Step, undo: Step | None) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), _cpu()
    await step(port)
    took, cpu = time.perf_counter() - t0, _cpu() - c0
    if undo is not None:
        await undo(port)
    return took * 1000, cpu * 1000


def _steps(b: Bench, pods: int) -> dict[str, tuple[Step, Step | None]]:
    """The changes, each with its undo, against ``pods`` pods' ruleset."""
    endpoints = [endpoint_from_record(r) for r in b.records[:pods] + b.real_records]
    state = b.state(b.policies)
    compiler = PolicyCompiler()
    before = compiler.compile(plan_policy_input("n1", state, tuple(endpoints), []))
    extra = endpoint_from_record(record(b.n_pods + 777))
    after = compiler.compile(plan_policy_input("n1", state, (*endpoints, extra), []))
    add = "\n".join(plan_nft_script(after, TableState.of(before))) + "\n"
    undo_add = "\n".join(plan_nft_script(before, TableState.of(after))) + "\n"
    member = next(s.name for s in before.sets.values() if s.name.startswith("mrs_") and s.elements)
    first_chain = min(before.sets["mr_ingress"].elements).split("jump ", 1)[1]
    policy_chain = next(c for n, c in before.chains.items() if n.startswith("mrp_") and c.rules)
    fill = "\n".join(
        [f"flush chain {T} {policy_chain.name}"]
        + [
            f'add rule {T} {policy_chain.name} {r.text} comment "{r.comment}"'
            for r in policy_chain.rules
        ]
    )

    def script(text: str) -> Step:
        async def go(port: NftPort) -> None:
            await port.apply(text)

        return go

    async def full(port: NftPort) -> None:
        await port.read()

    async def terse(port: NftPort) -> None:
        await port.read(terse=True)

    return {
        "pod_add": (script(add), script(undo_add)),
        "set_elem": (
            script(f"add element {T} {member} {{ 10.250.0.1 }}"),
            script(f"delete element {T} {member} {{ 10.250.0.1 }}"),
        ),
        "map_elem": (
            script(f'add element {T} mr_ingress {{ "zz0" : jump {first_chain} }}'),
            script(f'delete element {T} mr_ingress {{ "zz0" }}'),
        ),
        "chain": (script(fill), None),
        "list": (full, None),
        "list_terse": (terse, None),
    }


async def measure(b: Bench, pods: int, runs: int, factory: NetnsFactory) -> dict[str, float]:
    ns = factory.new(f"t{pods}")
    endpoints = tuple(endpoint_from_record(r) for r in b.records[:pods] + b.real_records)
    rec = PolicyReconciler(NftCli(ns.name))
    rec.set_desired(
        PolicyCompiler().compile(plan_policy_input("n1", b.state(b.policies), endpoints, []))
    )
    res = await rec.pass_once(full=True)
    assert res.error is None, res.error
    ports: dict[str, NftPort] = {"cli": NftCli(ns.name), "lib": NftLib(ns.name)}
    steps = _steps(b, pods)
    samples: dict[str, list[float]] = {}
    for i in range(runs):
        for name, (step, undo) in steps.items():
            for side in alternating(i, ("cli", "lib")):
                ms, cpu = await _timed(ports[side], step, undo)
                samples.setdefault(f"{name}_{side}_ms", []).append(ms)
                samples.setdefault(f"{name}_{side}_cpu_ms", []).append(cpu)
    lib = ports["lib"]
    assert isinstance(lib, NftLib)
    lib.close()
    return {k: round(statistics.median(v), 2) for k, v in samples.items()}


async def bench(pods: int, policies: int, runs: int) -> dict[str, Any]:
    b = Bench(pods, policies)
    factory = NetnsFactory(prefix="mrbench")
    try:
        large = await measure(b, pods, runs, factory)
        small = await measure(b, 10, runs, factory)
    finally:
        factory.cleanup()
    return {
        "pods": pods,
        "policies": policies,
        "runs": runs,
        **large,
        **{f"pods10_{k}": v for k, v in small.items()},
        "load_average": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)
    require_root("bench.nft_txn")
    print_result(asyncio.run(bench(args.pods, args.policies, args.runs)), args.json)


if __name__ == "__main__":
    main()
