"""`shoal cluster …`: initialise a secured cluster, show and rotate its join token.

`init` runs on the first host, before its daemon: it talks to etcd directly (with the
daemon's own configuration: `--config`, SHOAL_* and the same flags), creates the
cluster CA, the first join token and the first admin token, writes the host's node
certificate into its data dir and the admin's credentials into the CLI's context
file, and prints the join token. The other commands are admin calls to any node.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import click

from node.cli import Settings, pass_settings
from node.model.config import ConfigError, NodeConfig, load, resolve_node_id
from node.model.keys import Keys
from node.security import ca, context, provision
from node.security.cluster import ClusterSecurity
from node.security.etcd_tls import read_etcd_tls
from node.security.files import NodeFiles
from node.store import StoreError
from node.store.etcd import EtcdStore
from node.wire.client import ShoalError


@click.group()
def cluster() -> None:
    """Set up a secured cluster; show or rotate its join token; back it up and restore it."""


async def _init(config: NodeConfig, endpoint: str) -> provision.Initialised:
    tls = (
        read_etcd_tls(config.etcd_ca, config.etcd_cert, config.etcd_key, config.etcd_server_name)
        if config.etcd_ca
        else None
    )
    store = EtcdStore(config.etcd, timeout=config.etcd_timeout, tls=tls)
    await store.connect()
    try:
        await store.ping()
        security = ClusterSecurity(store, Keys(config.etcd_prefix), config.cluster)
        ips, dns = provision.split_address(config.address)
        return await provision.init_host(
            security, NodeFiles.of(config.data_dir), config.node_id, ips, dns, endpoint
        )
    finally:
        await store.close()


@cluster.command("init")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="shoald's TOML config file")
@click.option(
    "--data-dir", type=click.Path(file_okay=False), help="this host's shoald data dir [/var/lib/shoal]"
)
@click.option("--node-id", help="this host's node id")
@click.option("--cluster", "cluster_name", help="cluster name [shoal]")
@click.option("--address", help="this host's advertise address [127.0.0.1]")
@click.option("--grpc-port", type=int, help="shoald's gRPC port [7070]")
@click.option("--etcd", help="etcd endpoints, host:port[,...] [127.0.0.1:2379]")
@click.option("--etcd-prefix", help="key prefix in etcd [/shoal/v1/]")
@click.option("--etcd-ca", type=click.Path(dir_okay=False), help="CA of etcd's certificate (TLS to etcd)")
@click.option("--etcd-cert", type=click.Path(dir_okay=False), help="client certificate for etcd")
@click.option("--etcd-key", type=click.Path(dir_okay=False), help="its key")
@click.option("--context-name", help="name of the admin's context in the context file [the cluster name]")
@click.option(
    "--context-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="where to write the admin's context [SHOAL_CONTEXT_FILE, ~/.config/shoal/context.json]",
)
def init_cmd(
    config_file: str | None, context_name: str | None, context_file: Path | None, **flags: Any
) -> None:
    """Create the cluster CA and the first admin, set this host up as the first node.

    Run it once, on the first host, with shoald's configuration, before starting shoald.
    """
    flags["cluster"] = flags.pop("cluster_name")
    try:
        config = resolve_node_id(load(flags, os.environ, config_file))
    except (ConfigError, OSError) as exc:
        raise ShoalError(str(exc)) from None
    endpoint = f"{config.address}:{config.grpc_port}"
    try:
        done = asyncio.run(_init(config, endpoint))
    except (ShoalError, StoreError, OSError) as exc:
        raise ShoalError(str(exc)) from None
    path = context.save_context(context_name or config.cluster, done.admin, context_file)
    files = NodeFiles.of(config.data_dir)
    click.echo(f"cluster {config.cluster} initialised: CA sha256 {done.authority.fingerprint[:16]}…")
    click.echo(f"node {config.node_id}: certificate and key in {files.root} (start shoald now)")
    click.echo(f"admin credentials: {path} (mode 0600; holds the admin token, keep it secret)")
    click.echo(
        "to add a host, start shoald there with this join token (SHOAL_JOIN_TOKEN or join_token_file):"
    )
    click.echo(f"\n    {done.join_token}\n")


@cluster.command("join-token")
@pass_settings
def join_token_cmd(settings: Settings) -> None:
    """Print the current join token (admin); its certificate is renewed first when due."""
    click.echo(settings.client().join_token())


@cluster.command("rotate-token")
@pass_settings
def rotate_token_cmd(settings: Settings) -> None:
    """Make a new join token; the old one no longer admits anyone (admin)."""
    token = settings.client().rotate_join_token()
    click.echo("join token rotated; the old one no longer works. The new one:", err=True)
    click.echo(token)


@cluster.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_settings
def backup_cmd(settings: Settings, file: Path) -> None:
    """Save the whole cluster state (etcd's snapshot) to FILE (admin).

    Secrets stay sealed in it; it holds token hashes: keep it like the CA passphrase.
    """
    from node.cli import backup

    try:
        size = backup.write(settings.client().backup_chunks(), file)
    except backup.BackupError as exc:
        raise ShoalError(str(exc)) from None
    click.echo(f"backup written to {file} ({size} bytes, SHA-256 checked)")


@cluster.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="the etcd member's new, empty data dir",
)
@click.option("--name", required=True, help="the etcd member's name (its --name)")
@click.option("--peer-url", required=True, help="the member's peer URL (its --initial-advertise-peer-urls)")
@click.option(
    "--initial-cluster",
    default="",
    help="every member as name=peer-url,... (the same on each member) [this one alone]",
)
@click.option(
    "--cluster-token",
    help="the restored etcd cluster's --initial-cluster-token, the same on every member "
    "[shoal-restored-<the first 16 hex digits of the backup's SHA-256>]",
)
def restore_cmd(
    file: Path, data_dir: Path, name: str, peer_url: str, initial_cluster: str, cluster_token: str | None
) -> None:
    """Restore a backup into a fresh etcd member's data dir (run on each member's host,
    before starting that etcd with the same name, peer URL and initial cluster)."""
    from node.cli import backup

    try:
        backup.verify(file)
        backup.restore(
            backup.restore_args(
                file,
                data_dir,
                name,
                peer_url,
                initial_cluster,
                cluster_token or f"shoal-restored-{backup.fingerprint(file)}",
            ),
            data_dir,
        )
    except backup.BackupError as exc:
        raise ShoalError(str(exc)) from None
    click.echo(f"restored {file} into {data_dir}: start etcd there as {name}, then the daemons reconnect")
    click.echo(
        "note: the cluster is as it was at the backup: a token revoked or a join token rotated "
        "since then is valid again; revoke (`shoal token revoke`) and rotate "
        "(`shoal cluster rotate-token`) them again once it runs"
    )


def own_cluster(found: context.Context) -> str:
    """The cluster name in the client's own certificate."""
    try:
        return ca.identity_of(ca.load_cert(found.cert.encode())).cluster
    except ca.CertError as exc:
        raise ShoalError(f"the client certificate is not usable: {exc}") from None
