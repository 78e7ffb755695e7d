"""Metrics, usage per task and Prometheus discovery on a real two-node cluster (issue 14).

One cluster serves the module, with two services: `busy` (one replica spinning a
shell loop, held to 0.2 core by its limit; the cluster's stop removes it) and `web`
(one replica behind a published http port, so the proxy has series). Checked:
- every node's /metrics passes `promtool check metrics` and carries the families the
  issue lists (the leader's on the node that leads);
- `shoal service ps` and `shoal top --once` show the busy replica's CPU above zero;
- a real Prometheus (Debian's, on 127.0.0.1, its own data dir), given only one node's
  `/sd`, finds every node and scrapes each `up`; the shipped config and rules pass
  `promtool check config` / `check rules`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.dev.devcluster import DevCluster
from tests.helpers import free_port, free_port_on_all, wait_until_sync

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
HOSTS = ["127.0.0.1", "127.0.0.2"]
CLI = (sys.executable, "-m", "node.cli.main", "--addr")
BUSY = """\
name: busy
image: shoal-demo/base:1
replicas: 1
command: ["sh", "-c", "while :; do :; done"]
resources: {cpu: 0.2, memory: 32Mi}
placement: {constraints: ["node.id == n2"]}
"""


def web_spec(port: int) -> str:
    return f"""\
name: web
image: shoal-demo/web:1
replicas: 1
placement: {{constraints: ["node.id == n1"]}}
ports:
  - {{container: 8080, published: {port}, protocol: http}}
"""


def shoal(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOAL_CONTEXT_FILE": str(cluster.context_file), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*CLI, cluster.members[0].addr, *args], capture_output=True, text=True, timeout=60, env=env
    )


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...]) -> Iterator[DevCluster]:
    c = DevCluster.on_free_ports(tmp_path_factory.mktemp("metrics"), nodes=2)
    c.start()
    try:
        port = free_port_on_all(HOSTS)
        with c.client() as client:
            client.apply(BUSY)
            client.apply(web_spec(port))

            def running() -> bool:
                tasks = client.list_tasks("busy") + client.list_tasks("web")
                return len(tasks) == 2 and all(t.state == "running" for t in tasks)

            wait_until_sync(running, 90, 0.2, "busy and web running")
        wait_until_sync(lambda: get(f"http://{HOSTS[0]}:{port}/") is not None, 30, 0.2, "web answers")
        for _ in range(5):  # a few requests through the mesh: the proxy's series have samples
            get(f"http://{HOSTS[0]}:{port}/")
        yield c
    finally:
        c.stop()


def metrics_of(cluster: DevCluster, host: str) -> str:
    return get(f"http://{host}:{cluster.metrics_port}/metrics")


def sampled(cluster: DevCluster, host: str) -> Callable[[], str | None]:
    """/metrics of `host` once its usage sampler has seen its replica (web on n1, busy on n2)."""

    def scrape() -> str | None:
        text = metrics_of(cluster, host)
        return text if "shoal_task_cpu_seconds_total{" in text else None

    return scrape


def families(text: str) -> set[str]:
    return {
        line.split()[2].removesuffix("_total") for line in text.splitlines() if line.startswith("# TYPE ")
    }


EVERY_NODE = {
    "shoal_agent_tasks",  # tasks by state per service (this node's)
    "shoal_task_cpu_seconds",  # container CPU, memory, network
    "shoal_task_memory_bytes",
    "shoal_task_network_receive_bytes",
    "shoal_task_block_read_bytes",
    "shoal_agent_pass_seconds",
    "shoal_leader_is_leader",
    "shoal_etcd_request_seconds",
    "shoal_etcd_errors",
    "shoal_gossip_members",
    "shoal_gossip_probe_seconds",
    "shoal_gossip_suspicions",
    "shoal_api_requests",
    "shoal_api_request_seconds",
}
LEADER_ONLY = {
    "shoal_leader_reconcile_seconds",
    "shoal_leader_tasks",  # tasks by desired and observed state per service
    "shoal_leader_pending_slots",
    "shoal_leader_rollouts",
    "shoal_leader_service_replicas",
    "shoal_leader_service_running",
}


def test_every_node_serves_every_family_and_promtool_passes(cluster: DevCluster) -> None:
    assert shoal(cluster, "service", "ps", "web").returncode == 0  # an API call to count
    texts = {host: wait_until_sync(sampled(cluster, host), 60, 1.0, f"usage on {host}") for host in HOSTS}
    leaders = [h for h, t in texts.items() if "shoal_leader_is_leader 1.0" in t]
    assert len(leaders) == 1, {h: t.count("shoal_leader_is_leader 1.0") for h, t in texts.items()}
    for host, text in texts.items():
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert checked.returncode == 0, f"{host}: {checked.stdout}{checked.stderr}"
        missing = EVERY_NODE - families(text)
        assert not missing, f"{host} lacks {sorted(missing)}"
    leader = texts[leaders[0]]
    assert not LEADER_ONLY - families(leader), sorted(LEADER_ONLY - families(leader))
    assert 'shoal_leader_service_replicas{service="busy"} 1.0' in leader
    assert re.search(r'shoal_events_total\{kind="task.placed"\} [2-9]', leader)  # placements: busy and web
    assert re.search(r'shoal_leader_tasks\{desired="running",service="web",state="running"\} 1\.0', leader)
    proxy = texts[HOSTS[0]]
    assert re.search(r'shoal_proxy_requests_total\{port="\d+",protocol="http",service="web"\} [1-9]', proxy)
    calls = "\n".join(texts.values())
    assert re.search(r'shoal_api_requests_total\{code="OK",method="/shoal.v1.Shoal/ListTasks"\} [1-9]', calls)
    assert 'shoal_gossip_members{state="alive"} 2.0' in calls


def cpu_of(ps_table: str, task_id: str) -> float | None:
    header, *rows = ps_table.splitlines()
    start = header.index("CPU %")
    for row in rows:
        if task_id in row:
            cell = row[start:].split()[0]
            return float(cell.rstrip("%")) if cell != "-" else None
    return None


def test_ps_and_top_show_the_cpu_of_a_busy_replica(cluster: DevCluster) -> None:
    with cluster.client() as client:
        (task,) = client.list_tasks("busy")

    def busy_in_ps() -> float | None:
        done = shoal(cluster, "service", "ps", "busy")
        assert done.returncode == 0, done.stderr
        cpu = cpu_of(done.stdout, task.task_id)
        return cpu if cpu else None

    cpu = wait_until_sync(busy_in_ps, 90, 2.0, "busy's CPU % in `service ps`")
    assert 1.0 < cpu < 60.0, cpu  # spinning, held to 0.2 core by its limit (some slack: a shared host)
    done = shoal(cluster, "top", "--once", "-o", "json", "--history")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    (busy,) = [t for t in answer["tasks"] if t["service"] == "busy"]
    assert busy["cpu_percent"] > 1.0 and busy["memory_limit"] == 32 * 2**20, busy
    assert busy["history"] and busy["node"] in ("n1", "n2")
    assert {t["service"] for t in answer["tasks"]} == {"busy", "web"}  # from both nodes
    table = shoal(cluster, "top", "--once")
    assert table.returncode == 0 and "MEM USAGE / LIMIT" in table.stdout and "busy" in table.stdout
    missing = shoal(cluster, "top", "--once", "nosuch")
    assert missing.returncode == 1 and "service 'nosuch' not found" in missing.stderr


def test_the_shipped_config_and_rules_pass_promtool() -> None:
    for args in (["check", "config"], ["check", "rules"]):
        target = "prometheus.yml" if args[1] == "config" else "shoal-rules.yml"
        done = subprocess.run(
            ["promtool", *args, target], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_finds_every_node_through_discovery(cluster: DevCluster, tmp_path: Path) -> None:
    sd = json.loads(get(f"http://{HOSTS[1]}:{cluster.metrics_port}/sd"))
    assert sorted(g["labels"]["shoal_node"] for g in sd) == ["n1", "n2"]
    assert sorted(t for g in sd for t in g["targets"]) == [f"{h}:{cluster.metrics_port}" for h in HOSTS]
    config = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    config = config.replace("http://127.0.0.1:7071/sd", f"http://{HOSTS[1]}:{cluster.metrics_port}/sd")
    config = config.replace("refresh_interval: 30s", "refresh_interval: 1s")
    config = config.replace("scrape_interval: 15s", "scrape_interval: 1s")
    shutil.copy(PROMETHEUS_DIR / "shoal-rules.yml", tmp_path / "shoal-rules.yml")
    (tmp_path / "prometheus.yml").write_text(config)
    port = free_port()
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:

        def all_up() -> list[dict[str, str]] | None:
            answer = json.loads(get(f"http://127.0.0.1:{port}/api/v1/targets?state=active"))
            targets = answer["data"]["activeTargets"]
            up = [t for t in targets if t["health"] == "up"]
            return targets if len(up) == len(HOSTS) == len(targets) else None

        targets = wait_until_sync(all_up, 60, 0.5, "Prometheus scraping every node")
        assert sorted(t["labels"]["instance"] for t in targets) == ["n1", "n2"]
        query = "sum(shoal_leader_service_replicas)"
        answer = wait_until_sync(
            lambda: json.loads(get(f"http://127.0.0.1:{port}/api/v1/query?query={query}"))["data"]["result"],
            30,
            0.5,
            "a query over the scraped series",
        )
        assert float(answer[0]["value"][1]) == 2.0  # busy and web, one replica each
    finally:
        prometheus.terminate()
        prometheus.wait(30)
