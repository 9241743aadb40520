"""``meshroute node``: the per-host process that joins IPAM, bgpd and
felix_lite. ``view`` reads the cluster from etcd, ``plan`` decides (pure),
``process`` owns the tasks; ``systemd`` and ``http`` face the operator."""
