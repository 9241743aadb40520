"""The lab: test equipment, not product. Real daemons (etcd, ``meshroute
node`` and ``meshroute reflector``, BIRD as ToR routers and reflector clients)
in network namespaces on one machine, for the demo, the end-to-end tests and
the benchmarks. Everything it creates carries a recognisable name so that
``lab down`` finds it after a crash.

It drives meshroute only the way an operator does: the ``meshroute`` CLI and
``python -m ipam.cni_install`` in fresh processes, ``node.yaml`` /
``reflector.yaml`` / resource files it writes, and the processes' HTTP
endpoints. The one product module it imports is ``bgpd.bird_config``, a pure
renderer, to configure the fabric's own BIRD routers (ToRs, spine, reflector
clients), which stand for the operator's network rather than meshroute
(``tests/unit/test_layering.py`` holds it to that)."""
