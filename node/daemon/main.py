"""`shoald`: parse flags, load the configuration, run the daemon.

Every failure to start is one line on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import click

from node.daemon import shutdown
from node.daemon.app import Daemon, StartupError
from node.model.config import ConfigError, detect_capacity, load, resolve_node_id
from node.telemetry.logs import setup


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file [SHOAL_CONFIG]"
)
@click.option("--node-id", help="this node's id (kept in the data dir after the first start)")
@click.option("--data-dir", type=click.Path(file_okay=False), help="state directory [/var/lib/shoal]")
@click.option("--cluster", help="cluster name; containers are labelled with it [shoal]")
@click.option("--address", help="advertise address: where peers and clients reach this node [127.0.0.1]")
@click.option("--grpc-port", type=int, help="gRPC port on --address [7070]")
@click.option("--etcd", help="etcd endpoints, host:port[,host:port...] [127.0.0.1:2379]")
@click.option("--etcd-prefix", help="key prefix in etcd [/shoal/v1/]")
@click.option("--label", "labels", multiple=True, help="node label key=value (repeatable)")
@click.option("--cpu", type=float, help="cores offered to tasks [detected]")
@click.option("--memory", help="memory offered to tasks: bytes, or with a unit (512Mi, 8Gi, 2G) [detected]")
@click.option("--publish-address", help="where container ports are published [--address]")
@click.option("--metrics-port", type=int, help="Prometheus /metrics port on --address, 0 = off [7071]")
@click.option("--metrics-tls", is_flag=True, default=None, help="serve /metrics over TLS (node certificate)")
@click.option("--metrics-token-file", type=click.Path(dir_okay=False), help="bearer token /metrics requires")
@click.option("--dashboard-port", type=int, help="web dashboard (HTTPS) port on --address, 0 = off [0]")
@click.option("--ingress-http-port", type=int, help="shared HTTP entrance (ingress) port, 0 = off [0]")
@click.option("--ingress-https-port", type=int, help="shared HTTPS entrance (ingress) port, 0 = off [0]")
@click.option("--drain", type=float, help="seconds a replica drains before it is stopped [2]")
@click.option("--docker-host", help="the Docker engine: unix:///path or tcp://host:port [DOCKER_HOST]")
@click.option(
    "--engine-timeout",
    type=float,
    help="seconds the container engine may not answer before this node is not ready [15]",
)
@click.option("--pull-timeout", type=float, help="seconds an image pull may take [600]")
@click.option(
    "--task-history-limit", type=int, help="exited containers kept per slot for their logs, 0 = none [5]"
)
@click.option("--preset", type=click.Choice(["local", "lan"]), help="timing preset [lan]")
@click.option("--lease-ttl", type=int, help="node lease TTL in seconds [preset]")
@click.option("--leader-ttl", type=int, help="leader key lease TTL in seconds [preset]")
@click.option(
    "--down-grace", type=float, help="seconds a node stays dead to gossip before its tasks move [preset]"
)
@click.option("--join", help="gossip seeds, host:port[,host:port...] (the etcd registry is used too)")
@click.option(
    "--leave-on-stop", is_flag=True, default=None, help="on SIGTERM, leave the cluster (tasks move)"
)
@click.option(
    "--shutdown-grace", type=float, help="seconds from SIGTERM until the daemon has exited, at most [10]"
)
@click.option("--wait-for-etcd", is_flag=True, default=None, help="keep retrying until etcd answers")
@click.option(
    "--join-token",
    help="join a secured cluster with this token on first start; prefer SHOAL_JOIN_TOKEN or "
    "--join-token-file: every user of the host sees process arguments",
)
@click.option("--join-token-file", type=click.Path(dir_okay=False), help="file holding the join token (0600)")
@click.option(
    "--cert-lifetime", type=float, help="seconds a node certificate is valid; renewed at 2/3 [30 days]"
)
@click.option("--etcd-ca", type=click.Path(dir_okay=False), help="CA of etcd's certificate: TLS to etcd")
@click.option("--etcd-cert", type=click.Path(dir_okay=False), help="client certificate for etcd (PEM)")
@click.option("--etcd-key", type=click.Path(dir_okay=False), help="its key (PEM, 0600)")
@click.option("--etcd-server-name", help="name to check etcd's certificate for [the endpoint's host]")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="log format [text]")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[info]")
@click.option(
    "--proxy-workers",
    help="processes serving the published ports: auto (one per core) or N; 0 = in the daemon [auto]",
)
@click.option("--proxy-nft", help="the nft program for fast_path: kernel ports, or off (userland only) [nft]")
@click.option("--names/--no-names", default=None, help="service names for this host's containers [on]")
@click.option("--vip-range", help="the services' virtual addresses, the same on every node [10.213.0.0/16]")
@click.option(
    "--vip-kernel/--no-vip-kernel", default=None, help="VIPs of local replicas by nftables DNAT [on]"
)
def command(config_file: str | None, **flags: Any) -> None:
    """The shoal daemon: run one on every host."""
    flags["labels"] = list(flags["labels"]) or None
    try:
        config = detect_capacity(resolve_node_id(load(flags, os.environ, config_file)))
    except (ConfigError, OSError) as exc:
        click.echo(f"shoald: {exc}", err=True)
        sys.exit(1)
    setup(config.node_id, config.log_format, config.log_level)
    try:
        _run(Daemon(config))
    except StartupError as exc:
        click.echo(f"shoald: {exc}", err=True)
        sys.exit(1)


def _run(daemon: Daemon) -> None:
    try:
        import uvloop

        uvloop.run(daemon.run())
    except ImportError:
        asyncio.run(daemon.run())
    if daemon.deadline is not None:  # stopped: Docker calls in flight do not hold the exit
        shutdown.leave_threads(daemon.deadline)


def main() -> None:
    command()
