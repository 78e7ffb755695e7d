"""Defaults that the CLI must know before it imports anything heavy (grpc, pydantic).

`shoal --help` and `shoal --version` only read this module and click; `node.wire.rpc` and
`node.wire.client` take their defaults from here too, so each value is written once.
Pure: no imports at all.
"""

DEFAULT_ADDR = "127.0.0.1:7070"  # a node's gRPC address when no flag, variable or context names one
DEFAULT_DEADLINE = 10.0  # seconds, for unary client calls
