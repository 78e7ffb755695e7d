"""`shoal pool apply -f pools.yaml` and `shoal pool ls` (issue 15): node pools (admin).

See docs/pools.md. `apply` replaces every pool with the file's (`pools: {}` removes
them all); the leader asks the pools' providers for nodes when replicas wait for
capacity, and gives nodes back once empty for their pool's `idle_timeout`.
"""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path
from typing import Any, NoReturn

import click

from node.cli import Settings, pass_settings
from node.cli.output import FORMATS, emit_data, emit_table, output_option
from node.model.errors import InvalidArgument
from node.model.spec import load_yaml
from node.model.spec_errors import SpecError
from node.wire.pools import apply_pools, list_pools


@click.group("pool")
def pool() -> None:
    """Node pools: capacity a provider adds when replicas wait, and takes back when idle (admin)."""


@pool.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False), help="pools YAML file")
@pass_settings
def apply_cmd(settings: Settings, path: str) -> None:
    """Declare the cluster's pools (replaces those declared before)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        document = plain(load_yaml(text, path), path)  # plain values, not ruamel's
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    resp = apply_pools(settings.client(), document)
    click.echo(f"pools: {', '.join(resp.pools) or 'none'} (revision {resp.revision})")


def plain(value: Any, source: str, where: str = "", at: tuple[int, int] | None = None) -> Any:
    """`value` (what `load_yaml` read) as plain JSON values; refuses the first
    value JSON has no form for (a YAML date or timestamp, `!!binary`, `!!set`) and its line
    (`json.dumps` of it raised a TypeError, shown as a traceback). Nothing is sent then.
    `InvalidArgument` naming it (shown as one `error:` line)."""
    if isinstance(value, dict):
        places = getattr(getattr(value, "lc", None), "data", None) or {}  # key -> [line, col, vline, vcol]
        out = {}
        for key, item in value.items():
            place = places.get(key) or [None] * 4
            if key is not None and not isinstance(key, str | int | float):  # bool is an int
                _unplain(key, source, where, _at(place[0], place[1]), "a key")
            name = str(key) if isinstance(key, str) else json.dumps(key)  # as JSON names it
            out[name] = plain(item, source, f"{where}.{name}" if where else name, _at(place[2], place[3]))
        return out
    if isinstance(value, list):
        places = getattr(getattr(value, "lc", None), "data", None) or {}  # index -> [line, col]
        return [
            plain(item, source, f"{where}[{i}]", _at(*(places.get(i) or [None, None])[:2]))
            for i, item in enumerate(value)
        ]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return int(value) if isinstance(value, int) else float(value)  # ruamel's ScalarInt, ScalarFloat
    if isinstance(value, str):
        return str(value)
    _unplain(value, source, where, at, "a value")


def _at(line: int | None, column: int | None) -> tuple[int, int] | None:
    return (line + 1, column + 1) if line is not None and column is not None else None


def _unplain(value: Any, source: str, where: str, at: tuple[int, int] | None, what: str) -> NoReturn:
    kind = "date" if isinstance(value, date) else type(value).__name__
    shown = value.isoformat() if isinstance(value, date) else str(value)
    line = f":{at[0]}:{at[1]}" if at else ""
    raise InvalidArgument(
        f"{source}{line}: {where or 'the document'}: {what} must be a string, "
        f"number, true/false, list or mapping; {shown[:60]!r} is read as a YAML {kind}: quote it "
        "to make it a string"
    )


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t)) if t else 0
    return f"{s // 3600}h" if s >= 3600 else f"{s // 60}m" if s >= 60 else f"{s}s"


def _pool_dict(p: Any) -> dict[str, Any]:
    return {
        "name": p.name,
        "min": p.min,
        "max": p.max,
        "cpu": p.cpu,
        "memory": p.memory,
        "labels": dict(p.labels),
        "idle_timeout": p.idle_timeout,
        "command": list(p.command),
    }


def _node_dict(n: Any) -> dict[str, Any]:
    return {
        "pool": n.pool,
        "node": n.node,
        "state": n.state,
        "registered": n.registered,
        "requested_at": n.requested_at,
        "changed_at": n.changed_at,
        "provider_id": n.provider_id,
        "address": n.address,
        "message": n.message,
        "dedicated": n.dedicated,
        "cpu": n.cpu,
        "memory": n.memory,
    }


@pool.command("ls")
@output_option(formats=FORMATS)
@pass_settings
def ls_cmd(settings: Settings, fmt: str) -> None:
    """The pools, their nodes, and the requests in flight (asked for, not joined yet)."""
    resp = list_pools(settings.client())
    if fmt != "table":
        data = {"pools": [_pool_dict(p) for p in resp.pools], "nodes": [_node_dict(n) for n in resp.nodes]}
        emit_data(data, fmt)
        return
    nodes = list(resp.nodes)

    def count(p: Any, *states: str) -> int:
        return sum(1 for n in nodes if n.pool == p.name and n.state in states)

    emit_table(
        list(resp.pools),
        [
            ("POOL", lambda p: p.name),
            ("NODE SIZE", lambda p: f"{p.cpu:g} cpu {p.memory / 2**30:g} GiB"),
            ("MIN", lambda p: str(p.min)),
            ("MAX", lambda p: str(p.max)),
            ("JOINED", lambda p: str(count(p, "joined"))),
            ("IN FLIGHT", lambda p: str(count(p, "requested", "created"))),
            ("LEAVING", lambda p: str(count(p, "deleting", "released"))),
            ("IDLE TIMEOUT", lambda p: f"{p.idle_timeout:g}s"),
        ],
    )
    if nodes:
        click.echo()
        emit_table(
            nodes,
            [
                ("NODE", lambda n: n.node),
                ("POOL", lambda n: n.pool),
                ("STATE", lambda n: n.state),
                ("REGISTERED", lambda n: "yes" if n.registered else "no"),
                ("SINCE", lambda n: _ago(n.changed_at)),
                ("PROVIDER ID", lambda n: n.provider_id),
                (
                    "DEDICATED TO",
                    lambda n: (
                        f"{n.dedicated} ({n.cpu:g} cpu {n.memory / 2**30:g} GiB)" if n.dedicated else ""
                    ),
                ),
                ("MESSAGE", lambda n: n.message[:80]),
            ],
        )
