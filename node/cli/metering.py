"""`shoal usage`: metered usage and its cost (issue 15, item 4; docs/usage.md).

Every node meters its tasks into etcd per interval (vCPU-s and GiB-s reserved by the
spec, CPU-s and GiB-s used from the cgroups, node-seconds); the leader rolls old
intervals into day totals. This prints them in hours, grouped, priced with the
cluster's rate card (`shoal usage rates set`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from node.cli import Settings, pass_settings
from node.cli.output import Column, emit_data, emit_table
from node.runtime.logmerge import parse_since

EXAMPLE = "--vcpu-hour 0.04048 --gib-hour 0.004445 (AWS Fargate, Linux, us-east-1)"


def _when(text: str | None, name: str) -> float:
    if not text:
        return 0.0
    try:
        return parse_since(text, time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


def _call(settings: Settings, method: str, request: Any) -> Any:
    return settings.client()._unary(method, request)


def row_dict(row: Any) -> dict[str, Any]:
    return {
        "key": row.key,
        "vcpu_hours_reserved": row.vcpu_hours_reserved,
        "vcpu_hours_used": row.vcpu_hours_used,
        "gib_hours_reserved": row.gib_hours_reserved,
        "gib_hours_used": row.gib_hours_used,
        "node_hours": row.node_hours,
        "cost": row.cost,
        "node_cost": row.node_cost,
    }


def columns(by: str, currency: str) -> list[Column]:
    return [
        (by.upper(), lambda r: r.key or "-"),
        ("VCPU-H RESERVED", lambda r: f"{r.vcpu_hours_reserved:.4f}"),
        ("VCPU-H USED", lambda r: f"{r.vcpu_hours_used:.4f}"),
        ("GIB-H RESERVED", lambda r: f"{r.gib_hours_reserved:.4f}"),
        ("GIB-H USED", lambda r: f"{r.gib_hours_used:.4f}"),
        ("NODE-H", lambda r: f"{r.node_hours:.4f}"),
        (f"COST ({currency})", lambda r: f"{r.cost:.4f}"),
        (f"NODE COST ({currency})", lambda r: f"{r.node_cost:.4f}"),
    ]


@click.group("usage", invoke_without_command=True)
@click.option(
    "--since", metavar="DURATION|TIME", help="From then: 24h, 7d, 2026-12-01T00:00:00Z (default: all)."
)
@click.option("--until", metavar="DURATION|TIME", help="Until then (default: now).")
@click.option(
    "--by", default="service", show_default=True, help="Group by service, stack, node or label:KEY."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def usage(ctx: click.Context, since: str | None, until: str | None, by: str, as_json: bool) -> None:
    """Metered usage: vCPU-hours and GiB-hours reserved and used, node-hours, and cost.

    Reserved is what the tasks' specs ask (resources.cpu, resources.memory; 0.25 vCPU and
    512 MiB when unset), used is what the cgroups counted. Cost prices the reserved hours
    with the rate card (`shoal usage rates set`). Recent usage is exact to the metering
    interval; usage older than the roll-up age is kept per whole UTC day.
    """
    if ctx.invoked_subcommand is not None:
        return
    from node.pb import api_pb2

    settings: Settings = ctx.find_object(Settings)  # type: ignore[assignment]
    request = api_pb2.UsageReportRequest(since=_when(since, "--since"), until=_when(until, "--until"), by=by)
    answer = _call(settings, "UsageReport", request)
    rates = answer.rates
    if as_json:
        emit_data(
            {
                "by": answer.by,
                "since": answer.since,
                "until": answer.until,
                "rows": [row_dict(r) for r in answer.rows],
                "total": row_dict(answer.total),
                "rates": {
                    "vcpu_hour": rates.vcpu_hour,
                    "gib_hour": rates.gib_hour,
                    "node_hour": rates.node_hour,
                    "currency": rates.currency,
                    "set": rates.set,
                },
            },
            "json",
        )
        return
    emit_table([*answer.rows, answer.total], columns(answer.by, rates.currency or "USD"))
    if not rates.set:
        click.echo(f"note: no rate card yet, costs are 0; e.g. `shoal usage rates set {EXAMPLE}`")


@usage.group("rates")
def rates_group() -> None:
    """The cluster's rate card: prices per vCPU-hour, GiB-hour and node-hour."""


@rates_group.command("set")
@click.option("--vcpu-hour", type=click.FloatRange(min=0), help="Price of one vCPU reserved for an hour.")
@click.option("--gib-hour", type=click.FloatRange(min=0), help="Price of one GiB reserved for an hour.")
@click.option("--node-hour", type=click.FloatRange(min=0), help="Price of one node for an hour (to compare).")
@click.option("--currency", help="Currency name shown with the costs (default USD).")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A YAML file with vcpu_hour, gib_hour, node_hour, currency.",
)
@pass_settings
def rates_set(
    settings: Settings,
    vcpu_hour: float | None,
    gib_hour: float | None,
    node_hour: float | None,
    currency: str | None,
    path: Path | None,
) -> None:
    """Set the rate card (admin), e.g. `shoal usage rates set --vcpu-hour 0.04048 --gib-hour 0.004445`."""
    from node.model.usage_ledger import Rates
    from node.pb import api_pb2

    data: dict[str, Any] = {}
    if path is not None:
        from ruamel.yaml import YAML, YAMLError

        try:
            loaded = YAML(typ="safe", pure=True).load(path.read_text())
        except (OSError, YAMLError) as exc:
            raise click.BadParameter(f"{path}: {exc}", param_hint="--file") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter(
                f"{path}: expected a mapping such as 'vcpu_hour: 0.04048'", param_hint="--file"
            )
        data.update(loaded)
    flags = {"vcpu_hour": vcpu_hour, "gib_hour": gib_hour, "node_hour": node_hour, "currency": currency}
    data.update({k: v for k, v in flags.items() if v is not None})
    if not data:
        raise click.UsageError(f"give the prices, e.g. {EXAMPLE}, or --file rates.yaml")
    rates = Rates.of(data)  # a clear error before anything is sent
    request = api_pb2.SetUsageRatesRequest(
        rates=api_pb2.UsageRates(
            vcpu_hour=rates.vcpu_hour,
            gib_hour=rates.gib_hour,
            node_hour=rates.node_hour,
            currency=rates.currency,
        )
    )
    answer = _call(settings, "SetUsageRates", request)
    click.echo(
        f"rate card set: {answer.vcpu_hour:g} per vCPU-hour, {answer.gib_hour:g} per GiB-hour, "
        f"{answer.node_hour:g} per node-hour ({answer.currency})"
    )
