"""The rtnetlink wire and sockets the subsystems share: netlink framing and
the kernel's answers (``wire``), route messages (``routes``), link messages
(``links``), attributes, addresses and neighbours (``attrs``), NETLINK_ROUTE
sockets in any network namespace (``sockets``) and a small synchronous
client for one operation at a time (``client``, ``RtnlClient``). Bytes and
sockets only: it knows nothing of pods, BGP or the routes felix_lite plans,
and imports no other part; ``ipam`` and ``felix_lite`` speak to the kernel
through it."""
