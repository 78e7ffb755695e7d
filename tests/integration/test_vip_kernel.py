"""The kernel path of service VIPs (decision 74) on a real `shoal dev` cluster (etcd,
Docker, nftables): a client container's connections to `web`'s VIP are DNATed by the
node's nftables rule straight to the three replicas, in turn (the rule's counter moves by
one per connection, and the rule names exactly the replicas' container addresses); a
container on another network is not DNATed and the listener refuses it as before; a
scale down and up rewrites the rule while a bounded request loop runs, with no failed
request; the cluster's tables are gone once it stops; with `--no-vip-kernel` the
listeners serve alone and no table is written. A replica calling its own service goes
through the listener (no hairpin). A daemon killed with -9 leaves its table, through
which the containers keep reaching the replicas; its restart replaces it. Waits poll
with a deadline."""

from __future__ import annotations

import re
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner

from node.cli.main import cli
from node.dev.devcluster import DevCluster
from node.proxy.vipnat import table_name
from node.runtime.base import LABELS
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

STACK = """\
name: k
services:
  web:
    image: shoal-demo/web:1
    expose: ["8080"]
    networks: [backnet]
    deploy: {replicas: 3}
  client:
    image: shoal-demo/base:1
    command: ["sleep", "100000"]
    networks: [backnet]
  outsider:
    image: shoal-demo/base:1
    command: ["sleep", "100000"]
    networks: [frontnet]
networks:
  frontnet: {}
  backnet: {}
"""

LOOP_MAX = 3000  # requests of the background loop at most (it also stops on /tmp/stop)
LOOP_SECONDS = 240  # and after this many seconds


def containers(cluster: DevCluster, service: str) -> list[docker.models.containers.Container]:
    client = docker.from_env()
    try:
        labels = [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}={service}"]
        found = client.containers.list(filters={"label": labels})
        return [c for c in found if c.status == "running"]
    finally:
        client.close()


def deployed(
    cluster: DevCluster, tmp_path: Path, stack: str, replicas: int
) -> docker.models.containers.Container:
    """`stack deploy -c` of stack `k` through the CLI; the client container once web
    has `replicas` containers and the client one."""
    runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)})
    (tmp_path / "k.yaml").write_text(stack)
    result = runner.invoke(
        cli, ["--addr", cluster.addr, "stack", "deploy", "-c", str(tmp_path / "k.yaml"), "k"]
    )
    assert result.exit_code == 0, result.output
    wanted = f"{replicas} replicas of web"
    wait_until_sync(lambda: len(containers(cluster, "k_web")) == replicas or None, 60, 0.5, wanted)
    return wait_until_sync(lambda: (c := containers(cluster, "k_client")) and c[0], 60)


def sh(container: docker.models.containers.Container, script: str) -> tuple[int, str]:
    code, out = container.exec_run(["sh", "-c", script])
    return code, out.decode(errors="replace")


def tables(cluster: DevCluster) -> list[str]:
    """This cluster's VIP tables in the kernel (one per node that wrote one)."""
    prefix = table_name(cluster.cluster, "")
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.split()[-1].startswith(prefix)]


def rule(cluster: DevCluster, vip: str, port: int) -> str | None:
    """The DNAT rule of `vip:port` in this cluster's tables, or None."""
    for table in tables(cluster):
        text = subprocess.run(
            ["nft", "list", "table", "ip", table], capture_output=True, text=True, check=True
        ).stdout
        for line in text.splitlines():
            if f"ip daddr {vip} tcp dport {port} " in line:
                return line.strip()
    return None


def targets(line: str) -> set[str]:
    return set(re.findall(r"\d+ : ([\d.]+) \. \d+", line))


def packets(line: str) -> int:
    found = re.search(r"counter packets (\d+)", line)
    assert found is not None, line
    return int(found.group(1))


def addresses(cluster: DevCluster, service: str) -> set[str]:
    return {c.attrs["NetworkSettings"]["IPAddress"] for c in containers(cluster, service)}


def answers(container: docker.models.containers.Container, target: str, n: int) -> list[str]:
    script = f"for i in $(seq {n}); do timeout 5 wget -qO- http://{target}:8080/ 2>&1 || echo FAILED; done"
    return [line.strip() for line in sh(container, script)[1].splitlines() if line.strip()]


def test_vips_of_local_replicas_are_dnated_by_the_kernel(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(2)
    runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)})

    def shoal(*args: str) -> str:
        result = runner.invoke(cli, ["--addr", cluster.addr, *args])
        assert result.exit_code == 0, result.output
        return result.output

    (tmp_path / "k.yaml").write_text(STACK)
    shoal("stack", "deploy", "-c", str(tmp_path / "k.yaml"), "k")
    wait_until_sync(lambda: len(containers(cluster, "k_web")) == 3 or None, 60, 0.5, "3 replicas of web")
    client = wait_until_sync(lambda: (c := containers(cluster, "k_client")) and c[0], 60)
    outsider = wait_until_sync(lambda: (c := containers(cluster, "k_outsider")) and c[0], 60)
    code, out = sh(client, "nslookup web")
    vip = out.rsplit("Address:", 1)[-1].split()[0]
    assert code == 0 and vip.startswith(cluster.vip_range.rsplit(".", 1)[0] + "."), out

    # the rule names exactly the three replicas once they are routable and the client known
    def ruled(n: int) -> str | None:
        line = rule(cluster, vip, 8080)
        want = addresses(cluster, "k_web")
        return line if line and f"mod {n} " in line and len(want) == n and targets(line) == want else None

    line = wait_until_sync(lambda: ruled(3), 60, 0.5, "the kernel rule of web's VIP, to its 3 replicas")
    assert len(tables(cluster)) >= 1
    before = packets(line)

    # 30 connections: one counted by the rule each, spread in turn over the three replicas
    got = answers(client, vip, 30)
    assert all(a.startswith("web v1 on ") for a in got), got
    spread = Counter(a.rsplit(" ", 1)[-1] for a in got)
    assert sorted(spread.values()) == [10, 10, 10], spread
    after = rule(cluster, vip, 8080)
    assert after is not None and packets(after) - before == 30, (before, after)

    # a replica calling its own service is no source of the rule (DNAT back to itself would
    # need a hairpin on its bridge port): the listener serves it, every time
    own = containers(cluster, "k_web")[0]
    got = answers(own, vip, 6)
    assert len(got) == 6 and all(a.startswith("web v1 on ") for a in got), got
    after = rule(cluster, vip, 8080)
    assert after is not None and packets(after) - before == 30, after

    # a container on another network is not DNATed: the listener refuses it as before
    refused = " ".join(answers(outsider, vip, 1))
    assert "FAILED" in refused and "reset by peer" in refused, refused
    still = rule(cluster, vip, 8080)
    assert still is not None and packets(still) == packets(after)

    # scale down and up under a bounded request loop: the rule follows, no request fails
    loop = (
        f"i=0; f=0; while [ $i -lt {LOOP_MAX} ] && [ ! -f /tmp/stop ]; do "
        f"timeout 5 wget -qO- http://{vip}:8080/ >/dev/null 2>&1 || f=$((f+1)); i=$((i+1)); done; "
        "echo done $i $f"
    )
    result: list[str] = []
    runner_thread = threading.Thread(
        target=lambda: result.append(sh(client, f"timeout {LOOP_SECONDS} sh -c '{loop}'")[1]), daemon=True
    )
    sh(client, "rm -f /tmp/stop")
    runner_thread.start()
    try:
        shoal("service", "scale", "k_web", "2")
        wait_until_sync(lambda: ruled(2), 90, 0.5, "the rule down to 2 replicas")
        shoal("service", "scale", "k_web", "3")
        wait_until_sync(lambda: ruled(3), 90, 0.5, "the rule back to 3 replicas")
    finally:
        sh(client, "touch /tmp/stop")
        runner_thread.join(LOOP_SECONDS + 10)
    assert result, "the request loop did not finish"
    done = re.search(r"done (\d+) (\d+)", result[0])
    assert done is not None, result
    sent, failed = int(done.group(1)), int(done.group(2))
    print(f"scale down and up: {sent} requests, {failed} failed")
    assert sent > 0 and failed == 0, f"{failed} of {sent} requests failed while scaling"

    cluster.stop()
    assert tables(cluster) == [], "a node left its VIP table after a graceful stop"


def test_without_the_kernel_path_the_listeners_serve_and_no_table_is_written(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(1, extra_args=["--no-vip-kernel"])
    client = deployed(cluster, tmp_path, STACK, 3)

    def all_answer() -> bool | None:
        got = answers(client, "web", 9)
        return len({a.rsplit(" ", 1)[-1] for a in got if a.startswith("web v1 on ")}) == 3 or None

    wait_until_sync(all_answer, 60, 0.5, "web's three replicas through the listener")
    assert tables(cluster) == []


SMALL = """\
name: k
services:
  web:
    image: shoal-demo/web:1
    expose: ["8080"]
    deploy: {replicas: 2}
  client:
    image: shoal-demo/base:1
    command: ["sleep", "100000"]
"""


def test_the_table_outlives_a_killed_daemon_and_its_restart_replaces_it(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    """kill -9 between two rule writes: the containers keep reaching the replicas through
    the kernel (the data path outlives the daemon, its listeners are gone); the daemon
    started again replaces the table (its counter starts from zero) and serves again."""
    cluster = make_cluster(1)
    client = deployed(cluster, tmp_path, SMALL, 2)
    code, out = sh(client, "nslookup web")
    vip = out.rsplit("Address:", 1)[-1].split()[0]
    assert code == 0, out
    want = addresses(cluster, "k_web")
    wait_until_sync(
        lambda: (line := rule(cluster, vip, 8080)) and targets(line) == want and line, 60, 0.5, "the rule"
    )
    [node] = cluster.members
    node.kill()  # SIGKILL: no graceful stop, the table stays
    left = rule(cluster, vip, 8080)
    assert left is not None and targets(left) == want
    got = answers(client, vip, 10)  # no listener on the VIP now: only the kernel answers
    assert len(got) == 10 and all(a.startswith("web v1 on ") for a in got), got
    counted = rule(cluster, vip, 8080)
    assert counted is not None and packets(counted) >= 10

    node.start()
    replaced = wait_until_sync(
        lambda: (line := rule(cluster, vip, 8080)) and packets(line) < 10 and targets(line) == want and line,
        60,
        0.5,
        "the rule written again by the restarted daemon",
    )
    assert len(tables(cluster)) == 1, tables(cluster)
    got = answers(client, vip, 4)
    assert all(a.startswith("web v1 on ") for a in got), got
    assert replaced is not None
