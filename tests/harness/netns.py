"""Tests make network namespaces the way the lab does, with the test prefix."""

from meshroute.lab.netns import Netns, NetnsFactory, kill_pids_in, run, sweep_stale, veth

__all__ = ["Netns", "NetnsFactory", "kill_pids_in", "run", "sweep_stale", "veth"]
