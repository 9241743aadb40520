"""The lab: real daemons (etcd, the node, BIRD) in network namespaces on one
machine, for the demo and the end-to-end tests. Everything it creates
carries a recognisable name so that ``lab down`` finds it after a crash."""
