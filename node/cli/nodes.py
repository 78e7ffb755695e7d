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


def _cores(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _free(n: api_pb2.Node) -> str:
    """Cores and memory not reserved by the node's tasks: what a new replica can have."""
    cpu, memory = max(0.0, n.cpu - n.reserved_cpu), max(0, n.memory - n.reserved_memory)
    return f"{_cores(cpu)} cpu, {human_bytes(memory)}"


REASON_WIDTH = 40  # characters of a kernel fallback's reason in the table (all of it: inspect)


def _kernel(n: api_pb2.Node) -> str:
    """The kernel fast path (decision 75): on, off, `fallback (why)`; `-` when the node
    does not report it (older than the field, or down)."""
    if not n.kernel_path:
        return "-"
    if n.kernel_path != "fallback":
        return n.kernel_path
    why = " ".join(n.kernel_reason.split()) or "no reason given"
    if len(why) > REASON_WIDTH:
        why = why[: REASON_WIDTH - 1] + "…"
    return f"fallback ({why})"


NODE_COLUMNS = [
    ("ID", lambda n: n.id),
    ("ADDRESS", _address),
    ("STATUS", lambda n: n.status),
    ("KERNEL", _kernel),
    ("AVAILABILITY", lambda n: n.availability or "-"),
    ("LEADER", lambda n: "*" if n.leader else ""),
    ("GOSSIP", lambda n: n.member_state or "-"),
    ("INCARNATION", lambda n: n.incarnation if n.member_state else "-"),
    ("SINCE", lambda n: _age(n.state_age) if n.member_state else "-"),
    ("TASKS", lambda n: n.tasks),
    ("CPU RESERVED/CAPACITY", lambda n: f"{_cores(n.reserved_cpu)}/{_cores(n.cpu)}"),
    ("MEMORY RESERVED/CAPACITY", lambda n: f"{human_bytes(n.reserved_memory)}/{human_bytes(n.memory)}"),
    ("FREE", _free),
    ("LABELS", lambda n: ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))),
    ("SIMULATED", lambda n: "yes" if n.simulated else ""),
]


@click.group()
def node() -> None:
    """Inspect the nodes (hosts) of the cluster; drain, pause, activate and label them."""


@node.command("ls")
@output_option()
@pass_settings
def node_ls(settings: Settings, fmt: str) -> None:
    """List nodes; LEADER marks the node that leads (*).

    STATUS is the cluster's verdict (down: dead to gossip, or its lease expired);
    GOSSIP, INCARNATION and SINCE are the answering node's own gossip view.
    AVAILABILITY is the operator's (active, pause, drain); CPU and MEMORY show what the
    node's tasks reserve of its capacity, FREE what a new replica can still have;
    LABELS are what constraints see (its own, overlaid by `shoal node label`);
    SIMULATED marks nodes of a simulation (`shoal dev --simulate`), which run nothing.
    KERNEL is the kernel fast path of `fast_path: kernel` ports (on; off; fallback, with
    why: those ports are served by the userland listeners); `-` when the node does not
    say (an older version, or down). `shoal node inspect` gives the whole reason.
    """
    nodes = sorted(settings.client().list_nodes().nodes, key=lambda n: n.id)
    emit(nodes, node_dict, NODE_COLUMNS, fmt)


@node.command("inspect")
@click.argument("node_id", metavar="NODE")
@output_option(default="yaml", formats=("yaml", "json"))
@pass_settings
def node_inspect(settings: Settings, node_id: str, fmt: str) -> None:
    """Show one node: every field of `node ls`, reasons in full (the kernel path's)."""
    found = [n for n in settings.client().list_nodes().nodes if n.id == node_id]
    if not found:
        from node.model.errors import NotFound  # shown as one `error:` line, as the server's

        raise NotFound(f"node {node_id!r} not found")
    emit_data(node_dict(found[0]), fmt)


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
    if answer.alias:
        networks = ", ".join(answer.alias_networks)
        click.echo(f"{answer.alias}: alias of service {answer.name} on network {networks}")
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
    addresses: every alive node's address with each published port.

    NAME is a service's name or a network alias of one (`networks: [{name: NET, aliases:
    [NAME]}]`).
    """
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


def _updated(result: api_pb2.UpdateNodeResponse, what: str) -> None:
    labels = ",".join(f"{k}={v}" for k, v in sorted(result.labels.items())) or "-"
    state = "" if result.changed else " (unchanged)"
    click.echo(f"node {result.node}: {what}{state}; availability {result.availability}, labels {labels}")


@node.command("drain")
@click.argument("node_id", metavar="NODE")
@pass_settings
def node_drain(settings: Settings, node_id: str) -> None:
    """Move NODE's tasks elsewhere and place nothing new on it.

    Each replica moves as in a rolling update: its successor runs (and is healthy) on
    another node before it is stopped. `shoal node activate` undoes it.
    """
    _updated(settings.client().set_node_availability(node_id, "drain"), "draining")


@node.command("pause")
@click.argument("node_id", metavar="NODE")
@pass_settings
def node_pause(settings: Settings, node_id: str) -> None:
    """Keep NODE's tasks where they are, but place nothing new on it."""
    _updated(settings.client().set_node_availability(node_id, "pause"), "paused")


@node.command("activate")
@click.argument("node_id", metavar="NODE")
@pass_settings
def node_activate(settings: Settings, node_id: str) -> None:
    """Let NODE take new tasks again (after drain or pause); running tasks are not moved back."""
    _updated(settings.client().set_node_availability(node_id, "active"), "active")


def parse_label_changes(items: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """`key=value` sets, `key-` removes; anything else is a usage error."""
    set_: dict[str, str] = {}
    remove: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        if sep:
            set_[key] = value
        elif item.endswith("-") and len(item) > 1:
            remove.append(item[:-1])
        else:
            raise click.BadParameter(f"{item!r}: use key=value to set a label, key- to remove one")
    return set_, remove


@node.command("label")
@click.argument("node_id", metavar="NODE")
@click.argument("changes", nargs=-1, required=True, metavar="KEY=VALUE|KEY-...")
@pass_settings
def node_label(settings: Settings, node_id: str, changes: tuple[str, ...]) -> None:
    """Set (key=value) or remove (key-) labels of NODE.

    They overlay the node's own labels (from its config) and last until changed, across
    restarts. Constraints see them at once: replicas that no longer satisfy their
    service's constraints move, as on a drain.
    """
    set_, remove = parse_label_changes(changes)
    _updated(settings.client().label_node(node_id, set_, remove), "labels changed")
