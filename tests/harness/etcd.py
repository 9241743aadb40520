"""Tests start etcd the way the lab does."""

from meshroute.lab.etcd import EtcdCluster, EtcdMember, start_etcd

__all__ = ["EtcdCluster", "EtcdMember", "start_etcd"]
