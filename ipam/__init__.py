"""IP address management: pools, per-host blocks with affinity, handles and
allocations kept in etcd, a pure allocator core, and the CNI IPAM plugin."""
