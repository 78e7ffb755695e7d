"""The client API against a real cluster: bad input changes nothing, errors say what to fix.

Also: the daemon's start-up without etcd, health and reflection (so grpcurl works),
and the CLI's one-line errors.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from node.cli.main import cli
from node.dev.devcluster import DevCluster
from node.model.keys import Keys
from node.pb import api_pb2, api_pb2_grpc
from node.wire import rpc
from node.wire.client import FailedPrecondition, InvalidArgument, NotFound, ShoalError
from tests import helpers
from tests.helpers import (
    free_port,
    free_port_on_all,
    free_port_pair,
    settled_revision,
    wait_until_sync,
)

pytestmark = pytest.mark.integration

GOOD = "name: api\nimage: shoal-demo/web:1\nreplicas: 0\nports:\n  - {container: 8080, published: 18081}\n"

BAD_SPECS = [
    ("missing name", "image: shoal-demo/web:1\n", "name"),
    ("bad name", "name: Web_1\nimage: shoal-demo/web:1\n", "name"),
    ("unknown field", "name: web\nimage: shoal-demo/web:1\nreplica: 3\n", "replica"),
    ("negative replicas", "name: web\nimage: shoal-demo/web:1\nreplicas: -1\n", "replicas"),
    ("huge replicas", "name: web\nimage: shoal-demo/web:1\nreplicas: 99999999999\n", "replicas"),
    ("replicas as a string", "name: web\nimage: shoal-demo/web:1\nreplicas: '3'\n", "replicas"),
    ("bad port", "name: web\nimage: shoal-demo/web:1\nports: [{container: 70000}]\n", "ports[0].container"),
    (
        "duplicate published port",
        "name: web\nimage: shoal-demo/web:1\nports:\n"
        "  - {container: 80, published: 9000}\n  - {container: 81, published: 9000}\n",
        "ports[1].published",
    ),
    (
        "bad memory unit",
        "name: web\nimage: shoal-demo/web:1\nresources: {memory: 32MB}\n",
        "resources.memory",
    ),
    ("wrong type", "name: web\nimage: shoal-demo/web:1\ncommand: httpd -f\n", "command"),
    ("empty file", "", "empty"),
    ("not YAML", "name: [web\nimage: x\n", "<spec>"),
    ("not a mapping", "- name: web\n", "mapping"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_images: tuple[str, ...]) -> Iterator[DevCluster]:
    hosts = ["127.0.0.1", "127.0.0.2"]
    c = DevCluster(
        tmp_path_factory.mktemp("api"),
        nodes=2,
        grpc_port=free_port_on_all(hosts),
        etcd_port=free_port_pair(),
        cluster=f"t{uuid.uuid4().hex[:8]}",
    )
    c.start()
    with c.client() as client:
        client.apply(GOOD)
    yield c
    c.stop()


def etcd_revision(cluster: DevCluster) -> int:
    return settled_revision(cluster.etcd.endpoint, cluster.prefix)


def writes_since(cluster: DevCluster, before: int) -> list[str]:
    """Every key put or deleted after revision `before`, except what the cluster writes by itself."""
    return helpers.writes_since(cluster.etcd.endpoint, before, cluster.prefix)


def test_writes_since_sees_a_good_apply(cluster: DevCluster) -> None:
    """The check the bad-input tests rely on does see writes."""
    before = etcd_revision(cluster)
    with cluster.client() as c:
        c.apply(GOOD.replace("name: api", "name: seen").replace("published: 18081", "published: 18089"))
    written = writes_since(cluster, before)
    assert Keys().service("seen") in written and Keys().history_version("seen", 1) in written
    with cluster.client() as c:
        c.delete_service("seen")


@pytest.mark.parametrize(("kind", "text", "fragment"), BAD_SPECS, ids=[k for k, _, _ in BAD_SPECS])
def test_bad_spec_is_invalid_argument_and_writes_nothing(
    cluster: DevCluster, kind: str, text: str, fragment: str
) -> None:
    before = etcd_revision(cluster)
    with cluster.client() as c, pytest.raises(InvalidArgument) as err:
        c.apply(text)
    assert fragment in str(err.value), f"{kind}: {err.value}"
    assert writes_since(cluster, before) == []


def test_a_port_another_service_publishes_is_failed_precondition_naming_it(cluster: DevCluster) -> None:
    """A state conflict, not a bad spec: the spec is fine, the port is taken (`node.store.ports`)."""
    before = etcd_revision(cluster)
    with cluster.client() as c, pytest.raises(FailedPrecondition) as err:
        c.apply(GOOD.replace("name: api", "name: other"))
    assert "ports[0].published: port 18081 is already published by service 'api'" in str(err.value)
    assert writes_since(cluster, before) == []


RACES = {  # what ten services claim at once -> the losers' message, naming the winner
    "port": (GOOD.replace("18081", "18087"), "port 18087 is already published by service '{}'"),
    "ingress route": (  # decision 77: `ingress/<host>/<path>`, claimed in the write's transaction
        "name: api\nimage: shoal-demo/web:1\nreplicas: 0\nports: [{container: 8080}]\n"
        "ingress: [{host: race.example.test, path: /api/, port: 8080}]\n",
        "race.example.test/api is already routed to service '{}'",
    ),
}


@pytest.mark.parametrize("what", sorted(RACES))
def test_ten_concurrent_applies_on_one_port_or_route_through_both_nodes_exactly_one_wins(
    cluster: DevCluster, what: str
) -> None:
    """Ten services publishing one port (or routing one ingress host and path), applied at
    once through both nodes: one wins, the nine others are FAILED_PRECONDITION naming it
    and leave no service key behind."""
    spec, taken = RACES[what]
    names = [f"race{i}" for i in range(10)]
    start = threading.Barrier(10)

    def apply(i: int) -> str:
        with cluster.client(1 + i % 2) as c:
            c.list_services()  # connected first: the ten applies then leave together
            start.wait(30)
            try:
                c.apply(spec.replace("name: api", f"name: {names[i]}"))
            except FailedPrecondition as exc:
                return str(exc)
        return ""

    with ThreadPoolExecutor(10) as pool:
        said = list(pool.map(apply, range(10)))
    won = [names[i] for i, s in enumerate(said) if not s]
    try:
        assert len(won) == 1, said
        for s in said:
            assert not s or taken.format(won[0]) in s, s
        with cluster.client() as c:
            listed = {svc.name for svc in c.list_services()}
        assert listed & set(names) == set(won)
    finally:
        with cluster.client() as c:
            for name in won:
                c.delete_service(name)


def test_oversize_message_is_resource_exhausted(cluster: DevCluster) -> None:
    before = etcd_revision(cluster)
    with rpc.channel(cluster.addr, cluster.tls) as channel:
        stub = api_pb2_grpc.ShoalStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ApplyService(api_pb2.ApplyServiceRequest(spec="x" * (5 * 1024 * 1024)), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with cluster.client() as c, pytest.raises(InvalidArgument, match="larger than"):
        c.apply("name: web\n" + "#" * (300 * 1024))
    assert writes_since(cluster, before) == []


def test_malformed_protobuf_is_rejected_and_the_daemon_lives_on(cluster: DevCluster) -> None:
    with rpc.channel(cluster.addr, cluster.tls) as channel:
        raw = channel.unary_unary("/shoal.v1.Shoal/ScaleService")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xff", timeout=5)
    assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    with cluster.client() as c:
        assert c.list_nodes().epoch > 0


@pytest.mark.parametrize("call", ["get", "ps", "scale", "rm", "resolve"])
def test_unknown_service_is_not_found(cluster: DevCluster, call: str) -> None:
    with cluster.client() as c, pytest.raises(NotFound, match="service 'nope' not found"):
        {
            "get": lambda: c.get_service("nope"),
            "ps": lambda: c.list_tasks("nope"),
            "scale": lambda: c.scale("nope", 1),
            "rm": lambda: c.delete_service("nope"),
            "resolve": lambda: c.resolve("nope"),
        }[call]()


def test_bad_names_and_numbers_in_requests(cluster: DevCluster) -> None:
    before = etcd_revision(cluster)
    with cluster.client() as c:
        with pytest.raises(InvalidArgument, match="not a service name"):
            c.get_service("../etc")
        with pytest.raises(InvalidArgument, match="replicas"):
            c.scale("api", 10_001)
    assert writes_since(cluster, before) == []


def test_cli_errors_are_one_line(cluster: DevCluster) -> None:
    runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)})
    result = runner.invoke(cli, ["--addr", cluster.addr, "service", "ps", "nope"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: service 'nope' not found; `shoal service ls` lists the services"
    ]
    port = free_port()
    result = runner.invoke(cli, ["--addr", f"127.0.0.1:{port}", "node", "ls"])
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(cli, ["--addr", cluster.addr, "node", "ls", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert '"leader": true' in result.stdout


def test_health_and_reflection_answer(cluster: DevCluster) -> None:
    with rpc.channel(cluster.addr, cluster.tls) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "shoal.v1.Shoal"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
        names = {s.name for s in response.list_services_response.service}
    assert {"shoal.v1.Shoal", "shoal.v1.Peer", "grpc.health.v1.Health"} <= names


def _shoald(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    port = free_port()
    args = [sys.executable, "-m", "node.daemon", "--data-dir", str(tmp_path), "--node-id", "lonely",
            "--grpc-port", str(free_port()), "--etcd", f"127.0.0.1:{port}", *extra]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_shoald_without_etcd_says_so_in_one_line_and_exits_1(tmp_path: Path) -> None:
    proc = _shoald(tmp_path)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("shoald: etcd unreachable at 127.0.0.1:") and "--etcd" in lines[0]


def test_shoald_wait_for_etcd_keeps_retrying_with_a_message(tmp_path: Path) -> None:
    proc = _shoald(tmp_path, "--wait-for-etcd")
    try:
        seen: list[str] = []

        def two_messages() -> bool:
            line = proc.stderr.readline() if proc.stderr else ""
            if "etcd unreachable" in line:
                seen.append(line)
            return len(seen) >= 2

        wait_until_sync(two_messages, 20, interval=0.0, message="two retry messages")
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode in (0, 1)


def test_a_second_daemon_on_the_same_address_fails_clearly(cluster: DevCluster, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "node.daemon", "--data-dir", str(tmp_path), "--node-id", "twin",
            "--address", "127.0.0.1", "--grpc-port", str(cluster.grpc_port), *cluster.etcd.client_flags,
            "--etcd-prefix", "/twin/", "--vip-range", cluster.vip_range]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1:" in done.stderr, done.stderr


def test_client_errors_are_shoal_errors(cluster: DevCluster) -> None:
    with cluster.client() as c, pytest.raises(ShoalError):
        c.apply("name: x\nimage: y\nreplicas: -5\n")


def test_a_second_daemon_with_a_live_node_id_is_refused(cluster: DevCluster, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "node.daemon", "--data-dir", str(tmp_path), "--node-id", "n1",
            "--address", "127.0.0.5", "--grpc-port", str(cluster.grpc_port), *cluster.etcd.client_flags,
            "--cluster", cluster.cluster, "--vip-range", cluster.vip_range]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"node id 'n1' is already running at 127.0.0.1:{cluster.grpc_port}" in done.stderr, done.stderr
    with cluster.client() as c:
        assert {n.id: n.address for n in c.list_nodes().nodes}["n1"] == "127.0.0.1"


def test_gossip_view_in_node_ls_and_watch_members(cluster: DevCluster) -> None:
    def both_alive() -> bool:
        with cluster.client() as c:
            nodes = {n.id: n for n in c.list_nodes().nodes}
        return nodes["n2"].member_state == "alive" and nodes["n2"].incarnation > 0

    wait_until_sync(both_alive, 10, message="n2 alive in n1's gossip view")
    with cluster.client() as c:
        stream = c.watch_members()
        listed = {m.node: m for m in (next(stream), next(stream))}  # the current view: both members
        stream.close()  # cancels the call
    assert {n: (m.state, m.address) for n, m in listed.items()} == {
        "n1": ("alive", f"127.0.0.1:{cluster.grpc_port}"),
        "n2": ("alive", f"127.0.0.2:{cluster.grpc_port}"),
    }
    result = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)}).invoke(
        cli, ["--addr", cluster.addr, "node", "ls"]
    )
    assert result.exit_code == 0 and "GOSSIP" in result.stdout and "alive" in result.stdout
