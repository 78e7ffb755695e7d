"""An in-process fake of the client API (`shoal.v1.Shoal`) and its fixtures, for the
CLI and client tests (`tests/unit/conftest.py` makes the fixtures available).

A sync `grpc.server` on 127.0.0.1:0 serves canned services, tasks, nodes, endpoints and
events and records every request. The fake serves mutual TLS as a node does; the CLI
and the client find their credentials in a context file (SHOAL_CONTEXT_FILE), as they
do after `shoal dev`: tests that want that use the `credentials` fixture.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result

from node.cli import main as cli_main
from node.dev.freeports import free_port as free_port  # re-exported for the CLI tests
from node.pb import api_pb2, api_pb2_grpc
from node.security import bootstrap, context
from node.security.ca import ClusterCA
from node.security.tokens import Role

T0 = 1_800_000_000.0  # a fixed unix time for canned records

WEB = api_pb2.Service(
    name="web",
    version=3,
    image="shoal/demo:1",
    replicas=3,
    running=2,
    ports=[api_pb2.Port(container=8080, published=18080, protocol="http")],
    spec_json=json.dumps({"name": "web", "image": "shoal/demo:1", "replicas": 3, "env": {"A": "1"}}),
    updated_at=T0,
    updated_by="n1",
)
DB = api_pb2.Service(name="db", version=1, image="shoal/db:2", replicas=1, running=1, spec_json="{}")
TASKS = {
    "web": [
        api_pb2.Task(
            service="web",
            slot=i,
            task_id=f"t{i}abc",
            node=f"n{i}",
            desired="running",
            state="running" if i < 2 else "failed",
            container_id=f"{i}" * 64,
            endpoint=f"127.0.0.{i}:31000" if i < 2 else "",
            version=3,
            restarts=i,
            exit_code=0 if i < 2 else 137,
            message="" if i < 2 else "image [not] found",
        )
        for i in range(3)
    ]
}
NODES = [
    api_pb2.Node(
        id="n1",
        address="127.0.0.1",
        grpc_port=7070,
        status="ready",
        leader=True,
        labels={"zone": "a"},
        cpu=4.0,
        memory=8 * 1024**3,
        version="0.1.0",
        tasks=2,
        started_at=T0,
        member_state="alive",
        incarnation=1700000000,
        state_age=12.5,
        availability="drain",
        reserved_cpu=1.5,
        reserved_memory=2 * 1024**3,
        kernel_path="fallback",
        kernel_reason="nft -f - exited with 1: Error: Could not process rule: No such file or directory",
    ),
    api_pb2.Node(
        id="n2",
        address="127.0.0.2",
        grpc_port=7070,
        status="down",
        cpu=2.0,
        memory=1024**3,
        member_state="dead",
        incarnation=1700000001,
        state_age=300.0,
    ),
]
MESH = [
    api_pb2.MeshAddress(node="n0", address="127.0.0.1", port=8080, protocol="http"),
    api_pb2.MeshAddress(node="n1", address="127.0.0.2", port=8080, protocol="http"),
]
ENDPOINTS = [
    api_pb2.Endpoint(task="t0abc", node="n0", address="127.0.0.1", port=31000, container_port=8080),
    api_pb2.Endpoint(task="t1abc", node="n1", address="127.0.0.2", port=31001, container_port=8080),
]
USAGE = [  # usage per task (issue 14): t0abc of web sampled; t1abc not yet
    api_pb2.TaskUsage(
        task_id="t0abc", service="web", slot=0, node="n0", cpu_percent=12.5, memory_bytes=10 * 2**20,
        memory_limit=64 * 2**20, rx_bytes=2048, tx_bytes=1024, block_read=0, block_write=4096, restarts=1,
        at=T0, history=[api_pb2.UsagePoint(at=T0, cpu_percent=12.5, memory_bytes=10 * 2**20)],
    ),
    api_pb2.TaskUsage(task_id="d0abc", service="db", slot=0, node="n1", cpu_percent=0.25, memory_limit=2**30),
]  # fmt: skip
EVENTS = [
    api_pb2.Event(time=T0, kind="leader.elected", node="n1", message="n1 leads, epoch 7", cause="c1"),
    api_pb2.Event(time=T0 + 1, kind="task.placed", node="n1", service="web", task="t0abc", message="on n0"),
    api_pb2.Event(time=T0 + 2, kind="task.started", node="n0", service="web", task="t0abc", message="up"),
]


def _without_history(u: api_pb2.TaskUsage) -> api_pb2.TaskUsage:
    bare = api_pb2.TaskUsage()
    bare.CopyFrom(u)
    del bare.history[:]
    return bare


class FakeShoal(api_pb2_grpc.ShoalServicer):
    """Canned answers; `calls` records (method, request, time remaining of the deadline)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, float | None]] = []
        self.services = {"web": WEB, "db": DB}

    def _record(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        self.calls.append((method, request, context.time_remaining()))

    def _service(self, name: str, context: grpc.ServicerContext) -> api_pb2.Service:
        if name == "slow":  # answer only after the client gave up
            deadline = time.monotonic() + 5
            while context.is_active() and time.monotonic() < deadline:
                time.sleep(0.01)
        if name not in self.services:
            context.abort(grpc.StatusCode.NOT_FOUND, f"service '{name}' not found")
        return self.services[name]

    def ApplyService(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("ApplyService", request, context)
        if "bad" in request.spec:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{request.source}:2:11: replicas: must be >= 0")
        if "frozen" in request.spec:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no leader elected yet; retry shortly")
        if "etcd" in request.spec:
            context.abort(grpc.StatusCode.UNAVAILABLE, "store unavailable: etcd at 127.0.0.1:2379 timed out")
        changed = "same" not in request.spec
        return api_pb2.ApplyServiceResponse(name="web", version=4 if changed else 3, changed=changed)

    def GetService(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("GetService", request, context)
        return self._service(request.name, context)

    def ListServices(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("ListServices", request, context)
        return api_pb2.ListServicesResponse(services=[DB, WEB])

    def DeleteService(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("DeleteService", request, context)
        self._service(request.name, context)
        return api_pb2.DeleteServiceResponse(name=request.name)

    def ScaleService(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("ScaleService", request, context)
        self._service(request.name, context)
        return api_pb2.ScaleServiceResponse(name=request.name, version=4, replicas=request.replicas)

    def ListTasks(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("ListTasks", request, context)
        self._service(request.service, context)
        out = api_pb2.ListTasksResponse(tasks=list(reversed(TASKS.get(request.service, []))))
        if request.all:  # kept tasks of slot 1 (decision 71), older first: the CLI sorts them
            for age, code in ((300, 137), (60, 1)):
                out.tasks.add(
                    service=request.service, slot=1, task_id=f"old{age}", node="n2", desired="shutdown",
                    state="exited", exit_code=code, message=f"Exited ({code}) {age} seconds ago",
                    updated_at=1000.0 - age, terminal=True,
                )  # fmt: skip
            out.silent_nodes.append("n3")
        return out

    def TaskUsage(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("TaskUsage", request, context)
        if request.service:
            self._service(request.service, context)
        tasks = [u for u in USAGE if not request.service or u.service == request.service]
        if not request.history:
            tasks = [
                api_pb2.TaskUsage(**{f.name: v for f, v in u.ListFields() if f.name != "history"})
                for u in tasks
            ]
        return api_pb2.UsageResponse(tasks=tasks, notices=["node n2: no usage figures: connection refused"])

    def ListNodes(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("ListNodes", request, context)
        return api_pb2.ListNodesResponse(nodes=NODES, epoch=7)

    def Resolve(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("Resolve", request, context)
        if request.name == "database":  # a network alias of web (decision 73)
            return api_pb2.ResolveResponse(
                name="web", endpoints=ENDPOINTS, mesh=MESH, alias="database", alias_networks=["backnet"]
            )
        self._service(request.name, context)
        return api_pb2.ResolveResponse(name=request.name, endpoints=ENDPOINTS, mesh=MESH)

    def WatchResolve(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._record("WatchResolve", request, context)
        self._service(request.name, context)
        yield api_pb2.ResolveResponse(name=request.name, endpoints=ENDPOINTS, mesh=MESH)
        yield api_pb2.ResolveResponse(name=request.name, endpoints=ENDPOINTS[:1], mesh=MESH)

    def StreamEvents(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._record("StreamEvents", request, context)
        events = [e for e in EVENTS if not request.service or e.service == request.service]
        if request.limit:
            events = events[-request.limit :]
        yield from events
        if request.follow:  # one "new" event, then the server ends the stream
            yield api_pb2.Event(time=T0 + 3, kind="task.healthy", node="n0", service="web", message="ok")


@pytest.fixture(scope="module")
def authority() -> ClusterCA:
    return ClusterCA.create("unit")


@pytest.fixture(scope="module")
def server(authority: ClusterCA) -> Iterator[tuple[str, FakeShoal]]:
    fake = FakeShoal()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    api_pb2_grpc.add_ShoalServicer_to_server(fake, srv)
    node = bootstrap.node_identity(authority, "n1", ["127.0.0.1"])
    tls = grpc.ssl_server_credentials([(node.key, node.cert)], authority.cert_pem, require_client_auth=True)
    port = srv.add_secure_port("127.0.0.1:0", tls)
    srv.start()
    yield f"127.0.0.1:{port}", fake
    srv.stop(grace=None).wait()


@pytest.fixture(scope="module")
def context_file(authority: ClusterCA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An admin's context file for the fake (no endpoint: the tests give --addr)."""
    made = bootstrap.client_credentials(authority, "tester", Role.ADMIN)
    path = tmp_path_factory.mktemp("ctx") / "context.json"
    ctx = context.Context(
        "", authority.cert_pem.decode(), made.cert.decode(), made.key.decode(), str(made.token)
    )
    context.save_context("unit", ctx, path)
    return path


@pytest.fixture
def credentials(context_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SHOAL_TOKEN", "SHOAL_CA", "SHOAL_CERT", "SHOAL_KEY", "SHOAL_ADDR", "SHOAL_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SHOAL_CONTEXT_FILE", str(context_file))


@pytest.fixture
def addr(server: tuple[str, FakeShoal]) -> str:
    server[1].calls.clear()
    return server[0]


@pytest.fixture
def fake(server: tuple[str, FakeShoal]) -> FakeShoal:
    return server[1]


def shoal(addr: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli_main.cli, ["--addr", addr, *args], input=input)


def ok(addr: str, *args: str, input: str | None = None) -> str:
    result = shoal(addr, *args, input=input)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.stderr == ""
    return result.stdout


def fails(addr: str, *args: str, input: str | None = None) -> str:
    """Run a command that must fail: exit 1, one `error: ` line on stderr, nothing on stdout."""
    result = shoal(addr, *args, input=input)
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0].removeprefix("error: ")
