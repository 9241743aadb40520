"""``meshroute node``: the per-host process that joins IPAM, bgpd and
felix_lite. ``config`` is its node.yaml, ``view`` reads the cluster from
etcd, ``plan``, ``bgp_plan`` and ``readiness`` decide (pure), ``process``
owns the tasks; ``metrics`` reports what they hold."""
