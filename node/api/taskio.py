"""Logs and exec of tasks through any node (issue 14): `Shoal/ServiceLogs`, `Shoal/Exec`,
and their peer halves `Peer/TaskLogs`, `Peer/TaskExec` (and `Peer/FindTasks`).

The node the client calls finds the tasks (`node.api.taskfind`: in etcd, else by the
labels of every node's containers, kept exited ones too: decision 71) and, for each,
reads the container on this node (`local`, a `node.runtime.docker_logs.DockerStreams`)
or asks the node that holds it over the peer API (mutual TLS with this node's
certificate). Logs of several tasks are merged in time order, or interleaved as they
come when followed (`node.runtime.logmerge`): one line held per task, one bounded queue
when following, gRPC flow control between nodes. A node that cannot be reached, or a
container that is gone, becomes a `notice` line for that task; the other tasks' lines
still come. When the client goes away the handler is cancelled, which cancels the peer
calls and closes the engine streams.

Exec is relayed: client <-> this node <-> the holder <-> dockerd. The role check is the
client API's (`node.security.tokens`: deployer or admin); the peer half trusts the
calling node, which only a node certificate can be. Every exec is a `task.exec` event
naming the caller, the task and the command; its output is never recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shlex
from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio

from node.api.server import handle, handle_stream
from node.api.taskfind import PeerStubs, Target, TaskFinder
from node.model.domain import TaskState, TaskStatus
from node.model.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from node.model.keys import Keys
from node.pb import api_pb2, peer_pb2
from node.runtime.base import EngineError, RuntimeUnavailable
from node.runtime.docker_logs import DockerStreams
from node.runtime.logmerge import batches, fan_in, merge_sorted
from node.security.auth import current_caller
from node.store import KV, Store
from node.store.mirrors import hub_of, mirror

log = logging.getLogger(__name__)

LOGS_TIMEOUT = 120.0  # s a peer may take to send a task's logs when not following
FIRST_INPUT_TIMEOUT = 10.0  # s for an exec's first message (its start)
MAX_COMMAND = 8192  # bytes of an exec's argv
MAX_TASKS = 1000  # tasks one logs call reads at once
WATCH_INTERVAL = 1.0  # s between looks for a followed service's new tasks
STATUS_GETS = 64  # tasks whose statuses a look reads one by one; more: one read of them all
NOT_STARTED = frozenset({TaskState.PENDING, TaskState.PULLING, TaskState.UNKNOWN, TaskState.FAILED})
#   a task in these has no container to read (yet): its stream opens once it leaves them
BATCHES_QUEUED = 8  # batches (each at most one 64 KiB engine read, or a peer's ~256 KiB) held
#   between the followed streams and the client: the bound per stream, a few MiB at most


class TaskIO(TaskFinder):
    """What the handlers need: the store, this node, its engine streams and its peers."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        node: str,
        local: DockerStreams | None,
        peers: PeerStubs,
        emit: Callable[..., None] | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.node = node
        self.local = local
        self.peers = peers
        self.emit = emit or (lambda *a, **k: None)

    # -- logs --------------------------------------------------------------------------

    async def logs(self, request: api_pb2.LogsRequest) -> AsyncIterator[api_pb2.LogLine]:
        """The lines of `log_batches`, one by one."""
        async for batch in self.log_batches(request):
            for line in batch.lines:
                yield line

    async def log_batches(self, request: api_pb2.LogsRequest) -> AsyncIterator[api_pb2.LogBatch]:
        """The lines of a service's tasks (or one task) in batches: followed, each task's
        batches as they come (a line is never held back for another task's); else merged
        in time order and batched again. Lines travel in batches end to end, from the
        engine's reads to the client's stream; a peer stamps its lines with their task's
        service and slot, so this node forwards its batches untouched."""
        if request.task:
            targets = [await self.task_target(request.task)]
        elif request.service:
            targets = await self.service_targets(request.service)
        else:
            raise InvalidArgument("give a service name or a task id")
        if not math.isfinite(request.since) or request.since < 0:  # NaN passed `< 0`, inf went to Docker
            raise InvalidArgument("since: a time in unix seconds, not negative")
        targets = targets[:MAX_TASKS]
        opened: dict[str, str] = {}  # task -> the container its stream was opened for
        seen: dict[str, int] = {}  # task -> the revision of the status `opened` was decided on
        if request.follow and request.service and not request.task:
            statuses = await self._statuses({t.task for t in targets})
            opened = {t.task: _container(statuses.get(t.task)) or "" for t in targets}
            seen = {task: kv.mod_revision for task, kv in statuses.items()}
        sources = [self._task_batches(t, request) for t in targets]
        if request.follow:
            more = None
            if request.service and not request.task:
                more = self._joining(request, opened, seen)
            async for batch in fan_in(sources, maxsize=BATCHES_QUEUED, more=more):
                yield batch
            return
        merged = merge_sorted([_lines(s) for s in sources], key=lambda line: line.time_ns)
        async for lines in batches(merged, _size):
            yield api_pb2.LogBatch(lines=lines)

    async def _statuses(self, tasks: set[str]) -> dict[str, KV]:
        """task -> its `status/` record, for those of `tasks` that have one (once, when
        following begins). Statuses are not kept by service: a few tasks are read one by
        one (at once), more in one read of every status, so it costs the lesser of the two."""
        if len(tasks) <= STATUS_GETS:
            got = await asyncio.gather(*(self.store.get(self.keys.status(t)) for t in sorted(tasks)))
            kvs = [kv for kv in got if kv is not None]
        else:
            kvs, _ = await self.store.range(self.keys.status_all)
        return {t: kv for kv in kvs if (t := self.keys.tail(kv.key, self.keys.status_all)) in tasks}

    async def _joining(
        self, request: api_pb2.LogsRequest, opened: dict[str, str], seen: dict[str, int]
    ) -> AsyncIterator[list[AsyncIterator[api_pb2.LogBatch]]]:
        """While following a service: a stream for each container of its tasks that shows
        after the command began (a new task, a task that was pulling then, a container made
        anew by a restart), opened once its node reports the task past `pending` and read
        from its first line (no `--tail`). `opened`: task -> the container its stream was
        opened for; `seen`: task -> the revision of the status that was decided on (an
        older one, from a mirror behind the first read, is not a new container).

        A look happens when `services/`, `tasks/` or `status/` changed (at most one per
        `WATCH_INTERVAL`): it reads the service's own keys (its record and its tasks'
        prefix) and takes the statuses from a mirror of `status/`, the daemon's watch
        hub's (`node.store.mirrors`; without a hub, this stream's own), never a read of
        every status. Ends when the service is removed; etcd not answering skips a look,
        it does not end the logs. A container that goes away ends its own stream."""
        ask = api_pb2.LogsRequest(service=request.service, follow=True, since=request.since)
        prefixes = (self.keys.services, self.keys.tasks, self.keys.status_all)
        watched = [mirror(self.store, p, f"logs-{p}") for p in prefixes]
        statuses = watched[-1]
        changed = asyncio.Event()
        for m in watched:
            m.listener(changed)
        runners = []  # a hub's mirrors are fed by the hub; private ones by their own watch
        if hub_of(self.store) is None:
            runners = [asyncio.create_task(m.run(), name=f"logs-mirror-{m.prefix}") for m in watched]
        try:
            while True:
                await asyncio.sleep(WATCH_INTERVAL)
                await changed.wait()
                changed.clear()
                try:
                    targets = await self.service_targets(request.service)
                except NotFound:
                    return
                except Exception as exc:  # the store not answering now: look again later
                    log.debug("logs of %s: new tasks not read: %s", request.service, exc)
                    changed.set()
                    continue
                fresh = []
                for t in targets:
                    kv = statuses.items.get(self.keys.status(t.task))
                    if kv is None or kv.mod_revision <= seen.get(t.task, 0):
                        continue
                    container = _container(kv)
                    if container is None or opened.get(t.task) == container:
                        seen[t.task] = kv.mod_revision
                        continue
                    if t.task not in opened and len(opened) >= MAX_TASKS:
                        continue
                    seen[t.task] = kv.mod_revision
                    opened[t.task] = container
                    fresh.append(self._task_batches(t, ask))
                if fresh:
                    yield fresh
        finally:
            for m in watched:
                m.remove_listener(changed)
            for r in runners:
                r.cancel()
            await asyncio.gather(*runners, return_exceptions=True)

    async def _task_batches(self, t: Target, request: api_pb2.LogsRequest) -> AsyncIterator[api_pb2.LogBatch]:
        ask = api_pb2.LogsRequest(
            task=t.task,
            service=t.service,
            slot=t.slot,
            follow=request.follow,
            since=request.since,
            previous=request.previous if request.task else 0,
        )
        if request.HasField("tail"):
            ask.tail = request.tail
        try:
            if t.node == self.node:
                async for batch in self.local_log_batches(ask):
                    yield batch
                return
            async for batch in self._peer_logs(t, ask):
                if batch.lines and not batch.lines[0].service:  # a peer of an older build
                    for line in batch.lines:
                        line.task, line.service, line.slot, line.node = t.task, t.service, t.slot, t.node
                yield batch
        except (EngineError, Unavailable, FailedPrecondition) as exc:
            notice = api_pb2.LogLine(
                task=t.task, service=t.service, slot=t.slot, node=t.node, notice=str(exc)
            )
            yield api_pb2.LogBatch(lines=[notice])

    async def _peer_logs(self, t: Target, ask: api_pb2.LogsRequest) -> AsyncIterator[api_pb2.LogBatch]:
        call = self.peers.stub(await self.address(t.node)).TaskLogs(
            ask, timeout=None if ask.follow else LOGS_TIMEOUT
        )
        try:
            async for batch in call:
                yield batch
        except grpc.RpcError as exc:
            raise Unavailable(f"the logs on node {t.node} could not be read: {_details(exc)}") from None
        finally:
            call.cancel()

    async def local_log_batches(self, request: api_pb2.LogsRequest) -> AsyncIterator[api_pb2.LogBatch]:
        """One task's lines from this node's engine (the peer half), a batch per read of
        the engine (at most 64 KiB of it), each line stamped with the request's task,
        service and slot and this node."""
        if self.local is None:
            raise FailedPrecondition(f"node {self.node} runs no container engine")
        tail = request.tail if request.HasField("tail") else None
        # every line of the task carries the same four fields: copied from one made line
        # (a third of the cost of passing seven keywords per line)
        same = api_pb2.LogLine(task=request.task, service=request.service, slot=request.slot, node=self.node)
        try:
            container = await self.local.find(request.task, request.previous)
            async for read in self.local.logs(container, request.follow, tail, request.since):
                batch = api_pb2.LogBatch()
                add = batch.lines.add
                for t, s, x in read:
                    line = add()
                    line.CopyFrom(same)
                    line.time_ns, line.stream, line.text = t, s, x
                yield batch
        except RuntimeUnavailable as exc:
            raise Unavailable(f"node {self.node}: {exc}") from None
        except EngineError as exc:
            raise FailedPrecondition(f"node {self.node}: {exc}") from None

    # -- exec --------------------------------------------------------------------------

    async def exec(self, inputs: AsyncIterator[api_pb2.ExecInput]) -> AsyncIterator[api_pb2.ExecOutput]:
        start = await _first(inputs)
        if not start.target:
            raise InvalidArgument("exec: name the task (a task id, SERVICE or SERVICE.SLOT)")
        t = await self.exec_target(start.target)
        caller = current_caller()
        who = str(caller) if caller is not None else "an unauthenticated caller"
        command = shlex.join(start.command)
        self.emit(
            "task.exec",
            f"{who} ran `{command[:300]}` in {t.service}.{t.slot} ({t.task}) on {t.node}",
            service=t.service,
            task=t.task,
        )
        start.task, start.user = t.task, who
        yield api_pb2.ExecOutput(task=t.task, node=t.node)
        outputs = self.local_exec(start, inputs) if t.node == self.node else self._peer_exec(t, start, inputs)
        async for out in outputs:
            yield out

    async def _peer_exec(
        self, t: Target, start: api_pb2.ExecStart, inputs: AsyncIterator[api_pb2.ExecInput]
    ) -> AsyncIterator[api_pb2.ExecOutput]:
        async def requests() -> AsyncIterator[api_pb2.ExecInput]:
            yield api_pb2.ExecInput(start=start)
            async for msg in inputs:
                yield msg

        call = self.peers.stub(await self.address(t.node)).TaskExec(requests())
        try:
            async for out in call:
                yield out
        except grpc.RpcError as exc:
            raise Unavailable(f"exec on node {t.node} failed: {_details(exc)}") from None
        finally:
            call.cancel()

    async def local_exec(
        self, start: api_pb2.ExecStart, inputs: AsyncIterator[api_pb2.ExecInput]
    ) -> AsyncIterator[api_pb2.ExecOutput]:
        """Run `start` in the container of `start.task` on this node (the peer half)."""
        if self.local is None:
            raise FailedPrecondition(f"node {self.node} runs no container engine")
        _check_command(start)
        log.info("exec in task %s for %s: %s", start.task, start.user, shlex.join(start.command)[:300])
        size = (start.width, start.height) if start.width and start.height else None
        try:
            container = await self.local.find(start.task)
            session = await self.local.exec(container, list(start.command), start.tty, start.stdin, size)
        except RuntimeUnavailable as exc:
            raise Unavailable(f"node {self.node}: {exc}") from None
        except EngineError as exc:
            raise FailedPrecondition(f"node {self.node}: {exc}") from None

        async def feed() -> None:
            async for msg in inputs:
                if msg.stdin and start.stdin:
                    await session.write(msg.stdin)
                if msg.stdin_eof and start.stdin:
                    await session.close_stdin()
                if msg.width and msg.height:
                    await session.resize(msg.width, msg.height)
            if start.stdin:  # the client closed its side: no more stdin
                await session.close_stdin()

        feeder = asyncio.create_task(feed(), name=f"exec-stdin-{start.task}")
        try:
            async for stream, data in session.output():
                yield (
                    api_pb2.ExecOutput(stdout=data) if stream == "stdout" else api_pb2.ExecOutput(stderr=data)
                )
            try:
                code = await session.exit_code()
            except EngineError as exc:
                raise FailedPrecondition(f"node {self.node}: {exc}") from None
            yield api_pb2.ExecOutput(exited=True, exit_code=code)
        finally:
            feeder.cancel()
            session.close()
            with contextlib.suppress(BaseException):
                await feeder


def _container(kv: KV | None) -> str | None:
    """The container a task's status names once its node reports it past `pending`
    ("started": an agent that did not say which), None before (or without a status)."""
    if kv is None:
        return None
    status = TaskStatus.from_json(kv.value)
    if status.state in NOT_STARTED:
        return None
    return status.container_id or "started"


def _check_command(start: api_pb2.ExecStart) -> None:
    if not start.command or not start.command[0]:
        raise InvalidArgument("exec: give the command to run after `--`, e.g. `shoal exec web -- ps aux`")
    if sum(len(a.encode()) for a in start.command) > MAX_COMMAND:
        raise InvalidArgument(f"exec: the command is longer than {MAX_COMMAND} bytes")


async def _first(inputs: AsyncIterator[api_pb2.ExecInput]) -> api_pb2.ExecStart:
    try:
        async with asyncio.timeout(FIRST_INPUT_TIMEOUT):
            first = await anext(inputs)
    except (StopAsyncIteration, TimeoutError):
        raise InvalidArgument("exec: the first message must carry `start` (target and command)") from None
    if not first.HasField("start"):
        raise InvalidArgument("exec: the first message must carry `start` (target and command)")
    _check_command(first.start)
    return first.start


async def _lines(batches: AsyncIterator[api_pb2.LogBatch]) -> AsyncIterator[api_pb2.LogLine]:
    try:
        async for batch in batches:
            for line in batch.lines:
                yield line
    finally:
        await batches.aclose()  # type: ignore[attr-defined]


def _size(line: api_pb2.LogLine) -> int:
    return len(line.text) + len(line.notice) + 64  # the text and about what the rest costs


def _details(exc: grpc.RpcError) -> str:
    details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
    return (details or type(exc).__name__).splitlines()[0][:300]


class _TaskIOHolder:
    """The `taskio` the daemon sets on both servicers (None: logs and exec not served)."""

    taskio: TaskIO | None = None

    def _taskio(self) -> TaskIO:
        if self.taskio is None:
            raise FailedPrecondition("this node serves no logs or exec")
        return self.taskio


class LogsExecHandlers(_TaskIOHolder):
    """`Shoal/ServiceLogs` and `Shoal/Exec`, mixed into `ShoalServicer` (set `taskio`)."""

    @handle_stream
    async def ServiceLogs(
        self, request: api_pb2.LogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.LogBatch]:
        async for batch in self._taskio().log_batches(request):
            yield batch

    @handle_stream
    async def Exec(
        self, request_iterator: AsyncIterator[api_pb2.ExecInput], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ExecOutput]:
        async for out in self._taskio().exec(request_iterator):
            yield out


class PeerTaskHandlers(_TaskIOHolder):
    """`Peer/TaskLogs`, `Peer/TaskExec` and `Peer/FindTasks`, mixed into `PeerServicer` (set `taskio`)."""

    @handle
    async def FindTasks(
        self, request: peer_pb2.FindTasksRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.FindTasksResponse:
        return await self._taskio().local_find(request.task, request.service)

    @handle_stream
    async def TaskLogs(
        self, request: api_pb2.LogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.LogBatch]:
        async for batch in self._taskio().local_log_batches(request):
            yield batch

    @handle_stream
    async def TaskExec(
        self, request_iterator: AsyncIterator[api_pb2.ExecInput], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ExecOutput]:
        start = await _first(request_iterator)
        async for out in self._taskio().local_exec(start, request_iterator):
            yield out
