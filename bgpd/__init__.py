"""BGP for meshroute: ExaBGP supervision and its API codec, RIB, policy and
best path; BIRD configuration for the reflector role."""
