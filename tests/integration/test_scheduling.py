"""Scheduling in a real cluster (real etcd, real Docker): resources reach Docker, a replica
too big for any node waits with its reason until a node with room joins, a drain under
load through the proxy loses no request, a label change moves constrained replicas, and
bad placement or node input is refused with the field named and nothing written.

Deadlines bound correctness, not speed; nothing sleeps a fixed time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import docker
import pytest
from click.testing import CliRunner, Result

from node.cli.main import cli
from node.dev.devcluster import DevCluster
from node.pb import api_pb2
from node.wire.client import InvalidArgument, NotFound, ShoalClient
from tests import helpers
from tests.helpers import free_port_on_all, settled_revision, wait_until_sync
from tests.integration.load import Load

pytestmark = pytest.mark.integration

HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
MI, GI = 2**20, 2**30
HEALTH = "health: {http: {port: 8080, path: /health}, interval: 0.5s, timeout: 0.5s, retries: 2}"


def shoal(cluster: DevCluster, *args: str) -> Result:
    """The CLI against the cluster, with its admin credentials."""
    runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)})
    result = runner.invoke(cli, ["--addr", cluster.addr, *args])
    assert result.exit_code == 0, f"shoal {' '.join(args)}: {result.output}"
    return result


def placed(c: ShoalClient, service: str) -> Counter[str]:
    """Running replicas by node."""
    return Counter(t.node for t in c.list_tasks(service) if t.state == "running")


def events_of(c: ShoalClient, service: str, kind: str) -> list[str]:
    return [e.message for e in c.events(service=service) if e.kind == kind]


# -- resources --------------------------------------------------------------------------


def test_reservations_and_limits_reach_docker_and_node_ls(make_cluster: Callable[..., DevCluster]) -> None:
    cluster = make_cluster(nodes=2, extra_args=["--cpu", "2", "--memory", "2Gi"])
    limited = (
        "name: limited\nimage: shoal-demo/web:1\nreplicas: 2\n"
        "resources: {cpu: 0.25, memory: 64Mi, limits: {cpu: 0.5, memory: 128Mi}}\n"
    )
    reserved = "name: reserved\nimage: shoal-demo/web:1\nreplicas: 1\nresources: {cpu: 0.1, memory: 32Mi}\n"
    with cluster.client() as c:
        c.apply(limited)
        c.apply(reserved)
        wait_until_sync(
            lambda: sum(placed(c, "limited").values()) == 2, 60, message="2 limited replicas running"
        )
        wait_until_sync(
            lambda: sum(placed(c, "reserved").values()) == 1, 60, message="1 reserved replica running"
        )
        tasks = {t.task_id: t for s in ("limited", "reserved") for t in c.list_tasks(s)}
        nodes = {n.id: n for n in c.list_nodes().nodes}
    engine = docker.from_env()
    try:
        for task in tasks.values():
            [container] = engine.containers.list(filters={"label": f"io.shoal.task={task.task_id}"})
            host = container.attrs["HostConfig"]
            want = (500_000_000, 128 * MI) if task.service == "limited" else (100_000_000, 32 * MI)
            assert (host["NanoCpus"], host["Memory"]) == want, task.service
    finally:
        engine.close()
    assert sum(n.reserved_cpu for n in nodes.values()) == pytest.approx(0.6)
    assert sum(n.reserved_memory for n in nodes.values()) == 160 * MI
    assert all(n.cpu == 2 and n.memory == 2 * GI and n.availability == "active" for n in nodes.values())
    table = shoal(cluster, "node", "ls").output
    assert "RESERVED/CAPACITY" in table and "FREE" in table and "/2.0GiB" in table


# -- pending ------------------------------------------------------------------------------


def test_a_replica_too_big_for_any_node_waits_with_its_reason_until_a_node_with_room_joins(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster(nodes=3, extra_args=["--memory", "256Mi"])
    with cluster.client() as c:
        c.apply("name: big\nimage: shoal-demo/web:1\nreplicas: 1\nresources: {memory: 512Mi}\n")

        def waiting() -> api_pb2.ListTasksResponse | None:
            answer = c.tasks("big")
            return answer if answer.pending_reason else None

        answer = wait_until_sync(waiting, 30, message="a pending reason published")
        assert list(answer.pending_slots) == [1] and not answer.tasks
        assert answer.pending_reason == (
            "0/3 nodes available: 3 lack memory (need 512 MiB, most free 256 MiB)"
        ), answer.pending_reason
        svc = c.get_service("big")
        assert (svc.pending, svc.pending_reason) == (1, answer.pending_reason)
        wait_until_sync(lambda: events_of(c, "big", "service.pending"), 10, message="a service.pending event")
        assert events_of(c, "big", "service.pending") == [f"1 replica(s) pending: {answer.pending_reason}"]
    ps = shoal(cluster, "service", "ps", "big").output
    assert "pending" in ps and "lack memory (need 512 MiB" in ps and "1 replica(s) pending" in ps
    joined = cluster.add_node(["--memory", "1Gi"])
    with cluster.client() as c:
        wait_until_sync(lambda: placed(c, "big") == {joined.node_id: 1}, 60, message="placed on the new node")
        assert not c.tasks("big").pending_reason and c.get_service("big").pending == 0
        wait_until_sync(lambda: events_of(c, "big", "service.placed"), 10, message="a service.placed event")


# -- drain --------------------------------------------------------------------------------


def web(port: int, replicas: int) -> str:
    return (
        f"name: web\nimage: shoal-demo/web:1\nreplicas: {replicas}\n"
        f"ports:\n  - {{container: 8080, published: {port}, protocol: http}}\n{HEALTH}\n"
        "update: {drain: 1s}\nstop_grace: 2s\nresources: {cpu: 0.05, memory: 16Mi}\n"
    )


def test_drain_under_load_loses_no_request_and_activate_undoes_it(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster(nodes=3)
    port = free_port_on_all(HOSTS)
    with cluster.client() as c:
        c.apply(web(port, 6))
        wait_until_sync(
            lambda: sum(placed(c, "web").values()) == 6 and len(c.resolve("web")) == 6,
            60,
            message="6 routable",
        )
        on_n2 = placed(c, "web")["n2"]
        assert on_n2 == 2, placed(c, "web")
    with Load(f"http://{HOSTS[0]}:{port}/", rate=50, max_seconds=120) as load:
        wait_until_sync(lambda: len(load.results) >= 25, 10, message="load running")
        drained = shoal(cluster, "node", "drain", "n2").output
        assert "availability drain" in drained
        with cluster.client() as c:

            def moved() -> bool:
                tasks = c.list_tasks("web")
                return (
                    len(tasks) == 6
                    and all(t.node != "n2" and t.state == "running" for t in tasks)
                    and len(c.resolve("web")) == 6
                )

            wait_until_sync(moved, 90, message="every replica moved off n2 and routable")
        seen = len(load.results)
        wait_until_sync(lambda: len(load.results) >= seen + 100, 15, message="load after the moves")
        results = load.stop()
    failed = load.failed()
    print(f"drain of n2 ({on_n2} replicas) under load: {len(failed)}/{len(results)} requests failed")
    assert failed == [], f"{len(failed)} of {len(results)} failed: {failed[:5]}"
    with cluster.client() as c:
        nodes = {n.id: n for n in c.list_nodes().nodes}
        assert nodes["n2"].availability == "drain" and nodes["n2"].tasks == 0
        moves = [m for m in events_of(c, "web", "task.placed") if "(drain)" in m]
        assert len(moves) == on_n2, moves
        c.scale("web", 8)
        wait_until_sync(lambda: sum(placed(c, "web").values()) == 8, 60, message="8 running")
        assert placed(c, "web")["n2"] == 0, "nothing new lands on a drained node"
    assert "availability active" in shoal(cluster, "node", "activate", "n2").output
    with cluster.client() as c:
        c.scale("web", 11)
        wait_until_sync(lambda: sum(placed(c, "web").values()) == 11, 60, message="11 running")
        assert placed(c, "web")["n2"] == 3, placed(c, "web")  # spread fills the emptiest node first


# -- labels and constraints -----------------------------------------------------------------


def test_changing_a_label_moves_the_replicas_a_constraint_ties_to_it(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster(nodes=3)
    shoal(cluster, "node", "label", "n1", "zone=a")
    shoal(cluster, "node", "label", "n2", "zone=b", "dev.index-")
    with cluster.client() as c:
        labels = {n.id: dict(n.labels) for n in c.list_nodes().nodes}
        assert labels["n1"]["zone"] == "a" and labels["n2"] == {"zone": "b"} and "zone" not in labels["n3"]
        c.apply(
            "name: pinned\nimage: shoal-demo/web:1\nreplicas: 2\n"
            'placement: {constraints: ["node.labels.zone == a"]}\n'
        )
        wait_until_sync(lambda: placed(c, "pinned") == {"n1": 2}, 60, message="both on n1 (zone a)")
    shoal(cluster, "node", "label", "n1", "zone=b")
    out = shoal(cluster, "node", "label", "n3", "zone=a").output
    assert "zone=a" in out
    with cluster.client() as c:

        def on_n3() -> bool:
            return placed(c, "pinned") == {"n3": 2} and len(c.list_tasks("pinned")) == 2

        wait_until_sync(on_n3, 60, message="both moved to n3 (now zone a)")
        assert len([m for m in events_of(c, "pinned", "task.placed") if "(constraints)" in m]) == 2


# -- bad input ------------------------------------------------------------------------------


def writes_since(cluster: DevCluster, before: int) -> list[str]:
    """Every key put or deleted after revision `before`, except what the cluster writes by itself."""
    return helpers.writes_since(cluster.etcd.endpoint, before, cluster.prefix)


def revision(cluster: DevCluster) -> int:
    return settled_revision(cluster.etcd.endpoint, cluster.prefix)


BASE = "name: bad\nimage: shoal-demo/web:1\n"
BAD_PLACEMENT = [
    ("constraint syntax", 'placement: {constraints: ["zone == a"]}', "placement.constraints[0]"),
    ("label operator", 'placement: {constraints: ["node.labels.zone ~= a"]}', "placement.constraints[0]"),
    ("label operator =", 'placement: {constraints: ["node.labels.zone = a"]}', "placement.constraints[0]"),
    ("strategy", "placement: {strategy: pack}", "placement.strategy"),
    ("spread", "placement: {spread: zone}", "placement.spread"),
    ("cpu 0", "resources: {cpu: 0}", "resources.cpu"),
    ("cpu negative", "resources: {cpu: -1}", "resources.cpu"),
    ("memory without unit", "resources: {memory: 512}", "resources.memory"),
    ("memory absurd", "resources: {memory: 5Pi}", "resources.memory"),
    ("memory too large", "resources: {memory: 2048Ti}", "resources.memory"),
    (
        "limit below reservation",
        "resources: {memory: 64Mi, limits: {memory: 32Mi}}",
        "resources.limits.memory",
    ),
]


def test_bad_placement_and_node_input_is_refused_naming_the_field_and_writes_nothing(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster(nodes=1)
    with cluster.client() as c:
        for kind, extra, field in BAD_PLACEMENT:
            before = revision(cluster)
            with pytest.raises(InvalidArgument) as err:
                c.apply(BASE + extra + "\n")
            assert f"{field}:" in str(err.value), f"{kind}: {err.value}"
            assert writes_since(cluster, before) == [], kind
        bad_nodes: list[tuple[Callable[[], object], type[Exception], str]] = [
            (lambda: c.set_node_availability("n1", "drained"), InvalidArgument, "availability:"),
            (lambda: c.label_node("n1", {"bad key": "x"}), InvalidArgument, "labels:"),
            (lambda: c.label_node("n1", {"zone": " a"}), InvalidArgument, "labels.zone:"),
            (lambda: c.label_node("n1", remove=["-"]), InvalidArgument, "labels:"),
            (lambda: c.set_node_availability("Not_A_Node", "drain"), InvalidArgument, "node:"),
            (lambda: c.drain_node("n9"), NotFound, "node 'n9' not found"),
            (lambda: c.label_node("n9", {"zone": "a"}), NotFound, "node 'n9' not found"),
        ]
        for call, error, fragment in bad_nodes:
            before = revision(cluster)
            with pytest.raises(error) as caught:
                call()
            assert fragment in str(caught.value), caught.value
            assert writes_since(cluster, before) == [], fragment


# -- simulation ---------------------------------------------------------------------------


def test_simulated_nodes_take_tasks_run_nothing_and_show_as_simulated(
    make_cluster: Callable[..., DevCluster],
) -> None:
    cluster = make_cluster(nodes=2, simulate=300)
    port = free_port_on_all(HOSTS[:2])
    with cluster.client() as c:
        nodes = c.list_nodes().nodes
        simulated = [n for n in nodes if n.simulated]
        assert len(simulated) == 300 and all(n.labels["simulated"] == "true" for n in simulated)
        assert {n.id for n in nodes if not n.simulated} == {"n1", "n2"}
        c.apply(
            f"name: sim\nimage: shoal-demo/web:1\nreplicas: 600\nresources: {{cpu: 1, memory: 1Gi}}\n"
            f"ports:\n  - {{container: 8080, published: {port}, protocol: http}}\n"
            'placement: {constraints: ["node.labels.simulated == true"]}\n'
        )
        wait_until_sync(
            lambda: sum(placed(c, "sim").values()) == 600, 60, message="600 simulated replicas running"
        )
        assert set(placed(c, "sim")) <= {n.id for n in simulated}
        tasks = c.list_tasks("sim")
        assert all(t.container_id.startswith("sim-") and not t.endpoint for t in tasks)
        answer = c.lookup("sim")
        assert list(answer.endpoints) == [], "a simulated replica is never routable"
        assert {m.node for m in answer.mesh} == {"n1", "n2"}, "no mesh address on a simulated node"
        reserved = {n.id: n.reserved_memory for n in c.list_nodes().nodes if n.simulated}
        assert set(reserved.values()) == {2 * GI}, "spread: two replicas on each"
        joined = [m for m in (e.message for e in c.events()) if "simulated" in m and "joined" in m]
        assert joined, "the simulated nodes' arrival is an event that says so"
    engine = docker.from_env()
    try:
        assert engine.containers.list(filters={"label": "io.shoal.service=sim"}) == []
    finally:
        engine.close()
    out = shoal(cluster, "node", "ls").output
    rows = [line.split() for line in out.splitlines() if line.startswith("sim-")]
    assert len(rows) == 300 and all(r[1] == "simulated" and r[-1] == "yes" for r in rows)
