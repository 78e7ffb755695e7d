"""Following a rollout from the CLI: `shoal service apply` and `rollback` wait for it.

`follow` polls the service (every `interval` seconds, bounded by `wait`) and prints a
line each time the progress changes: state, replicas updated out of the total, the
slots in flight and the failed ones. It returns the exit status: 0 when the version
followed runs everywhere (for `shoal service rollback`, when the rollback completed),
1 when its rollout failed, paused or was rolled back by the leader, or when `wait` ran
out (the rollout goes on in the cluster either way).

A version that needs no rollout (the first deploy, a scale) is followed until its
replicas run; a newer version applied meanwhile ends the wait ("superseded"). A task of
the version followed whose image could not be pulled ends it at once with the pull's
reason (exit 1; the cluster retries with back-off), rather than at `wait` (issue 13).
"""

from __future__ import annotations

import time

import click

from node.pb import api_pb2
from node.wire.client import ShoalClient

ACTIVE = ("updating", "rolling_back")
GOOD = ("completed",)


def _line(svc: api_pb2.Service, running: int) -> str:
    r = svc.rollout
    if not r.state or r.to_version != svc.version:
        return f"version {svc.version}: {running}/{svc.replicas} running"
    parts = [
        f"version {r.from_version} -> {r.to_version}: {r.state.replace('_', ' ')}",
        f"{r.updated}/{r.total} updated",
    ]
    parts.append(f"{running}/{svc.replicas} running")
    if r.batch:
        parts.append("updating slot(s) " + ",".join(map(str, r.batch)))
    if r.failed:
        parts.append("failed slot(s) " + ",".join(map(str, r.failed)))
    if r.message and r.state not in ACTIVE:
        parts.append(r.message)
    return "; ".join(parts)


def _image_failure(tasks: list[api_pb2.Task], version: int) -> str:
    """The message of a task of `version` (or later) that failed because its image could
    not be pulled (`node.runtime.base.ImageError`: "image X could not be pulled: ..."),
    with its node; "" when there is none."""
    for t in tasks:
        text = t.message
        image = text.startswith("image ") and ("pull" in text or "not present" in text)
        if t.state == "failed" and t.version >= version and image:
            return f"on node {t.node}: {text}"
    return ""


def follow(client: ShoalClient, name: str, version: int, wait: float = 600.0, interval: float = 0.5) -> int:
    deadline = time.monotonic() + wait
    last, target, rolled_back = "", version, False
    failed_at: float | None = None
    while True:
        svc = client.get_service(name)
        tasks = client.list_tasks(name)
        running = sum(1 for t in tasks if t.state == "running")
        line = _line(svc, running)
        if line != last:
            click.echo(f"{time.strftime('%H:%M:%S')} {name} {line}")
            last = line
        if svc.version > target:
            if svc.rollback_of != target:
                click.echo(f"{name}: version {target} was superseded by version {svc.version}")
                return 1
            rolled_back, target, failed_at = True, svc.version, None  # follow the rollback
        if pulled := _image_failure(tasks, target):
            click.echo(
                f"{name}: {pulled}; the cluster retries with back-off (`shoal service ps {name}`)", err=True
            )
            return 1
        r = svc.rollout
        mine = bool(r.state) and r.to_version == target
        if mine and r.state == "failed":
            failed_at = failed_at or time.monotonic()
            if time.monotonic() - failed_at > 15:  # no rollback came (nothing to go back to)
                return 1
        elif mine and r.state not in ACTIVE:
            # rolled_back is how a rollback the user asked for (`shoal service rollback`) ends
            ours_done = r.state in GOOD or (r.state == "rolled_back" and target == version)
            return 0 if ours_done and not rolled_back else 1
        elif not mine and not svc.update_pending and running >= svc.replicas:
            return 1 if rolled_back else 0  # a version that needs no rollout (first deploy, scale)
        if time.monotonic() >= deadline:
            click.echo(
                f"{name}: still in progress after {wait:g}s; it goes on in the cluster "
                f"(`shoal service inspect {name}` shows it)",
                err=True,
            )
            return 1
        time.sleep(interval)
