"""The datastore: a key-value store port with compare-and-swap transactions,
prefix listing, watches and leases (``port``), its etcd adapter (``etcd``,
over etcd's JSON gateway: HTTP/1.1 framing in ``etcd_http``, the messages in
``etcd_codec``; TLS and etcd users from ``etcd_tls``, certificate validity
read by ``x509_validity``) and an in-memory twin for unit tests
(``memory``). Both adapters pass one contract suite, the etcd one over
plaintext and mTLS. It knows nothing of IPAM, BGP or routes: every part that
keeps state in etcd reaches it through ``KvStore``."""
