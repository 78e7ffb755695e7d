"""The `shoal` CLI and `node.wire.client` against an in-process fake of the client API.

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
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from ruamel.yaml import YAML

from node.cli import main as cli_main
from node.pb import api_pb2
from node.wire.client import (
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
from tests.unit.fake_shoal import (
    EVENTS,
    FakeShoal,
    fails,
    free_port,
    ok,
    shoal,
)

pytestmark = pytest.mark.usefixtures("credentials")

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
    usage = ["CPU", "%", "MEM", "USAGE", "/", "LIMIT", "NET", "I/O", "BLOCK", "I/O"]  # issue 14
    assert lines[0].split() == [*header, "EXIT", *usage, "MESSAGE"]
    first = ["0", "t0abc", "n0", "running", "running", "-", "0" * 12, "127.0.0.0:31000", "0"]
    figures = ["12.5%", "10.0MiB", "/", "64.0MiB", "2.0KiB", "/", "1.0KiB", "0B", "/", "4.0KiB"]
    assert lines[1].split() == [*first, *figures]  # no check: HEALTH "-"; never restarted: EXIT blank
    assert lines[2].split()[-4:] == ["-", "-", "-", "-"]  # t1abc: no sample yet
    assert "1" * 13 not in lines[2]  # container ids are cut to 12 characters
    assert lines[3].split()[-3:] == ["image", "[not]", "found"]  # no rich markup interpretation
    assert lines[-1] == "note: node n2: no usage figures: connection refused"


def test_service_ps_all_puts_each_slots_kept_tasks_after_it_newest_first(addr: str) -> None:
    result = shoal(addr, "service", "ps", "web", "--all")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[1:4]]
    assert [r[:5] for r in rows] == [
        ["0", "t0abc", "n0", "running", "running"],
        ["1", "t1abc", "n1", "running", "running"],
        ["1", "old60", "n2", "shutdown", "exited"],
    ]
    assert "old300" in result.stdout.splitlines()[4]
    assert "note: node(s) n3 did not answer: their kept tasks are not listed" in result.stdout
    result = shoal(addr, "service", "ps", "web", "-a", "-o", "json")
    assert "note: node(s) n3 did not answer" in result.stderr  # not in the JSON
    data = json.loads(result.stdout)
    assert [(t["slot"], t["task"], t["desired"], t["exit_code"]) for t in data[1:4]] == [
        (1, "t1abc", "running", 0), (1, "old60", "shutdown", 1), (1, "old300", "shutdown", 137)
    ]  # fmt: skip


def test_service_ps_json_has_each_tasks_usage(addr: str) -> None:
    data = json.loads(ok(addr, "service", "ps", "web", "-o", "json"))
    assert data[0]["usage"]["cpu_percent"] == 12.5 and data[0]["usage"]["block_write"] == 4096
    assert data[1]["usage"] is None


def test_top_once_lists_every_service_and_filters_one(addr: str, fake: FakeShoal) -> None:
    lines = ok(addr, "top", "--once").splitlines()
    assert lines[0].split()[:5] == ["SERVICE", "SLOT", "TASK", "NODE", "CPU"]
    assert lines[1].split()[:5] == ["web", "0", "t0abc", "n0", "12.5%"] and lines[1].split()[-1] == "1"
    assert "15.6%" in lines[1]  # MEM %: 10 MiB of 64 MiB
    assert lines[2].split()[:5] == ["db", "0", "d0abc", "n1", "0.2%"]
    assert lines[-1] == "note: node n2: no usage figures: connection refused"
    data = json.loads(ok(addr, "top", "--once", "web", "-o", "json", "--history"))
    assert [t["task"] for t in data["tasks"]] == ["t0abc"] and data["tasks"][0]["history"][0][
        "cpu_percent"
    ] == 12.5
    assert fake.calls[-1][0] == "TaskUsage" and fake.calls[-1][1].history
    assert json.loads(ok(addr, "top", "--once", "web", "-o", "json"))["tasks"][0]["history"] == []


def test_top_of_an_unknown_service_is_an_error(addr: str) -> None:
    assert "service 'nope' not found" in fails(addr, "top", "--once", "nope")


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
        "ID", "ADDRESS", "STATUS", "KERNEL", "AVAILABILITY", "LEADER", "GOSSIP", "INCARNATION", "SINCE",
        "TASKS", "CPU", "RESERVED/CAPACITY", "MEMORY", "RESERVED/CAPACITY", "FREE", "LABELS", "SIMULATED",
    ]  # fmt: skip
    kernel = "fallback (nft -f - exited with 1: Error: Could no…)"  # the reason cut at 40 characters
    assert lines[1].startswith("n1") and kernel in lines[1]
    assert lines[1].replace(kernel, "K").split() == [
        "n1", "127.0.0.1:7070", "ready", "K", "drain", "*", "alive", "1700000000", "12.5s", "2",
        "1.5/4", "2.0GiB/8.0GiB", "2.5", "cpu,", "6.0GiB", "zone=a",
    ]  # fmt: skip
    assert lines[2].split() == [  # n2 does not report its kernel path (an older node): "-"
        "n2", "127.0.0.2:7070", "down", "-", "-", "dead", "1700000001", "5m", "0", "0/2", "0B/1.0GiB",
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
    assert data[0]["kernel_path"] == "fallback" and data[0]["kernel_reason"].endswith(
        "No such file or directory"
    )
    assert data[1]["kernel_path"] is None and data[1]["kernel_reason"] == ""


def test_node_inspect_gives_the_whole_kernel_reason(addr: str) -> None:
    data = YAML(typ="safe").load(ok(addr, "node", "inspect", "n1"))
    assert data["id"] == "n1" and data["kernel_path"] == "fallback"
    assert data["kernel_reason"] == (
        "nft -f - exited with 1: Error: Could not process rule: No such file or directory"
    )
    assert json.loads(ok(addr, "node", "inspect", "n2", "-o", "json"))["kernel_path"] is None
    assert fails(addr, "node", "inspect", "n9") == "node 'n9' not found"


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


def test_resolve_by_network_alias_says_whose_alias_it_is(addr: str) -> None:
    lines = ok(addr, "resolve", "database").splitlines()
    assert lines[0] == "database: alias of service web on network backnet"
    assert lines[1].split() == ["TASK", "NODE", "ADDRESS", "PORT"]
    data = json.loads(ok(addr, "resolve", "database", "-o", "json"))
    assert (data["name"], data["alias"], data["alias_networks"]) == ("web", "database", ["backnet"])
    assert "alias" not in json.loads(ok(addr, "resolve", "web", "-o", "json")), "by its own name: no alias"


def test_resolve_watch_prints_each_answer(addr: str) -> None:
    lines = ok(addr, "resolve", "web", "--watch", "-o", "json").splitlines()
    answers = [json.loads(line) for line in lines]
    assert [len(a["endpoints"]) for a in answers] == [2, 1]
    assert all(a["name"] == "web" for a in answers)


def test_events_lines(addr: str, fake: FakeShoal) -> None:
    lines = ok(addr, "events").splitlines()
    assert len(lines) == 3
    when = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"
    assert re.fullmatch(rf"{when} leader\.elected n1 n1 leads, epoch 7 cause=c1", lines[0])
    assert lines[1].endswith(" task.placed n1 web/t0abc on n0")
    request, remaining = fake.calls[-1][1], fake.calls[-1][2]
    assert not request.follow and remaining is not None  # a deadline when not following


def test_events_filter_limit_json(addr: str, fake: FakeShoal) -> None:
    out = ok(addr, "events", "--service", "web", "-n", "1", "-o", "json")
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["kind"], e["service"], e["task"]) for e in events] == [("task.started", "web", "t0abc")]
    request = fake.calls[-1][1]
    assert request.service == "web" and request.limit == 1


def test_events_since_kind_cause_are_sent_for_the_server_to_filter(addr: str, fake: FakeShoal) -> None:
    before = time.time()
    ok(addr, "events", "--since", "10m", "--kind", "task.", "--cause", "c0123456789ab")
    request = fake.calls[-1][1]
    assert before - 601 < request.since <= time.time() - 599
    assert (request.kind, request.cause) == ("task.", "c0123456789ab")
    bad = shoal(addr, "events", "--since", "yesterday")
    assert bad.exit_code == 2 and "--since" in bad.stderr and "duration" in bad.stderr, bad.stderr


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


@pytest.mark.parametrize("kind", [str, Path])
def test_client_takes_context_file_as_str_or_path(
    addr: str, context_file: Path, monkeypatch: pytest.MonkeyPatch, kind: type
) -> None:
    """docs/api.md: `context_file=` names the file, as a str or a path (a str used to fail)."""
    monkeypatch.delenv("SHOAL_CONTEXT_FILE")
    with ShoalClient(addr, timeout=5, context_file=kind(context_file)) as client:
        assert [s.name for s in client.list_services()] == ["db", "web"]


def test_run_refuses_the_name_of_an_existing_service(addr: str, fake: FakeShoal) -> None:
    """`shoal run --name web` would have replaced the service web with a one-off job (and
    `--rm` then removed it): the name is refused before anything is applied."""
    error = fails(addr, "run", "--name", "web", "-d", "alpine", "--", "true")
    assert "a service named 'web' exists" in error and "--name" in error
    assert "ApplyService" not in [method for method, _, _ in fake.calls]
