"""`shoal dev`: a local cluster (embedded etcd + N daemons on 127.0.0.1..N).

Foreground by default: Ctrl-C or SIGTERM stops every daemon, removes the cluster's
containers and stops etcd. `--detach` runs the same supervisor in the background
(pid in DIR/dev.pid, output in DIR/dev.log); `--stop` stops a detached one.

The cluster is secured as any other (a CA, node certificates, an admin token): the
admin's context file is `DIR/context.json`, and the CLI uses it with
`SHOAL_CONTEXT_FILE=DIR/context.json` (`make demo` sets it). Only its location is
printed, never the token.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click

from node.dev import vipranges
from node.dev.devcluster import DevCluster, DevError, pid_alive
from node.model.config import ConfigError, vip_network

DEFAULT_DIR = ".shoal-dev"


def _usage(cluster: DevCluster) -> str:
    addrs = ", ".join(m.addr for m in cluster.members)
    sim = (
        f"  and {cluster.simulate} simulated node(s): SIMULATED in `shoal node ls`\n"
        if cluster.simulate
        else ""
    )
    return (
        f"shoal dev: {cluster.nodes} node(s) up: {addrs}; etcd at https://{cluster.etcd.endpoint}\n"
        f"{sim}"
        f"  etcd takes only its client certificates ({' '.join(cluster.etcd.client_flags[2:])})\n"
        f"  logs and state: {cluster.data_dir}\n"
        f"  admin credentials (CA, client certificate, token; mode 0600): {cluster.context_file}\n"
        f"  dashboard: https://{cluster.members[0].address}:"
        f"{cluster.dashboard_port or cluster.grpc_port + 2}/ (log in with a client token)\n"
        f"  try:  export SHOAL_CONTEXT_FILE={cluster.context_file}\n"
        f"        shoal node ls\n"
        f"        shoal service apply -f deploy/examples/web.yaml\n"
        f"        shoal service ps web\n"
    )


@click.command()
@click.option("--nodes", "-n", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DIR,
              show_default=True, help="etcd data, node state and logs")  # fmt: skip
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=7070, show_default=True)
@click.option("--etcd-port", type=click.IntRange(1, 65534), default=2479, show_default=True,
              help="client port of the embedded etcd (the peer port is the next one)")  # fmt: skip
@click.option("--cluster", default="dev", show_default=True, help="name on the cluster's containers")
@click.option("--vip-range", default="", callback=lambda _c, _p, v: _vip_range(v), metavar="CIDR",
              help="service VIPs and the name server's address; default: a free /24 of "
              f"{vipranges.DEV_POOL}, claimed as a local route until the cluster stops")  # fmt: skip
@click.option("--detach", is_flag=True, help="run in the background and return when the cluster is up")
@click.option("--stop", "stop_", is_flag=True, help="stop a cluster started with --detach")
@click.option("--simulate", type=click.IntRange(0, 100_000), default=0, metavar="N",
              help="also register N simulated nodes (8 cores, 32 GiB each; they run nothing)")  # fmt: skip
def dev(
    nodes: int,
    data_dir: Path,
    grpc_port: int,
    etcd_port: int,
    cluster: str,
    detach: bool,
    stop_: bool,
    simulate: int,
    vip_range: str,
) -> None:
    """Run a local cluster: embedded etcd and N daemons, node i on 127.0.0.i."""
    pid_file = data_dir / "dev.pid"
    if stop_:
        _stop_detached(pid_file)
        return
    if pid_file.exists() and pid_alive(int(pid_file.read_text())):
        pid = pid_file.read_text().strip()
        raise click.ClickException(
            f"a dev cluster already runs from {data_dir} (pid {pid}); stop it: shoal dev --stop"
        )
    c = DevCluster(
        data_dir, nodes=nodes, grpc_port=grpc_port, etcd_port=etcd_port, cluster=cluster, simulate=simulate,
        vip_range=vip_range,
    )  # fmt: skip
    if detach:
        _detach(c, pid_file)
        return
    _foreground(c, pid_file)


def _foreground(c: DevCluster, pid_file: Path) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        c.start()
    except DevError as exc:
        raise click.ClickException(str(exc)) from None
    pid_file.write_text(f"{os.getpid()}\n")
    click.echo(_usage(c) + "  Ctrl-C stops the cluster and removes its containers.", nl=True)
    reported: set[str] = set()
    try:
        while not stop.wait(1.0):
            for m in c.members:  # a daemon that dies (or is killed to try failover) is reported, once
                if not m.alive() and m.node_id not in reported:
                    reported.add(m.node_id)
                    code = m.proc.returncode if m.proc else None
                    click.echo(f"shoal dev: shoald {m.node_id} exited ({code}); see {m.log_path}", err=True)
    finally:
        click.echo("shoal dev: stopping daemons, removing containers, stopping etcd ...")
        c.stop()
        pid_file.unlink(missing_ok=True)
        click.echo("shoal dev: stopped")


def _detach(c: DevCluster, pid_file: Path) -> None:
    c.data_dir.mkdir(parents=True, exist_ok=True)
    log = (c.data_dir / "dev.log").open("ab")
    args = [
        sys.executable, "-m", "node.cli.main", "dev", "--nodes", str(c.nodes), "--data-dir", str(c.data_dir),
        "--grpc-port", str(c.grpc_port), "--etcd-port", str(c.etcd_port), "--cluster", c.cluster,
        "--simulate", str(c.simulate),
        "--vip-range", c.vip_range,  # the one claimed here: the supervisor gives it back when it stops
    ]  # fmt: skip
    try:
        proc = subprocess.Popen(
            args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
    except OSError:
        vipranges.release(c.vip_range)
        raise
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            vipranges.release(c.vip_range)  # the supervisor gives it back too, unless it never ran
            raise click.ClickException(f"the dev cluster did not start; see {c.data_dir / 'dev.log'}")
        if pid_file.exists() and pid_file.read_text().strip() == str(proc.pid):
            click.echo(_usage(c) + "  stop it with: shoal dev --stop")
            return
        time.sleep(0.2)
    proc.terminate()
    vipranges.release(c.vip_range)
    raise click.ClickException(f"the dev cluster was not up within 60s; see {c.data_dir / 'dev.log'}")


def _vip_range(value: str) -> str:
    """`--vip-range` checked as the daemons check `vip_range` ("" for a free one)."""
    if not value:
        return ""
    try:
        return str(vip_network(value))
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _stop_detached(pid_file: Path) -> None:
    if not pid_file.exists():
        raise click.ClickException(f"no dev cluster runs from {pid_file.parent} (no {pid_file})")
    pid = int(pid_file.read_text())
    if not pid_alive(pid):
        pid_file.unlink(missing_ok=True)
        click.echo("shoal dev: was not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        raise click.ClickException(f"the dev cluster (pid {pid}) did not stop within 60s")
    click.echo("shoal dev: stopped")
