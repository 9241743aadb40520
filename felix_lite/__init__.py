"""The kernel route programmer: plans the routes a host needs (direct, IPIP,
VXLAN, blackhole) and reconciles the kernel table it owns against them."""
