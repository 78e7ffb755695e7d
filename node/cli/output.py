"""What the CLI prints: the dict shapes of the API's messages and their rendering.

The dicts below are the `-o json` / `-o yaml` output, so their keys are a contract
for scripts: add keys, never rename. Tables are plain (no borders, like `docker ps`),
never wrapped, and print every value as it is (no markup is interpreted).
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from node.model.images import ImageRefError, parse_image

if TYPE_CHECKING:  # the messages are only read here; rich and ruamel load when printing
    from node.pb import api_pb2

Row = dict[str, Any]
Column = tuple[str, Callable[[Any], object]]

FORMATS = ("table", "json", "yaml")


def iso(ts: float) -> str:
    """Unix seconds as local ISO 8601 with offset; "" when unknown (0)."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds") if ts else ""


def ports_text(ports: Iterable[api_pb2.Port]) -> str:
    """`18080->8080/http`, `8080/tcp` when not published, `15432->5432/tcp+kernel` for a
    `fast_path: kernel` port (decision 75); comma-separated."""
    parts = []
    for p in ports:
        proto = (p.protocol or "tcp") + (f"+{p.fast_path}" if p.fast_path else "")
        parts.append(f"{p.published}->{p.container}/{proto}" if p.published else f"{p.container}/{proto}")
    return ",".join(parts)


def port_dict(p: api_pb2.Port) -> Row:
    row: Row = {"container": p.container, "published": p.published, "protocol": p.protocol}
    if p.fast_path:
        row["fast_path"] = p.fast_path
    return row


def service_dict(s: api_pb2.Service) -> Row:
    return {
        "name": s.name,
        "version": s.version,
        "image": s.image,
        "replicas": s.replicas,
        "running": s.running,
        "ports": [port_dict(p) for p in s.ports],
        "updated_at": iso(s.updated_at),
        "updated_by": s.updated_by,
        "pending": s.pending,
        "pending_reason": s.pending_reason,
        "labels": _service_labels(s.spec_json),  # decision 73: the service's own (Compose deploy.labels)
    }


def _service_labels(spec_json: str) -> dict[str, str]:
    try:
        spec = json.loads(spec_json) if spec_json else {}
    except ValueError:
        return {}
    labels = spec.get("service_labels") if isinstance(spec, dict) else None
    return dict(labels) if isinstance(labels, dict) else {}


def task_dict(t: api_pb2.Task) -> Row:
    return {
        "slot": t.slot,
        "task": t.task_id,
        "node": t.node,
        "desired": t.desired,
        "state": t.state,
        "container_id": t.container_id,
        "endpoint": t.endpoint,
        "version": t.version,
        "restarts": t.restarts,
        "exit_code": t.exit_code,
        "message": t.message,
        "updated_at": iso(t.updated_at),
        "health": t.health,
        "health_message": t.health_message,
        "health_failures": t.health_failures,
        "health_at": iso(t.health_at) if t.health_at else "",
        "healthy_since": iso(t.healthy_since) if t.healthy_since else "",
        "terminal": t.terminal,
    }


def service_detail(s: api_pb2.Service, tasks: Sequence[api_pb2.Task]) -> Row:
    """`service inspect`: the service, its parsed spec and its tasks."""
    try:
        spec: Any = json.loads(s.spec_json) if s.spec_json else {}
    except ValueError:
        spec = s.spec_json  # show what the server sent rather than fail
    return {
        "name": s.name,
        "version": s.version,
        "updated_at": iso(s.updated_at),
        "updated_by": s.updated_by,
        "replicas": {"desired": s.replicas, "running": s.running},
        "labels": _service_labels(s.spec_json) or None,  # decision 73; container labels: spec.labels
        "image": image_detail(spec) if isinstance(spec, dict) else None,
        "pending": {"replicas": s.pending, "reason": s.pending_reason} if s.pending else None,
        "rollout": rollout_dict(s.rollout) if s.HasField("rollout") else None,
        "proxy_errors": [
            {"node": p.node, "port": p.port, "error": p.error, "since": iso(p.since)} for p in s.proxy_errors
        ],
        "spec": spec,
        "tasks": [task_dict(t) for t in sorted(tasks, key=lambda t: t.slot)],
    }


def image_detail(spec: dict[str, Any]) -> Row:
    """What every replica runs, and whether it is pinned to a digest (issue 13)."""
    image, digest = str(spec.get("image", "")), spec.get("image_digest")
    if digest:
        try:
            runs = parse_image(image).pinned(str(digest))
        except ImageRefError:
            runs = f"{image}@{digest}"
        return {"runs": runs, "pinned": "yes: the tag's digest, resolved at deploy"}
    if "@" in image:
        return {"runs": image, "pinned": "by the reference's own digest"}
    why = (
        "pull: never, each node runs what its engine holds"
        if spec.get("pull") == "never"
        else "the reference names no registry, each node runs what its engine holds or pulls"
    )
    return {"runs": image, "pinned": f"no: {why}"}


def node_dict(n: api_pb2.Node) -> Row:
    return {
        "id": n.id,
        "address": n.address,
        "grpc_port": n.grpc_port,
        "status": n.status,
        "leader": n.leader,
        "labels": dict(sorted(n.labels.items())),
        "cpu": n.cpu,
        "memory": n.memory,
        "tasks": n.tasks,
        "version": n.version,
        "started_at": iso(n.started_at),
        "member_state": n.member_state,
        "incarnation": n.incarnation,
        "state_age": round(n.state_age, 3),
        "availability": n.availability,
        "reserved_cpu": n.reserved_cpu,
        "reserved_memory": n.reserved_memory,
        "free_cpu": round(max(0.0, n.cpu - n.reserved_cpu), 3),
        "free_memory": max(0, n.memory - n.reserved_memory),
        "own_labels": dict(sorted(n.own_labels.items())),
        "simulated": n.simulated,
        "kernel_path": n.kernel_path or None,  # decision 75; None: the node does not report it
        "kernel_reason": n.kernel_reason,
    }


def member_dict(m: api_pb2.Member) -> Row:
    return {
        "node": m.node,
        "address": m.address,
        "state": m.state,
        "previous": m.previous,
        "incarnation": m.incarnation,
        "time": iso(m.time),
        "state_age": round(m.state_age, 3),
    }


def endpoint_dict(e: api_pb2.Endpoint) -> Row:
    return {
        "task": e.task,
        "node": e.node,
        "address": e.address,
        "port": e.port,
        "container_port": e.container_port,
    }


def version_dict(v: api_pb2.ServiceVersion) -> Row:
    return {
        "version": v.version,
        "image": v.image,
        "updated_at": iso(v.updated_at),
        "updated_by": v.updated_by,
        "rollback_of": v.rollback_of,
        "outcome": v.outcome,
        "current": v.current,
    }


def rollout_dict(r: api_pb2.Rollout) -> Row:
    return {
        "state": r.state,
        "from_version": r.from_version,
        "to_version": r.to_version,
        "rollback_of": r.rollback_of,
        "updated": f"{r.updated}/{r.total}",
        "updating_slots": list(r.batch),
        "failed_slots": list(r.failed),
        "message": r.message,
        "started_at": iso(r.started_at),
        "updated_at": iso(r.updated_at),
    }


def mesh_dict(m: api_pb2.MeshAddress) -> Row:
    return {"node": m.node, "address": m.address, "port": m.port, "protocol": m.protocol}


def resolve_dict(r: api_pb2.ResolveResponse) -> Row:
    return {
        "name": r.name,
        "endpoints": [endpoint_dict(e) for e in r.endpoints],
        "mesh": [mesh_dict(m) for m in r.mesh],
        **({"alias": r.alias, "alias_networks": list(r.alias_networks)} if r.alias else {}),
    }


def event_dict(e: api_pb2.Event) -> Row:
    return {
        "time": iso(e.time),
        "kind": e.kind,
        "node": e.node,
        "service": e.service,
        "task": e.task,
        "message": e.message,
        "cause": e.cause,
    }


def event_line(e: api_pb2.Event) -> str:
    """`2026-11-27T17:30:01 task.started n1 web/3f2a9c0d1e2b container up`, empty parts left out."""
    when = datetime.fromtimestamp(e.time).strftime("%Y-%m-%dT%H:%M:%S") if e.time else "-"
    subject = "/".join(x for x in (e.service, e.task) if x)
    cause = f"cause={e.cause}" if e.cause else ""
    return " ".join(x for x in (when, e.kind, e.node, subject, " ".join(e.message.split()), cause) if x)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def emit_data(data: Any, fmt: str) -> None:
    """Print a dict or list as JSON or YAML."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.representer.sort_base_mapping_type_on_output = False
    yaml.dump(data, sys.stdout)


def cell_width(text: str) -> int:
    """Terminal columns `text` takes: wide (East Asian) characters 2, combining marks 0."""
    if text.isascii():
        return len(text)
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text
    )


def emit_table(rows: Iterable[Any], columns: Sequence[Column]) -> None:
    """Print `rows` as a table; each column is (HEADER, value of a row): columns two spaces
    apart, left-aligned, never wrapped or cut, headers bold on a terminal (as `docker ps`).

    Written here rather than with rich: importing rich's table costs 40-60 ms, a quarter
    of a whole `shoal service ls` (bench/cli.py; docs/decisions.md)."""
    cells = [[" ".join(str(value(row)).splitlines()) for _, value in columns] for row in rows]
    headers = [header for header, _ in columns]
    widths = [max([cell_width(h), *(cell_width(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    bold = sys.stdout.isatty()

    def line(values: Sequence[str], style: bool = False) -> str:
        padded = [v + " " * (w - cell_width(v)) for v, w in zip(values, widths, strict=True)]
        text = "  ".join(padded).rstrip()
        return click.style(text, bold=True) if style else text

    click.echo(line(headers, bold))
    for r in cells:
        click.echo(line(r))


def emit(rows: Sequence[Any], to_dict: Callable[[Any], Row], columns: Sequence[Column], fmt: str) -> None:
    """A list of messages as a table, or as a JSON/YAML list of their dicts."""
    if fmt == "table":
        emit_table(rows, columns)
    else:
        emit_data([to_dict(r) for r in rows], fmt)


def output_option(default: str = "table", formats: Sequence[str] = FORMATS) -> Callable[[Any], Any]:
    """The `-o/--output` option of a command."""
    return click.option(
        "-o",
        "--output",
        "fmt",
        type=click.Choice(list(formats)),
        default=default,
        show_default=True,
        help="Output format.",
    )
