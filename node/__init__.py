"""shoal's node: the daemon every host runs and its CLI.

Packages, by job: `daemon` (composition root), `model` (the vocabulary: records, keys,
the typed spec, errors, settings; pure), `store` (etcd, mirrors, port claims), `agent`
(containers, health, restarts, secret files), `runtime` (Docker, logs), `api` (gRPC
client and peer API, stacks, secrets), `gossip` (SWIM membership), `proxy` (the routing
mesh), `security` (mTLS, tokens, sealing, the etcd PKI), `wire` (channels, the Python
client), `telemetry` (events, logging), `compose` (stack and Compose files), `cli`
(`shoal`), `dev` (local and simulated clusters), `pb` (generated stubs).
docs/architecture.md ("Packages and layers") maps them and the rules between them.
"""

__version__ = "0.1.0"
