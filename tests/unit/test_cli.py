"""The `shoal` CLI and `node.client` against an in-process fake of the client API.

A sync `grpc.server` on 127.0.0.1:0 serves canned services, tasks, nodes, endpoints and
events and records every request; the CLI is driven through click's `CliRunner`. The
fake serves mutual TLS as a node does; the CLI and the client find their credentials
in a context file (SHOAL_CONTEXT_FILE), as they do after `shoal dev`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Generator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result
from ruamel.yaml import YAML

from node.cli import main as cli_main
from node.client import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ShoalClient,
    ShoalError,
    Unavailable,
    error_from_rpc,
)
from node.freeports import free_port
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
EVENTS = [
    api_pb2.Event(time=T0, kind="leader.elected", node="n1", message="n1 leads, epoch 7", cause="c1"),
    api_pb2.Event(time=T0 + 1, kind="task.placed", node="n1", service="web", task="t0abc", message="on n0"),
    api_pb2.Event(time=T0 + 2, kind="task.started", node="n0", service="web", task="t0abc", message="up"),
]


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
        return api_pb2.ListTasksResponse(tasks=list(reversed(TASKS.get(request.service, []))))

    def ListNodes(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("ListNodes", request, context)
        return api_pb2.ListNodesResponse(nodes=NODES, epoch=7)

    def Resolve(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("Resolve", request, context)
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


@pytest.fixture(autouse=True)
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


# --- services -------------------------------------------------------------------------


def test_apply_reads_file(addr: str, fake: FakeShoal, tmp_path: Any) -> None:
    spec = tmp_path / "web.yaml"
    spec.write_text("name: web\nimage: shoal/demo:1\n")
    assert ok(addr, "service", "apply", "-d", "-f", str(spec)) == "service web: version 4 applied\n"
    method, request, remaining = fake.calls[-1]
    assert method == "ApplyService"
    assert request.spec == "name: web\nimage: shoal/demo:1\n" and request.source == str(spec)
    assert remaining is not None and remaining <= 10.0


def test_apply_reads_stdin_and_reports_unchanged(addr: str, fake: FakeShoal) -> None:
    out = ok(addr, "service", "apply", "-f", "-", input="name: web # same\n")
    assert out == "service web: unchanged (version 3)\n"
    assert fake.calls[-1][1].spec == "name: web # same\n"
    assert fake.calls[-1][1].source == "<stdin>"


def test_apply_missing_file(addr: str, fake: FakeShoal, tmp_path: Any) -> None:
    missing = tmp_path / "nope.yaml"
    message = fails(addr, "service", "apply", "-f", str(missing))
    assert str(missing) in message and "No such file" in message
    assert fake.calls == []


def test_apply_invalid_argument_is_passed_through(addr: str) -> None:
    message = fails(addr, "service", "apply", "-f", "-", input="name: web\nreplicas: bad\n")
    assert message == "<stdin>:2:11: replicas: must be >= 0"


def test_service_ls_table(addr: str) -> None:
    out = ok(addr, "service", "ls")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "IMAGE", "REPLICAS", "PORTS"]
    assert lines[1].split() == ["db", "1", "shoal/db:2", "1/1"]
    assert lines[2].split() == ["web", "3", "shoal/demo:1", "2/3", "18080->8080/http"]


def test_service_ls_json_and_yaml(addr: str) -> None:
    data = json.loads(ok(addr, "service", "ls", "-o", "json"))
    assert [s["name"] for s in data] == ["db", "web"]
    web = data[1]
    assert web["version"] == 3 and web["image"] == "shoal/demo:1"
    assert web["replicas"] == 3 and web["running"] == 2
    assert web["ports"] == [{"container": 8080, "published": 18080, "protocol": "http"}]
    assert web["updated_by"] == "n1" and web["updated_at"].startswith("20")
    assert YAML(typ="safe").load(ok(addr, "service", "ls", "-o", "yaml")) == data


def test_service_inspect(addr: str) -> None:
    data = YAML(typ="safe").load(ok(addr, "service", "inspect", "web"))
    assert data["name"] == "web" and data["version"] == 3 and data["updated_by"] == "n1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", data["updated_at"])
    assert data["replicas"] == {"desired": 3, "running": 2}
    assert data["spec"] == {"name": "web", "image": "shoal/demo:1", "replicas": 3, "env": {"A": "1"}}
    assert [t["slot"] for t in data["tasks"]] == [0, 1, 2]
    assert json.loads(ok(addr, "service", "inspect", "web", "-o", "json")) == data


def test_service_ps_json(addr: str) -> None:
    data = json.loads(ok(addr, "service", "ps", "web", "-o", "json"))
    assert [t["slot"] for t in data] == [0, 1, 2]
    first = data[0]
    assert {k: first[k] for k in ("slot", "task", "node", "state", "container_id", "endpoint")} == {
        "slot": 0,
        "task": "t0abc",
        "node": "n0",
        "state": "running",
        "container_id": "0" * 64,
        "endpoint": "127.0.0.0:31000",
    }
    assert {"desired", "version", "restarts", "exit_code", "message"} <= set(first)
    assert data[2]["exit_code"] == 137 and data[2]["message"] == "image [not] found"


def test_service_ps_table(addr: str) -> None:
    lines = ok(addr, "service", "ps", "web").splitlines()
    header = ["SLOT", "TASK", "NODE", "DESIRED", "STATE", "HEALTH", "CONTAINER", "ENDPOINT", "RESTARTS"]
    assert lines[0].split() == [*header, "EXIT", "MESSAGE"]
    first = ["0", "t0abc", "n0", "running", "running", "-", "0" * 12, "127.0.0.0:31000", "0"]
    assert lines[1].split() == first  # no check: HEALTH "-"; never restarted: EXIT blank
    assert "1" * 13 not in lines[2]  # container ids are cut to 12 characters
    assert lines[3].split()[-3:] == ["image", "[not]", "found"]  # no rich markup interpretation


def test_scale_and_rm(addr: str, fake: FakeShoal) -> None:
    assert ok(addr, "service", "scale", "web", "5") == "service web scaled to 5 (version 4)\n"
    assert fake.calls[-1][0] == "ScaleService" and fake.calls[-1][1].replicas == 5
    assert ok(addr, "service", "rm", "web") == "service web removed\n"
    assert fake.calls[-1][0] == "DeleteService" and fake.calls[-1][1].name == "web"


def test_scale_rejects_negative_as_usage_error(addr: str, fake: FakeShoal) -> None:
    result = shoal(addr, "service", "scale", "web", "-1")
    assert result.exit_code == 2 and fake.calls == []


@pytest.mark.parametrize(
    "args",
    [
        ("service", "inspect", "nope"),
        ("service", "ps", "nope"),
        ("service", "scale", "nope", "2"),
        ("service", "rm", "nope"),
        ("resolve", "nope"),
    ],
)
def test_unknown_service_is_one_line_error(addr: str, args: tuple[str, ...]) -> None:
    assert fails(addr, *args) == "service 'nope' not found"


# --- nodes, resolve, events ----------------------------------------------------------------


def test_node_ls_table(addr: str) -> None:
    lines = ok(addr, "node", "ls").splitlines()
    assert lines[0].split() == [
        "ID", "ADDRESS", "STATUS", "AVAILABILITY", "LEADER", "GOSSIP", "INCARNATION", "SINCE",
        "TASKS", "CPU", "RESERVED/CAPACITY", "MEMORY", "RESERVED/CAPACITY", "FREE", "LABELS", "SIMULATED",
    ]  # fmt: skip
    assert lines[1].split() == [
        "n1", "127.0.0.1:7070", "ready", "drain", "*", "alive", "1700000000", "12.5s", "2",
        "1.5/4", "2.0GiB/8.0GiB", "2.5", "cpu,", "6.0GiB", "zone=a",
    ]  # fmt: skip
    assert lines[2].split() == [
        "n2", "127.0.0.2:7070", "down", "-", "dead", "1700000001", "5m", "0", "0/2", "0B/1.0GiB",
        "2", "cpu,", "1.0GiB",
    ]  # fmt: skip


def test_node_ls_json(addr: str) -> None:
    data = json.loads(ok(addr, "node", "ls", "-o", "json"))
    assert [(n["id"], n["address"], n["status"], n["leader"]) for n in data] == [
        ("n1", "127.0.0.1", "ready", True),
        ("n2", "127.0.0.2", "down", False),
    ]
    assert data[0]["labels"] == {"zone": "a"} and data[0]["cpu"] == 4.0
    assert data[0]["memory"] == 8 * 1024**3 and data[0]["tasks"] == 2 and data[0]["version"] == "0.1.0"
    gossip = (data[1]["member_state"], data[1]["incarnation"], data[1]["state_age"])
    assert gossip == ("dead", 1700000001, 300.0)


def test_resolve(addr: str) -> None:
    data = json.loads(ok(addr, "resolve", "web", "-o", "json"))
    assert [{k: e[k] for k in ("task", "node", "address", "port")} for e in data["endpoints"]] == [
        {"task": "t0abc", "node": "n0", "address": "127.0.0.1", "port": 31000},
        {"task": "t1abc", "node": "n1", "address": "127.0.0.2", "port": 31001},
    ]
    assert data["mesh"] == [
        {"node": "n0", "address": "127.0.0.1", "port": 8080, "protocol": "http"},
        {"node": "n1", "address": "127.0.0.2", "port": 8080, "protocol": "http"},
    ]
    lines = ok(addr, "resolve", "web").splitlines()
    assert lines[0].split() == ["TASK", "NODE", "ADDRESS", "PORT"]
    assert lines[2].split() == ["t1abc", "n1", "127.0.0.2", "31001"]
    assert lines[4].split() == ["NODE", "MESH", "ADDRESS", "PROTOCOL"]
    assert lines[6].split() == ["n1", "127.0.0.2:8080", "http"]


def test_resolve_watch_prints_each_answer(addr: str) -> None:
    lines = ok(addr, "resolve", "web", "--watch", "-o", "json").splitlines()
    answers = [json.loads(line) for line in lines]
    assert [len(a["endpoints"]) for a in answers] == [2, 1]
    assert all(a["name"] == "web" for a in answers)


def test_events_lines(addr: str, fake: FakeShoal) -> None:
    lines = ok(addr, "events").splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d leader\.elected n1 n1 leads, epoch 7", lines[0])
    assert lines[1].endswith(" task.placed n1 web/t0abc on n0")
    request, remaining = fake.calls[-1][1], fake.calls[-1][2]
    assert not request.follow and remaining is not None  # a deadline when not following


def test_events_filter_limit_json(addr: str, fake: FakeShoal) -> None:
    out = ok(addr, "events", "--service", "web", "-n", "1", "-o", "json")
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["kind"], e["service"], e["task"]) for e in events] == [("task.started", "web", "t0abc")]
    request = fake.calls[-1][1]
    assert request.service == "web" and request.limit == 1


def test_events_follow_streams_without_deadline(addr: str, fake: FakeShoal) -> None:
    lines = ok(addr, "events", "--follow").splitlines()
    assert [line.split()[1] for line in lines] == [
        "leader.elected",
        "task.placed",
        "task.started",
        "task.healthy",
    ]
    request, remaining = fake.calls[-1][1], fake.calls[-1][2]
    assert request.follow
    assert remaining is None or remaining > 1e9  # grpc reports "no deadline" as a huge number


def test_events_ctrl_c_exits_130_quietly(addr: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: ShoalClient, **kwargs: Any) -> Iterator[api_pb2.Event]:
        yield EVENTS[0]
        raise KeyboardInterrupt

    monkeypatch.setattr(ShoalClient, "events", interrupted)
    result = shoal(addr, "events", "-f")
    assert result.exit_code == 130
    assert result.stderr == "" and "leader.elected" in result.stdout


# --- connection errors -----------------------------------------------------------------


def test_nothing_listening_names_the_address() -> None:
    target = f"127.0.0.1:{free_port()}"
    message = fails(target, "service", "ls")
    assert message == (
        f"no shoal node answers at {target}: connection refused; "
        "start one (shoal dev) or point --addr / SHOAL_ADDR at a node"
    )


def test_addr_from_environment(addr: str, fake: FakeShoal) -> None:
    result = CliRunner(env={"SHOAL_ADDR": addr}).invoke(cli_main.cli, ["node", "ls", "-o", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["id"] == "n1"


def test_deadline_names_address_and_timeout(addr: str) -> None:
    message = fails(addr, "--timeout", "0.3", "service", "inspect", "slow")
    assert addr in message and "0.3s" in message and "deadline" in message


# --- the client ---------------------------------------------------------------------------


def test_client_calls(addr: str) -> None:
    with ShoalClient(addr, timeout=5) as client:
        assert client.get_service("web").version == 3
        assert [s.name for s in client.list_services()] == ["db", "web"]
        assert client.list_nodes().epoch == 7
        assert [e.port for e in client.resolve("web")] == [31000, 31001]
        assert len(client.list_tasks("web")) == 3
        assert client.apply("name: web\n", source="web.yaml").changed
        assert client.scale("web", 2).replicas == 2
        client.delete_service("web")
        assert [e.kind for e in client.events(limit=2)] == ["task.placed", "task.started"]


@pytest.mark.parametrize(
    ("spec", "cls", "code", "message"),
    [
        ("bad", InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, "web.yaml:2:11: replicas: must be >= 0"),
        ("frozen", FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, "no leader elected yet"),
        ("etcd", Unavailable, grpc.StatusCode.UNAVAILABLE, "store unavailable: etcd at 127.0.0.1:2379"),
    ],
)
def test_client_maps_server_errors(
    addr: str, spec: str, cls: type[ShoalError], code: grpc.StatusCode, message: str
) -> None:
    with ShoalClient(addr) as client, pytest.raises(cls) as info:
        client.apply(spec, source="web.yaml")
    assert info.value.code == code and info.value.target == addr
    assert str(info.value).startswith(message)


def test_client_not_found(addr: str) -> None:
    with ShoalClient(addr) as client, pytest.raises(NotFound, match=r"^service 'nope' not found$"):
        client.get_service("nope")


def test_client_stream_error_is_mapped() -> None:
    target = f"127.0.0.1:{free_port()}"
    with ShoalClient(target) as client, pytest.raises(Unavailable, match=re.escape(target)):
        list(client.events(follow=True))


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
    "Failed to connect to remote host: Connection refused"
)
DNS = (
    "errors resolving nope.invalid:7070: [field:hostname lookup error:address lookup failed "
    "for nope.invalid:7070: Domain name not found]"
)


@pytest.mark.parametrize(
    ("code", "details", "cls", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, "service 'x' not found", NotFound, "service 'x' not found"),
        (grpc.StatusCode.INVALID_ARGUMENT, "a\n  b", InvalidArgument, "a b"),
        (grpc.StatusCode.FAILED_PRECONDITION, "no leader", FailedPrecondition, "no leader"),
        (grpc.StatusCode.UNAVAILABLE, "etcd down", Unavailable, "etcd down"),
        (  # a node answered: its etcd is down; this is no "no node answers"
            grpc.StatusCode.UNAVAILABLE,
            "etcd unreachable at 127.0.0.1:2379: connection refused; the cluster state cannot be read",
            Unavailable,
            "etcd unreachable at 127.0.0.1:2379: connection refused; the cluster state cannot be read",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            REFUSED,
            Unavailable,
            "no shoal node answers at h:1: connection refused; "
            "start one (shoal dev) or point --addr / SHOAL_ADDR at a node",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            DNS,
            Unavailable,
            "no shoal node answers at h:1: cannot resolve the host name (Domain name not found); "
            "start one (shoal dev) or point --addr / SHOAL_ADDR at a node",
        ),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            DeadlineExceeded,
            "no answer from h:1 within 2.5s",
        ),
        (
            grpc.StatusCode.UNIMPLEMENTED,
            "Method not found",
            ShoalError,
            "the server at h:1 does not implement",
        ),
        (grpc.StatusCode.INTERNAL, "boom", ShoalError, "boom"),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "",
            PermissionDenied,
            "call to h:1 failed with PERMISSION_DENIED",
        ),
    ],
)
def test_error_mapping(code: grpc.StatusCode, details: str, cls: type[ShoalError], expected: str) -> None:
    err = error_from_rpc(FakeRpcError(code, details), "h:1", 2.5)
    assert type(err) is cls
    assert err.code == code and err.target == "h:1"
    assert str(err).startswith(expected)
    assert "\n" not in str(err)


def test_error_mapping_without_status() -> None:
    err = error_from_rpc(grpc.RpcError(), "h:1")
    assert type(err) is ShoalError and err.code is None and "h:1" in str(err)


def test_events_iterator_closes_cleanly(addr: str) -> None:
    with ShoalClient(addr) as client:
        stream = client.events(follow=True)
        assert next(stream).kind == "leader.elected"
        assert isinstance(stream, Generator)
        stream.close()  # cancels the call
        assert client.get_service("web").name == "web"  # the channel is still usable
