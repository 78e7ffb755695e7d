"""What the leader hands a pool's provider to start a node of this cluster (issue 15)."""

from __future__ import annotations

from leader.pools import PoolContext
from node.daemon.identity import NodeIdentity
from node.model.config import NodeConfig


def pool_context(c: NodeConfig, identity: NodeIdentity) -> PoolContext:
    """The cluster's name, etcd and prefix, and the join token (read when a node is asked for,
    so a rotated token is the one handed out)."""

    async def join_token() -> str:
        return str(await identity.security.join_token(identity.passphrase()))

    return PoolContext(
        c.cluster,
        tuple(c.etcd),
        c.etcd_prefix,
        join_token,
        vip_range=c.vip_range,
        grpc_port=c.grpc_port,
        etcd_tls=(c.etcd_ca, c.etcd_cert, c.etcd_key),
    )
