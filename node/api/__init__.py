"""The gRPC surface of a node: the client API, the peer API, health and reflection."""
