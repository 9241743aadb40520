"""Free loopback ports, as the lab picks them."""

from meshroute.lab.ports import free_ports

__all__ = ["free_ports"]
