"""The wire: gRPC channels and credentials (rpc), the Python client, CLI defaults."""
