"""`shoal service autoscale NAME` (issue 15): the autoscaler's view of a service, and the
same as a section of `service inspect`.

The leader writes it (`node.daemon.autoscaler`, `autoscale/<service>`) every pass the
figures change and at least every 10 s; the CLI reads it through `GetService`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from node.cli import Settings, pass_settings
from node.cli.output import emit_data, iso, output_option
from node.model.load import AutoscaleStatus, show
from node.pb import api_pb2
from node.wire.client import ShoalError

Row = dict[str, Any]


def status_of(svc: api_pb2.Service) -> AutoscaleStatus | None:
    if not svc.autoscale_json:
        return None
    try:
        return AutoscaleStatus.from_json(svc.autoscale_json)
    except (ValueError, TypeError, KeyError):
        return None  # a newer leader's shape: show what the spec says only


def _spec(svc: api_pb2.Service) -> dict[str, Any] | None:
    try:
        spec = json.loads(svc.spec_json) if svc.spec_json else {}
    except ValueError:
        return None
    section = spec.get("autoscale") if isinstance(spec, dict) else None
    return section if isinstance(section, dict) else None


def _until(ts: float, now: float) -> str:
    return f"{iso(ts)} (in {ts - now:.0f}s)" if ts > now else ""


def autoscale_dict(svc: api_pb2.Service, now: float | None = None) -> Row | None:
    """What `service autoscale` and `inspect` show; None when the service is not autoscaled."""
    spec = _spec(svc)
    if spec is None:
        return None
    s = status_of(svc)
    if s is None:
        return {"spec": spec, "status": "no decision yet: the leader measures every 2s"}
    now = time.time() if now is None else now
    last = s.last
    return {
        "metric": s.metric,
        "target": show(s.metric, s.target),
        "current": show(s.metric, s.value) if s.value is not None else f"unknown: {s.missing}",
        "replicas": s.replicas,
        "min": s.min,
        "max": s.max,
        "asks_for": s.desired,
        "holding": s.holding,
        "last_decision": None
        if last is None
        else {
            "at": iso(last.at),
            "from": last.replicas_from,
            "to": last.replicas_to,
            "why": last.why,
        },
        "scale_up_cooldown_until": _until(s.up_cooldown_until, now),
        "scale_down_not_before": _until(s.down_cooldown_until, now),
        "measured_at": iso(s.at),
        "by_leader": s.leader,
    }


def scaled_to_zero(svc: api_pb2.Service) -> str:
    """`service ps`'s line for a service the autoscaler took to zero replicas ("" otherwise)."""
    spec = _spec(svc)
    if svc.replicas or spec is None:
        return ""
    return "scaled to zero: the first request through any node's proxy starts a replica (autoscale min 0)"


@click.command("autoscale")
@click.argument("name")
@output_option("text", ("text", "json", "yaml"))
@pass_settings
def autoscale_cmd(settings: Settings, name: str, fmt: str) -> None:
    """The autoscaler's view of a service: its metric against the target, the count the
    metric asks for, the last decision and the cooldowns (docs/autoscaling.md)."""
    svc = settings.client().get_service(name)
    row = autoscale_dict(svc)
    if row is None:
        raise ShoalError(f"service '{name}' is not autoscaled: its spec has no autoscale section")
    if fmt != "text":
        emit_data(row, fmt)
        return
    if "status" in row:
        click.echo(f"service {name}: {row['status']}")
        return
    per = " per replica" if row["metric"] == "requests_per_replica" else ""
    click.echo(f"service {name}: {row['metric']} {row['current']}{per}, target {row['target']}")
    bounds = f"(min {row['min']}, max {row['max']})"
    click.echo(f"  replicas   {row['replicas']} {bounds}; the metric asks for {row['asks_for']}")
    if row["holding"]:
        click.echo(f"  holding    {row['holding']}")
    last = row["last_decision"]
    if last:
        click.echo(f"  last       {last['at']}: {last['from']} -> {last['to']} replica(s): {last['why']}")
    for key, label in (("scale_up_cooldown_until", "up again  "), ("scale_down_not_before", "down from ")):
        if row[key]:
            click.echo(f"  {label} {row[key]}")
    click.echo(f"  measured   {row['measured_at']} by the leader {row['by_leader']}")
