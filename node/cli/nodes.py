"""`shoal node ls` and `shoal resolve NAME`: the cluster's hosts and a service's replicas."""

from __future__ import annotations

import json
import time

import click

from node.cli import Settings, pass_settings
from node.cli.output import (
    emit,
    emit_data,
    emit_table,
    human_bytes,
    member_dict,
    node_dict,
    output_option,
    resolve_dict,
)
from node.pb import api_pb2


def _address(n: api_pb2.Node) -> str:
    """`address:grpc_port`, the value to give `--addr`."""
    return f"{n.address}:{n.grpc_port}" if n.address and n.grpc_port else n.address


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


NODE_COLUMNS = [
    ("ID", lambda n: n.id),
    ("ADDRESS", _address),
    ("STATUS", lambda n: n.status),
    ("LEADER", lambda n: "*" if n.leader else ""),
    ("GOSSIP", lambda n: n.member_state or "-"),
    ("INCARNATION", lambda n: n.incarnation if n.member_state else "-"),
    ("SINCE", lambda n: _age(n.state_age) if n.member_state else "-"),
    ("TASKS", lambda n: n.tasks),
    ("CPU", lambda n: f"{n.cpu:g}"),
    ("MEMORY", lambda n: human_bytes(n.memory)),
    ("LABELS", lambda n: ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))),
]


@click.group()
def node() -> None:
    """Inspect the nodes (hosts) of the cluster."""


@node.command("ls")
@output_option()
@pass_settings
def node_ls(settings: Settings, fmt: str) -> None:
    """List nodes; LEADER marks the node that leads (*).

    STATUS is the cluster's verdict (down: dead to gossip, or its lease expired);
    GOSSIP, INCARNATION and SINCE are the answering node's own gossip view.
    """
    nodes = sorted(settings.client().list_nodes().nodes, key=lambda n: n.id)
    emit(nodes, node_dict, NODE_COLUMNS, fmt)


@node.command("watch")
@click.option(
    "-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@pass_settings
def node_watch(settings: Settings, fmt: str) -> None:
    """Stream the answering node's gossip view: every member, then each state change."""
    for m in settings.client().watch_members():
        row = member_dict(m)
        if fmt == "json":
            click.echo(json.dumps(row))
            continue
        change = f"{m.previous} -> {m.state}" if m.previous else m.state
        click.echo(f"{row['time']}  {m.node:<12} {m.address:<22} {change:<18} incarnation {m.incarnation}")


ENDPOINT_COLUMNS = [
    ("TASK", lambda e: e.task),
    ("NODE", lambda e: e.node),
    ("ADDRESS", lambda e: e.address),
    ("PORT", lambda e: e.port),
]


MESH_COLUMNS = [
    ("NODE", lambda m: m.node),
    ("MESH ADDRESS", lambda m: f"{m.address}:{m.port}"),
    ("PROTOCOL", lambda m: m.protocol),
]


def _show(answer: api_pb2.ResolveResponse, fmt: str) -> None:
    if fmt != "table":
        emit_data(resolve_dict(answer), fmt)
        return
    if answer.endpoints:
        emit_table(list(answer.endpoints), ENDPOINT_COLUMNS)
    else:
        click.echo(f"no healthy replica of {answer.name}")
    if answer.mesh:
        click.echo()
        emit_table(list(answer.mesh), MESH_COLUMNS)


@click.command()
@click.argument("name")
@click.option("-w", "--watch", is_flag=True, help="Keep printing the answer each time it changes.")
@output_option()
@pass_settings
def resolve(settings: Settings, name: str, watch: bool, fmt: str) -> None:
    """List the healthy, routable replicas of a service (what the proxy uses) and its mesh
    addresses: every alive node's address with each published port."""
    client = settings.client()
    if not watch:
        _show(client.lookup(name), fmt)
        return
    for i, answer in enumerate(client.watch_resolve(name)):
        if fmt == "table":
            click.echo(("\n" if i else "") + f"--- {time.strftime('%H:%M:%S')} {answer.name}")
        elif fmt == "json":
            click.echo(json.dumps(resolve_dict(answer)))
            continue
        _show(answer, fmt)
