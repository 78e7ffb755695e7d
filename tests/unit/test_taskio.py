"""`node.api.taskio` on a memory store, a fake engine and fake peers: which tasks are read,
the merge of this node's and other nodes' lines, notices, exec targets, the exec event."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
import pytest

from node.api import convert, taskio
from node.api.taskio import TaskIO
from node.model.domain import Assignment, NodeInfo, ServiceRecord, TaskStatus
from node.model.errors import FailedPrecondition, InvalidArgument, NotFound
from node.model.keys import Keys
from node.model.spec import parse_spec
from node.pb import api_pb2, peer_pb2
from node.runtime.base import EngineError
from node.security.tokens import Role, allowed, least_role
from node.store.memory import MemoryStore
from node.store.mirrors import WatchHub
from tests.helpers import wait_until

KEYS = Keys("/t/")


class FakeSession:
    def __init__(self, out: list[tuple[str, bytes]], code: int) -> None:
        self.out, self.code, self.stdin, self.closed = out, code, b"", False

    async def output(self) -> AsyncIterator[tuple[str, bytes]]:
        for item in self.out:
            yield item

    async def write(self, data: bytes) -> None:
        self.stdin += data

    async def close_stdin(self) -> None: ...

    async def resize(self, width: int, height: int) -> None: ...

    async def exit_code(self) -> int:
        return self.code

    def close(self) -> None:
        self.closed = True


class FakeStreams:
    """The local engine: containers by task id, each with (ns, stream, line) lines."""

    def __init__(self, lines: dict[str, list[tuple[int, str, bytes]]]) -> None:
        self.lines = lines
        self.execs: list[tuple[str, Sequence[str]]] = []
        self.session = FakeSession([("stdout", b"hi\n")], 0)
        self.kept: dict[str, tuple[str, int]] = {}  # task -> (service, slot): exited, kept (decision 71)
        self.labels_asked: dict[str, str] = {}

    async def tasks(self, prefix: str, labels: dict[str, str]) -> list[dict[str, str]]:
        self.labels_asked = labels
        return [
            {
                "task": t,
                "service": svc,
                "slot": str(slot),
                "state": "exited",
                "id": f"c-{t}",
                "status": f"Exited ({slot}) {slot} minutes ago",
                "created": str(1000 + slot),
            }
            for t, (svc, slot) in sorted(self.kept.items())
            if t.startswith(prefix) and labels.get("io.shoal.service", svc) == svc
        ]

    async def find(self, task_id: str, previous: int = 0) -> str:
        key = f"{task_id}~{previous}" if previous else task_id  # an earlier run: "<task>~<n>"
        if key not in self.lines:
            raise EngineError(f"task {task_id} has no container on this node")
        return f"c-{key}"

    async def logs(
        self, container_id: str, follow: bool, tail: int | None, since: float
    ) -> AsyncIterator[list[tuple[int, str, bytes]]]:
        lines = [x for x in self.lines[container_id[2:]] if x[0] >= since * 1e9]
        for item in lines[-tail:] if tail else ([] if tail == 0 else lines):
            yield [item]

    async def exec(self, container_id: str, command: Sequence[str], *_: Any) -> FakeSession:
        self.execs.append((container_id, list(command)))
        return self.session


class FakeCall:
    def __init__(self, items: list[Any], error: Exception | None = None) -> None:
        self.items, self.error, self.cancelled = items, error, False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[Any]:
        for item in self.items:
            yield item
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self.cancelled = True


class FakePeers:
    def __init__(self, lines: dict[str, list[api_pb2.LogLine]]) -> None:
        self.lines = lines
        self.asked: list[tuple[str, api_pb2.LogsRequest]] = []

    def stub(self, address: str) -> FakePeers:
        self.address = address
        return self

    found: dict[str, list[peer_pb2.FoundTask]] | None = None  # address -> its kept tasks (decision 71)
    silent: set[str] = set()  # addresses whose FindTasks fails

    async def FindTasks(self, request: peer_pb2.FindTasksRequest, timeout: float | None = None) -> Any:
        if self.address in self.silent:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
        tasks = [
            t
            for t in (self.found or {}).get(self.address, [])
            if t.task.startswith(request.task) and request.service in ("", t.service)
        ]
        return peer_pb2.FindTasksResponse(node="", tasks=tasks)

    def TaskLogs(self, request: api_pb2.LogsRequest, timeout: float | None = None) -> FakeCall:
        self.asked.append((self.address, request))
        return FakeCall([api_pb2.LogBatch(lines=[x]) for x in self.lines.get(request.task, [])])


async def cluster() -> tuple[MemoryStore, list[tuple[str, str, tuple[Any, ...]]]]:
    store = MemoryStore()
    spec = parse_spec("name: web\nimage: x:1\nreplicas: 3\n", "<t>")
    await store.put(KEYS.service("web"), ServiceRecord("web", 1, spec).to_json())
    for slot, node in ((1, "n1"), (2, "n2"), (3, "n2")):
        task = f"t{slot}"
        await store.put(KEYS.task("web", slot), Assignment(task, "web", slot, node, 1, 1).to_json())
        state = "running" if slot > 1 else "starting"
        await store.put(KEYS.status(task), TaskStatus(task, "web", slot, node, state).to_json())
    await store.put(KEYS.node("n2"), NodeInfo("n2", "127.0.0.2", 7070).to_json())
    return store, []


def line(ns: int, text: str) -> api_pb2.LogLine:
    return api_pb2.LogLine(time_ns=ns, stream="stdout", text=text.encode())


async def make(peer_lines: dict[str, list[api_pb2.LogLine]] | None = None) -> tuple[TaskIO, list[Any]]:
    store, events = await cluster()
    local = FakeStreams({"t1": [(10, "stdout", b"a"), (40, "stderr", b"d")]})
    peers = FakePeers(peer_lines or {"t2": [line(20, "b"), line(50, "e")], "t3": [line(30, "c")]})
    io = TaskIO(store, KEYS, "n1", local, peers, lambda *a, **k: events.append((a, k)))  # type: ignore[arg-type]
    return io, events


async def test_service_logs_merge_local_and_peer_lines_in_time_order_with_their_task() -> None:
    io, _ = await make()
    got = [x async for x in io.logs(api_pb2.LogsRequest(service="web"))]
    assert [(x.text, x.task, x.slot, x.node) for x in got] == [
        (b"a", "t1", 1, "n1"),
        (b"b", "t2", 2, "n2"),
        (b"c", "t3", 3, "n2"),
        (b"d", "t1", 1, "n1"),
        (b"e", "t2", 2, "n2"),
    ]
    assert {a for a, _ in io.peers.asked} == {"127.0.0.2:7070"}  # type: ignore[attr-defined]


async def test_tail_and_since_are_passed_to_every_node() -> None:
    io, _ = await make()
    request = api_pb2.LogsRequest(service="web", tail=1, since=1.5)
    got = [x async for x in io.logs(request)]
    assert [x.text for x in got if x.node == "n1"] == []  # local lines are older than since
    asked = [r for _, r in io.peers.asked]  # type: ignore[attr-defined]
    assert all(r.HasField("tail") and r.tail == 1 and r.since == 1.5 for r in asked)
    assert {(r.task, r.service, r.slot) for r in asked} == {("t2", "web", 2), ("t3", "web", 3)}


async def test_follow_interleaves_as_lines_come() -> None:
    io, _ = await make()
    followed = io.logs(api_pb2.LogsRequest(service="web", follow=True))
    got = [await anext(followed) for _ in range(5)]  # a followed service goes on (new tasks)
    await followed.aclose()  # type: ignore[attr-defined]
    assert sorted(x.text for x in got) == [b"a", b"b", b"c", b"d", b"e"]


async def test_follow_opens_a_task_that_appears_once_its_container_exists(monkeypatch: Any) -> None:
    monkeypatch.setattr(taskio, "WATCH_INTERVAL", 0.01)
    io, _ = await make({"t4": [line(60, "new")]})
    followed = io.logs(api_pb2.LogsRequest(service="web", follow=True, tail=1))
    assert (await anext(followed)).task in {"t1", "t2", "t3"}  # the command is under way
    store = io.store
    decided: list[str] = []  # the states of t4's status that a look decided on
    container_of = taskio._container

    def recorded(kv: Any) -> str | None:
        if kv is not None and kv.key == KEYS.status("t4"):
            decided.append(TaskStatus.from_json(kv.value).state)
        return container_of(kv)

    monkeypatch.setattr(taskio, "_container", recorded)
    await store.put(KEYS.task("web", 4), Assignment("t4", "web", 4, "n2", 1, 1).to_json())
    await store.put(KEYS.status("t4"), TaskStatus("t4", "web", 4, "n2", "pending").to_json())
    await wait_until(lambda: "pending" in decided, 5.0, message="a look at t4's status: pending")
    assert "t4" not in {r.task for _, r in io.peers.asked}  # type: ignore[attr-defined]
    await store.put(KEYS.status("t4"), TaskStatus("t4", "web", 4, "n2", "running").to_json())
    got = await asyncio.wait_for(_until(followed, b"new"), 5)
    await followed.aclose()  # type: ignore[attr-defined]
    assert (got.task, got.slot, got.node) == ("t4", 4, "n2")
    asked = [r for _, r in io.peers.asked if r.task == "t4"]  # type: ignore[attr-defined]
    assert len(asked) == 1 and not asked[0].HasField("tail") and asked[0].follow  # from its first line


def status(task: str, slot: int, state: str, container: str = "") -> bytes:
    return TaskStatus(task, "web", slot, "n2", state, container_id=container).to_json()


@pytest.mark.parametrize("gets", [taskio.STATUS_GETS, 0], ids=["one-by-one", "one-read-of-all"])
async def test_follow_opens_a_task_pulling_at_the_start_and_a_container_made_anew(
    monkeypatch: Any, gets: int
) -> None:
    """t3 was pulling when `-f` began, and t2's container was replaced by a restart: each
    task was marked seen at the start, so neither's new container was ever read."""
    monkeypatch.setattr(taskio, "WATCH_INTERVAL", 0.01)
    monkeypatch.setattr(taskio, "STATUS_GETS", gets)
    io, _ = await make()
    store = io.store
    await store.put(
        KEYS.status("t2"), TaskStatus("t2", "web", 2, "n2", "running", container_id="c2").to_json()
    )
    await store.put(KEYS.status("t3"), TaskStatus("t3", "web", 3, "n2", "pulling").to_json())
    followed = io.logs(api_pb2.LogsRequest(service="web", follow=True))

    async def read() -> None:
        async for _ in followed:
            pass

    reader = asyncio.create_task(read())

    def asked(task: str) -> int:
        return sum(1 for _, r in io.peers.asked if r.task == task)  # type: ignore[attr-defined]

    await wait_until(lambda: asked("t2") == 1 and asked("t3") == 1, 5.0, message="the streams at the start")
    await store.put(
        KEYS.status("t3"), TaskStatus("t3", "web", 3, "n2", "running", container_id="c3").to_json()
    )
    await wait_until(lambda: asked("t3") == 2, 5.0, message="t3's container, once it runs")
    await store.put(
        KEYS.status("t2"), TaskStatus("t2", "web", 2, "n2", "running", container_id="c2b").to_json()
    )
    await wait_until(lambda: asked("t2") == 2, 5.0, message="t2's new container")
    for _ in range(5):  # and no more: a container is read once
        await asyncio.sleep(0.02)
    assert (asked("t2"), asked("t3")) == (2, 2)
    reader.cancel()


async def _until(lines: AsyncIterator[api_pb2.LogLine], text: bytes) -> api_pb2.LogLine:
    async for x in lines:
        if x.text == text:
            return x
    raise AssertionError(f"{text!r} never came")


async def test_an_unknown_service_or_task_is_not_found_and_a_request_needs_one() -> None:
    io, _ = await make()
    with pytest.raises(NotFound, match="service 'nope' not found"):
        _ = [x async for x in io.logs(api_pb2.LogsRequest(service="nope"))]
    with pytest.raises(NotFound, match="task 'zz' not found"):
        _ = [x async for x in io.logs(api_pb2.LogsRequest(task="zz"))]
    with pytest.raises(InvalidArgument, match="service name or a task id"):
        _ = [x async for x in io.logs(api_pb2.LogsRequest())]
    for since in (-1.0, float("nan"), float("inf")):  # NaN passed `< 0` as "everything"
        with pytest.raises(InvalidArgument, match="since"):
            _ = [x async for x in io.logs(api_pb2.LogsRequest(service="web", since=since))]


async def test_a_node_that_is_not_registered_or_a_missing_container_is_a_notice_not_a_failure() -> None:
    io, _ = await make()
    await io.store.delete(KEYS.node("n2"))
    io.local.lines.pop("t1")  # type: ignore[union-attr]
    got = [x async for x in io.logs(api_pb2.LogsRequest(service="web"))]
    notices = {x.task: x.notice for x in got}
    assert "no container" in notices["t1"] and "not registered" in notices["t2"]
    assert all(not x.text for x in got)


async def test_a_task_no_longer_assigned_is_found_by_its_status() -> None:
    io, _ = await make()
    await io.store.put(KEYS.status("old"), TaskStatus("old", "web", 4, "n1", "exited").to_json())
    io.local.lines["old"] = [(5, "stdout", b"last words")]  # type: ignore[union-attr]
    got = [x async for x in io.logs(api_pb2.LogsRequest(task="old"))]
    assert [(x.text, x.slot) for x in got] == [(b"last words", 4)]


async def test_exec_targets() -> None:
    io, _ = await make()
    assert (await io.exec_target("web")).task == "t2"  # slot 1 is not running yet
    assert (await io.exec_target("web.3")).task == "t3"
    assert (await io.exec_target("t1")).node == "n1"
    with pytest.raises(InvalidArgument, match=r"SERVICE\.SLOT"):
        await io.exec_target("web.x")
    for other in ("web.\u00b2", "web.\u0661"):  # '²' (int() refuses it), Arabic-Indic 1 (read as 1)
        with pytest.raises(InvalidArgument, match=r"SERVICE\.SLOT"):
            await io.exec_target(other)
    with pytest.raises(NotFound, match="slot 9"):
        await io.exec_target("web.9")
    with pytest.raises(NotFound, match="not found"):
        await io.exec_target("nothing")


async def inputs(*items: api_pb2.ExecInput) -> AsyncIterator[api_pb2.ExecInput]:
    for item in items:
        yield item


async def test_exec_on_this_node_streams_output_exit_code_and_one_event_without_output() -> None:
    io, events = await make()
    start = api_pb2.ExecStart(target="t1", command=["sh", "-c", "echo hi"])
    got = [x async for x in io.exec(inputs(api_pb2.ExecInput(start=start)))]
    assert (got[0].task, got[0].node) == ("t1", "n1")
    assert got[1].stdout == b"hi\n"
    assert got[-1].exited and got[-1].exit_code == 0
    assert io.local.execs == [("c-t1", ["sh", "-c", "echo hi"])]  # type: ignore[union-attr]
    assert len(events) == 1
    (kind, message), extra = events[0]
    assert kind == "task.exec" and "sh -c 'echo hi'" in message and "hi\n" not in message.split("`")[-1]
    assert extra == {"service": "web", "task": "t1"}
    assert io.local.session.closed  # type: ignore[union-attr]


async def test_exec_needs_a_start_with_a_command() -> None:
    io, events = await make()
    with pytest.raises(InvalidArgument, match="first message"):
        _ = [x async for x in io.exec(inputs(api_pb2.ExecInput(stdin=b"x")))]
    with pytest.raises(InvalidArgument, match="command"):
        _ = [x async for x in io.exec(inputs(api_pb2.ExecInput(start=api_pb2.ExecStart(target="t1"))))]
    assert events == []


async def test_a_node_without_an_engine_says_so() -> None:
    io, _ = await make()
    io.local = None
    with pytest.raises(FailedPrecondition, match="no container engine"):
        _ = [x async for x in io.local_log_batches(api_pb2.LogsRequest(task="t1"))]


def test_roles_logs_are_read_like_the_status_exec_needs_a_deployer() -> None:
    logs, exec_ = "/shoal.v1.Shoal/ServiceLogs", "/shoal.v1.Shoal/Exec"
    assert least_role(logs) is least_role("/shoal.v1.Shoal/GetService") is Role.VIEWER
    assert least_role(exec_) is Role.DEPLOYER
    assert not allowed(Role.VIEWER, exec_) and allowed(Role.DEPLOYER, exec_) and allowed(Role.ADMIN, exec_)
    assert not allowed(Role.VIEWER, "/shoal.v1.Peer/TaskExec")  # the peer half: node certificates only


class BlockingPeers(FakePeers):
    calls: list[FakeCall]

    found: dict[str, list[peer_pb2.FoundTask]] | None = None  # address -> its kept tasks (decision 71)
    silent: set[str] = set()  # addresses whose FindTasks fails

    async def FindTasks(self, request: peer_pb2.FindTasksRequest, timeout: float | None = None) -> Any:
        if self.address in self.silent:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
        tasks = [
            t
            for t in (self.found or {}).get(self.address, [])
            if t.task.startswith(request.task) and request.service in ("", t.service)
        ]
        return peer_pb2.FindTasksResponse(node="", tasks=tasks)

    def TaskLogs(self, request: api_pb2.LogsRequest, timeout: float | None = None) -> FakeCall:
        call = BlockingCall([api_pb2.LogBatch(lines=[line(1, "first")])])
        self.calls.append(call)
        return call


class BlockingCall(FakeCall):
    async def _gen(self) -> AsyncIterator[Any]:
        for item in self.items:
            yield item
        await asyncio.Event().wait()  # a followed stream: nothing more until cancelled


async def test_cancelling_a_followed_stream_cancels_the_peer_calls_and_closes_the_local_stream() -> None:
    io, _ = await make()
    peers = BlockingPeers({})
    peers.calls = []
    io.peers = peers  # type: ignore[assignment]
    closed: list[str] = []

    async def local_follow(*_: Any) -> AsyncIterator[tuple[int, str, bytes]]:
        try:
            yield [(1, "stdout", b"local")]
            await asyncio.Event().wait()
        finally:
            closed.append("local")

    io.local.logs = local_follow  # type: ignore[union-attr,method-assign]
    got: list[bytes] = []
    three = asyncio.Event()

    async def read() -> None:
        async for x in io.logs(api_pb2.LogsRequest(service="web", follow=True)):
            got.append(x.text)
            if len(got) == 3:
                three.set()

    reader = asyncio.create_task(read())
    async with asyncio.timeout(5):
        await three.wait()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    assert sorted(got) == [b"first", b"first", b"local"]
    assert closed == ["local"] and len(peers.calls) == 2 and all(c.cancelled for c in peers.calls)


# -- finding a task no longer in etcd, by its containers' labels (decision 71) ------------


async def test_a_task_kept_on_another_node_is_found_by_its_id_or_a_prefix_and_read_there() -> None:
    io, _ = await make({"0ld7a5k-on-n2": [line(7, "crashed here")]})
    io.peers.found = {"127.0.0.2:7070": [peer_pb2.FoundTask(task="0ld7a5k-on-n2", service="web", slot=2)]}  # type: ignore[attr-defined]
    for name in ("0ld7a5k-on-n2", "0ld7"):
        target = await io.task_target(name)
        assert (target.task, target.service, target.slot, target.node) == ("0ld7a5k-on-n2", "web", 2, "n2")
    got = [x async for x in io.logs(api_pb2.LogsRequest(task="0ld7a5k"))]
    assert [(x.text, x.task) for x in got] == [(b"crashed here", "0ld7a5k-on-n2")]


async def test_a_task_kept_on_this_node_is_found_without_a_peer_call() -> None:
    io, _ = await make()
    io.local.kept["k3pt-here"] = ("web", 1)  # type: ignore[union-attr]
    io.local.lines["k3pt-here"] = [(3, "stdout", b"bye")]  # type: ignore[union-attr]
    assert (await io.task_target("k3pt")).node == "n1"
    got = [x async for x in io.logs(api_pb2.LogsRequest(task="k3pt-here"))]
    assert [x.text for x in got] == [b"bye"]


async def test_a_prefix_of_an_assigned_task_names_it_and_an_ambiguous_one_is_refused() -> None:
    io, _ = await make()
    await io.store.put(KEYS.task("web", 7), Assignment("abcd-1", "web", 7, "n1", 1, 1).to_json())
    assert (await io.task_target("abcd")).task == "abcd-1"
    io.local.kept["abcd-2"] = ("web", 7)  # type: ignore[union-attr]
    with pytest.raises(InvalidArgument, match=r"'abcd' names 2 tasks: abcd-1 \(web\.7 on n1\), abcd-2"):
        await io.task_target("abcd")
    assert (await io.task_target("abcd-2")).task == "abcd-2"


async def test_a_node_that_does_not_answer_is_named_when_nothing_is_found() -> None:
    io, _ = await make()
    io.peers.silent = {"127.0.0.2:7070"}  # type: ignore[attr-defined]
    with pytest.raises(NotFound, match=r"node\(s\) n2 did not answer"):
        await io.task_target("gone-task")
    with pytest.raises(NotFound, match="at least its first 4 characters"):
        await io.task_target("gon")
    with pytest.raises(InvalidArgument, match="at least 4 characters"):
        await io.local_find("gon")


async def test_previous_reads_an_earlier_run_here_or_asks_the_node_for_it() -> None:
    io, _ = await make()
    io.local.lines["t1~1"] = [(2, "stdout", b"before the crash")]  # type: ignore[union-attr]
    got = [x async for x in io.logs(api_pb2.LogsRequest(task="t1", previous=1))]
    assert [x.text for x in got] == [b"before the crash"]
    _ = [x async for x in io.logs(api_pb2.LogsRequest(task="t2", previous=2))]
    assert io.peers.asked[-1][1].previous == 2  # type: ignore[attr-defined]
    got = [x async for x in io.logs(api_pb2.LogsRequest(task="t1", previous=3))]
    assert [x.notice for x in got] == ["node n1: task t1 has no container on this node"]
    _ = [x async for x in io.logs(api_pb2.LogsRequest(service="web", previous=1))]
    assert io.peers.asked[-1][1].previous == 0, "a service's logs read each task's newest run"


async def test_history_lists_every_nodes_tasks_of_a_service_and_names_the_silent_ones() -> None:
    """`service ps --all` (decision 71): each node lists the service's containers it has,
    kept exited ones included, newest first; a node that does not answer is named."""
    io, _ = await make()
    io.local.kept.update({"k1-old": ("web", 1), "k2-old": ("web", 2), "other": ("db", 1)})  # type: ignore[union-attr]
    io.peers.found = {  # type: ignore[attr-defined]
        "127.0.0.2:7070": [
            peer_pb2.FoundTask(
                task="k3-old", service="web", slot=3, state="exited", status="Exited (137) 1 hour ago"
            ),
            peer_pb2.FoundTask(task="db-old", service="db", slot=1, state="exited"),
        ]
    }
    found, silent = await io.history("web")
    assert sorted((node, t.task, t.slot) for node, t in found) == [
        ("n1", "k1-old", 1), ("n1", "k2-old", 2), ("n2", "k3-old", 3)
    ]  # fmt: skip
    assert silent == []
    assert io.local.labels_asked["io.shoal.service"] == "web"  # type: ignore[union-attr]
    mine = await io.local_find("", "web")  # no prefix needed with a service: the newest first
    assert [t.task for t in mine.tasks] == ["k2-old", "k1-old"]
    assert (mine.tasks[0].status, mine.tasks[0].created) == ("Exited (2) 2 minutes ago", 1002.0)
    io.peers.silent = {"127.0.0.2:7070"}  # type: ignore[attr-defined]
    found, silent = await io.history("web")
    assert [t.task for _, t in found] == ["k2-old", "k1-old"] and silent == ["n2"]


def test_a_kept_task_is_a_shutdown_row_with_its_exit_code() -> None:
    t = peer_pb2.FoundTask(
        task="k3",
        service="web",
        slot=3,
        state="exited",
        container="c3",
        status="Exited (137) 5 minutes ago",
        created=9.0,
    )
    row = convert.kept_task("n2", t)
    assert (row.task_id, row.node, row.desired, row.state, row.exit_code) == (
        "k3",
        "n2",
        "shutdown",
        "exited",
        137,
    )
    assert (row.message, row.updated_at, row.container_id, row.terminal) == (t.status, 9.0, "c3", True)
    assert convert.kept_task("n2", peer_pb2.FoundTask(task="k4", status="Up 3 minutes")).exit_code == 0


async def test_names_that_cannot_be_one_are_refused_short_before_any_lookup() -> None:
    """A 4 MB name came back whole in NOT_FOUND (past what gRPC's metadata carries), and a
    garbage task id was asked of every node first."""
    io, _ = await make()
    huge = "x" * 4_000_000
    for request in (api_pb2.LogsRequest(service=huge), api_pb2.LogsRequest(service="Web!")):
        with pytest.raises(InvalidArgument, match="is not a service name") as err:
            _ = [x async for x in io.logs(request)]
        assert len(str(err.value)) < 300
    with pytest.raises(InvalidArgument, match="is not a task id") as err:
        _ = [x async for x in io.logs(api_pb2.LogsRequest(task="a/../" + huge))]
    assert len(str(err.value)) < 300
    with pytest.raises(InvalidArgument, match="is not a task id"):
        await io.exec_target("zz zz")


async def test_lookups_at_once_on_a_node_share_one_engine_listing() -> None:
    """`ps --all` and unknown task prefixes ask every node's engine for its containers: a
    thousand at once were a thousand Docker list calls on every node."""
    io, _ = await make()
    assert io.local is not None
    calls = 0
    gate = asyncio.Event()
    listing = io.local.tasks

    async def slow(prefix: str, labels: dict[str, str]) -> list[dict[str, str]]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return await listing(prefix, labels)

    io.local.tasks = slow  # type: ignore[method-assign]
    finds = [asyncio.create_task(io.local_find("", "web")) for _ in range(50)]
    await asyncio.sleep(0.05)
    gate.set()
    answers = await asyncio.gather(*finds)
    assert calls == 1 and all(a == answers[0] for a in answers)
    await io.local_find("", "web")  # the next one, after: a listing of its own (nothing kept)
    assert calls == 2


async def test_a_shared_listing_that_fails_after_its_callers_gave_up_is_read() -> None:
    """Every caller's wait cancelled (a client's deadline), then the engine fails the
    listing: its failure had no reader and asyncio logged it at ERROR when collected."""
    io, _ = await make()
    assert io.local is not None
    gate = asyncio.Event()

    async def failing(prefix: str, labels: dict[str, str]) -> list[dict[str, str]]:
        await gate.wait()
        raise EngineError("the engine went away")

    io.local.tasks = failing  # type: ignore[method-assign]
    unread: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: unread.append(context))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(io.local_find("", "web"), 0.05)
    gate.set()
    await wait_until(lambda: not io.__dict__.get("_listings"), 5, message="the listing ends")
    await asyncio.sleep(0)
    gc.collect()
    assert not unread, unread


@pytest.mark.parametrize("with_hub", [True, False], ids=["daemon-hub", "private-mirrors"])
async def test_following_reads_the_followed_services_keys_not_every_status_each_look(
    monkeypatch: Any, with_hub: bool
) -> None:
    """A look for new containers of a followed service read `status/` whole (every task's
    status in the cluster) each second once the service had more tasks than
    `STATUS_GETS`: it now reads the service's own keys and the statuses' mirror."""
    monkeypatch.setattr(taskio, "WATCH_INTERVAL", 0.01)
    monkeypatch.setattr(taskio, "STATUS_GETS", 2)  # web's 3 tasks are "many"
    io, _ = await make({"t4": [line(60, "new")]})
    store = io.store
    hub = WatchHub(store, KEYS.prefix) if with_hub else None
    runner = asyncio.create_task(hub.run()) if hub is not None else None
    ranges: list[str] = []
    range_ = store.range

    async def recorded(prefix: str) -> Any:
        ranges.append(prefix)
        return await range_(prefix)

    store.range = recorded  # type: ignore[method-assign]
    try:
        followed = io.logs(api_pb2.LogsRequest(service="web", follow=True))
        assert (await anext(followed)).task in {"t1", "t2", "t3"}

        def looked(since: int) -> Callable[[], bool]:
            return lambda: ranges.count(KEYS.service_tasks("web")) > since

        for i in range(5):  # other services' tasks come and go: each change is a look
            before = ranges.count(KEYS.service_tasks("web"))
            await store.put(KEYS.status(f"db{i}"), TaskStatus(f"db{i}", "db", 1, "n2", "running").to_json())
            await wait_until(looked(before), 5.0, message="a look")
        await store.put(KEYS.task("web", 4), Assignment("t4", "web", 4, "n2", 1, 1).to_json())
        await store.put(KEYS.status("t4"), status("t4", 4, "running", "c4"))
        got = await asyncio.wait_for(_until(followed, b"new"), 5)  # a new task is still found
        await followed.aclose()  # type: ignore[attr-defined]
    finally:
        if runner is not None and hub is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            hub.detach()
    assert got.task == "t4"
    # the statuses read whole: once at the start, once by the mirror's listing; never per look
    assert ranges.count(KEYS.status_all) <= 2, ranges
    assert set(ranges) <= {KEYS.status_all, KEYS.service_tasks("web"), KEYS.services, KEYS.tasks}, ranges


async def test_a_mirror_behind_the_first_read_does_not_reopen_the_container_before(monkeypatch: Any) -> None:
    """The statuses' mirror may be behind the reads `-f` began with: t2's container was
    made anew (c2b) just before, the mirror still says c2. c2 is not a new container."""
    monkeypatch.setattr(taskio, "WATCH_INTERVAL", 0.01)
    io, _ = await make()
    store = io.store
    await store.put(KEYS.status("t2"), status("t2", 2, "running", "c2"))
    hub = WatchHub(store, KEYS.prefix)  # not run: its mirrors keep what they listed
    try:
        for prefix in (KEYS.services, KEYS.tasks, KEYS.status_all):
            await hub.mirror(prefix).relist()
        await store.put(KEYS.status("t2"), status("t2", 2, "running", "c2b"))
        ranges: list[str] = []
        range_ = store.range

        async def recorded(prefix: str) -> Any:
            ranges.append(prefix)
            return await range_(prefix)

        store.range = recorded  # type: ignore[method-assign]
        followed = io.logs(api_pb2.LogsRequest(service="web", follow=True))
        reader = asyncio.create_task(_drained(followed))

        def asked(task: str) -> int:
            return sum(1 for _, r in io.peers.asked if r.task == task)  # type: ignore[attr-defined,misc]

        await wait_until(lambda: ranges.count(KEYS.service_tasks("web")) >= 2, 5.0, message="a look")
        with pytest.raises(TimeoutError):
            await wait_until(lambda: asked("t2") > 1, 0.3, message="t2 read once (c2b), not c2 again")
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    finally:
        hub.detach()


async def _drained(lines: AsyncIterator[api_pb2.LogLine]) -> None:
    async for _ in lines:
        pass
