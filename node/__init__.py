"""shoal's node: the daemon every host runs and its CLI.

Packages: `daemon` (composition root), `store` (etcd), `agent` (containers, health,
restarts), `runtime` (Docker, fake, simulated), `api` (gRPC client and peer API),
`gossip` (SWIM membership), `proxy` (the routing mesh), `security` (mTLS, tokens, the
etcd PKI), `cli` (`shoal`), `pb` (generated stubs). docs/architecture.md maps them.
"""

__version__ = "0.1.0"
