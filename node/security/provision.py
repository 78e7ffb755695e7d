"""Setting a host up where the CA is at hand: `shoal cluster init` and `shoal dev`.

`init_host` initialises the cluster in etcd (`ClusterSecurity.initialise`: the CA,
the first join token, the first admin token, in one transaction), writes the first
node's TLS files into its data dir (`node.security.files`) and returns the admin's
context for the CLI's context file. `issue_node` writes a node's files with the CA
in hand (the dev cluster makes every node's this way; real hosts join with a token).
`local_admin` makes new admin credentials from a node's disk and etcd, for whoever
has both (the dev cluster, when its context file is gone).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from node.model.errors import FailedPrecondition
from node.security import bootstrap
from node.security.ca import ClusterCA, Lifetimes
from node.security.cluster import ClusterSecurity
from node.security.context import Context
from node.security.files import NodeFiles, read_secret, write_secret
from node.security.tokens import JoinToken, Role


def split_address(address: str) -> tuple[list[str], list[str]]:
    """(IPs, DNS names) for a node certificate, from its advertise address."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return [], [address]
    return [address], []


@dataclass(frozen=True, repr=False)
class Initialised:
    authority: ClusterCA
    passphrase: bytes
    join_token: JoinToken  # to show the operator once
    admin: Context  # for the CLI's context file


def issue_node(
    files: NodeFiles,
    authority: ClusterCA,
    passphrase: bytes,
    node_id: str,
    ips: list[str],
    dns: list[str],
    lifetimes: Lifetimes | None = None,
) -> None:
    """Write a node's CA certificate, a new key and certificate, and the CA passphrase."""
    issued = bootstrap.node_identity(authority, node_id, ips, dns, lifetimes)
    files.save(authority.cert_pem, issued.key, issued.cert)
    write_secret(files.ca_passphrase, passphrase)


def admin_context(endpoint: str, authority: ClusterCA, creds: bootstrap.ClientCredentials) -> Context:
    return Context(
        endpoint, authority.cert_pem.decode(), creds.cert.decode(), creds.key.decode(), str(creds.token)
    )


async def init_host(
    security: ClusterSecurity,
    files: NodeFiles,
    node_id: str,
    ips: list[str],
    dns: list[str],
    endpoint: str,
) -> Initialised:
    """Initialise the cluster (refused when it already is) and set this host up as its first node.

    The host's files (the CA passphrase above all) are written before the CA goes to etcd:
    written after, a kill, a Ctrl-C or a full disk between the two left a CA in etcd whose
    key no one could open, and a second init was refused (already initialised). Refused,
    the files just written are removed. A data dir that already holds a node's files is
    written over only once the cluster is ours."""
    authority, secrets, admin = security.prepare()
    fresh = not files.exists() and not files.ca_passphrase.exists()
    if fresh:
        issue_node(files, authority, secrets.ca_passphrase, node_id, ips, dns, security.lifetimes)
    try:
        await security.store_initial(authority, secrets, admin)
    except FailedPrecondition:
        if fresh:
            for path in (files.identity, files.ca_cert, files.ca_passphrase):
                path.unlink(missing_ok=True)
        raise
    if not fresh:
        issue_node(files, authority, secrets.ca_passphrase, node_id, ips, dns, security.lifetimes)
    return Initialised(
        authority, secrets.ca_passphrase, secrets.join.token, admin_context(endpoint, authority, admin)
    )


async def local_admin(
    security: ClusterSecurity, passphrase: bytes, endpoint: str, name: str = "admin"
) -> Context:
    """New admin credentials, signed with the CA from etcd (needs a node's passphrase)."""
    authority = await security.load_ca(passphrase)
    creds = bootstrap.client_credentials(
        authority, name, Role.ADMIN, "admin made on a node's host", security.lifetimes
    )
    await security.add_token(creds.record)
    return admin_context(endpoint, authority, creds)


def read_passphrase(data_dirs: list[Path]) -> bytes | None:
    """The CA passphrase from the first of these node data dirs that has one."""
    for data_dir in data_dirs:
        path = NodeFiles.of(data_dir).ca_passphrase
        if path.exists():
            return read_secret(path).strip()
    return None
