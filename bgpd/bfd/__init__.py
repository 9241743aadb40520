"""BFD (RFC 5880 asynchronous mode) for the node's BGP sessions: the packet
codec, a pure per-session state machine, and a thin asyncio UDP edge for
single-hop (RFC 5881) and multihop (RFC 5883) sessions."""
