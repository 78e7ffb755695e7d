"""The node's shared HTTP(S) entrance (issue 17 item 3), attached to the mesh when the
configuration turns it on (`ingress_http_port`, `ingress_https_port`; docs/ingress.md).

The entrance (`node.proxy.ingress`) uses the mesh's engine settings and its connection
cap; its TLS certificates (`node.proxy.ingress_tls`) come from secrets, opened with the
cluster key as the agent opens them, or are issued by the cluster CA (read from etcd
with this node's passphrase) for hosts without a secret.
"""

from __future__ import annotations

from node.daemon.identity import NodeIdentity
from node.model.config import NodeConfig
from node.model.keys import Keys
from node.proxy.balancer import RetryPolicy
from node.proxy.ingress import Ingress
from node.proxy.ingress_tls import IngressCerts
from node.proxy.mesh import Mesh
from node.security.ca import ClusterCA
from node.security.sealing import Sealer
from node.store import Store


def attach_ingress(mesh: Mesh, config: NodeConfig, store: Store, keys: Keys, identity: NodeIdentity) -> None:
    """Give `mesh` the entrance the configuration asks for (none when both ports are 0)."""
    c = config
    if not c.ingress_http_port and not c.ingress_https_port:
        return

    async def ca() -> ClusterCA:
        return await identity.security.load_ca(identity.passphrase())

    certs = None
    if c.ingress_https_port:
        certs = IngressCerts(store, keys, Sealer(identity.passphrase), ca, c.data_dir / "ingress", c.address)
    s = mesh.settings
    mesh.ingress = Ingress(
        c.address,
        c.ingress_http_port,
        c.ingress_https_port,
        certs,
        mesh.events,
        connect_timeout=s.connect_timeout,
        drain_timeout=s.drain_timeout,
        retry=RetryPolicy(max_attempts=s.max_attempts),
        limits=s.limits,
        cap=mesh.cap,
        tunnel_idle=s.tunnel_idle,
    )
