"""The datastore: a key-value store port with compare-and-swap transactions,
prefix listing, watches and leases (``port``), its etcd adapter (``etcd``,
with TLS and etcd users from ``etcd_tls``; certificate validity read by
``x509_validity``) and an in-memory twin for unit tests (``memory``). Both
adapters pass one contract suite, the etcd one over plaintext and mTLS. It
knows nothing of IPAM, BGP or routes: every part that keeps state in etcd
reaches it through ``KvStore``."""
