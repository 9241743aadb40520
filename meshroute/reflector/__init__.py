"""``meshroute reflector``: an RFC 4456 route reflector whose engine is BIRD 2,
configured from etcd (the node registry and the BGP resources)."""
