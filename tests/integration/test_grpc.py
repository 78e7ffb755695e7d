"""gRPC through a `grpc` port of the mesh, on a real 3-node cluster: a real gRPC server
(Debian's python3-grpcio in shoal-deb/python, each replica answering its hostname)
behind a `grpc` health check, called by grpcio's client through every node's published
port. Calls on ONE channel spread per call over the 3 replicas; a server stream stays
on its replica; an error status and its trailing metadata pass through; scaling down
mid-run loses only the streams of the replica that goes, and no unary call."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from node.dev.devcluster import DevCluster
from tests.helpers import free_port_on_all, wait_until_sync
from tests.integration.test_proxy import HOSTS, wait_routable
from tests.integration.test_websocket import PYTHON_IMAGE, python_image, running

pytestmark = pytest.mark.integration
__all__ = ["python_image"]  # the fixture, shared with the WebSocket test

# Generic handlers on raw bytes (no protobuf in the image): Who answers the hostname,
# Count "<n> <pause>" streams n messages "<hostname> <i>", Fail aborts with a status and
# trailing metadata; the health service answers SERVING (field 1 = 1) by hand. SIGTERM
# (the replica's stop) stops the server with a 1 s grace.
SERVER = """
import signal, socket, threading, time
from concurrent import futures
import grpc
NAME = socket.gethostname()
def who(req, ctx):
    return NAME.encode()
def count(req, ctx):
    n, _, pause = req.decode().partition(" ")
    for i in range(int(n)):
        yield ("%s %d" % (NAME, i)).encode()
        if pause:
            time.sleep(float(pause))
def fail(req, ctx):
    ctx.set_trailing_metadata((("replica", NAME),))
    ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "refused by " + NAME)
def check(req, ctx):
    return b"\\x08\\x01"
h = grpc.unary_unary_rpc_method_handler
server = grpc.server(futures.ThreadPoolExecutor(64))
server.add_generic_rpc_handlers((
    grpc.method_handlers_generic_handler("t.T", {
        "Who": h(who), "Fail": h(fail), "Count": grpc.unary_stream_rpc_method_handler(count)}),
    grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": h(check)}),
))
server.add_insecure_port("0.0.0.0:50051")
server.start()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
while not stop.wait(1):
    pass
server.stop(1).wait()
"""


def grpc_spec(published: int, replicas: int) -> str:
    return f"""
name: api
image: {PYTHON_IMAGE}
command: ["python3", "-c", {json.dumps(SERVER)}]
replicas: {replicas}
ports:
  - {{container: 50051, published: {published}, protocol: grpc}}
health: {{grpc: {{port: 50051}}, interval: 1s}}
"""


def channel(host: str, port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"{host}:{port}", options=[("grpc.enable_retries", 0)])


def test_grpc_calls_spread_per_call_and_a_scale_down_loses_only_its_streams(
    make_cluster: Callable[..., DevCluster], python_image: str
) -> None:
    cluster = make_cluster(3)
    port = free_port_on_all(HOSTS)
    with cluster.client() as c:
        c.apply(grpc_spec(port, 3), "api.yaml")
    replicas = wait_until_sync(
        lambda: r if len(r := running(cluster, "api")) == 3 else None, 90, message="3 api replicas running"
    )
    wait_routable(cluster, "api", 3, timeout=60)  # the grpc health check passed on each
    names = set(replicas)

    for host in HOSTS:
        with channel(host, port) as ch:
            who = ch.unary_unary("/t.T/Who")
            answers = Counter(who(b"", timeout=10).decode() for _ in range(30))
            assert set(answers) == names, f"through {host}: {answers}"
            assert answers == dict.fromkeys(names, 10), f"through {host}: not one call each in turn"

            count = ch.unary_stream("/t.T/Count")

            def stream(_: int, count: grpc.UnaryStreamMultiCallable = count) -> list[str]:
                return [m.decode() for m in count(b"20", timeout=20)]

            with ThreadPoolExecutor(6) as pool:
                streams = list(pool.map(stream, range(6)))
            owners = Counter()
            for messages in streams:
                served = {m.split()[0] for m in messages}
                assert len(served) == 1 and [int(m.split()[1]) for m in messages] == list(range(20))
                owners[served.pop()] += 1
            assert owners == dict.fromkeys(names, 2), f"server streams through {host}: {owners}"

            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary("/t.T/Fail")(b"", timeout=10)
            failed: grpc.Call = err.value  # type: ignore[assignment]
            assert failed.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert failed.details().removeprefix("refused by ") in names
            assert dict(failed.trailing_metadata())["replica"] == failed.details().removeprefix("refused by ")

    # Scale down to 2 while 6 long streams (2 per replica) and a loop of unary calls run
    # through node 1: the streams of the replica that goes may end (they are its
    # in-flight work); every other stream and every unary call succeeds.
    stop = threading.Event()
    unary: Counter[str] = Counter()

    def calls() -> None:
        with channel(HOSTS[0], port) as ch:
            who = ch.unary_unary("/t.T/Who")
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline and sum(unary.values()) < 20000:
                try:
                    unary[who(b"", timeout=10).decode()] += 1
                except grpc.RpcError as exc:
                    unary[f"error {exc.code()}: {exc.details()}"] += 1  # type: ignore[attr-defined]
                time.sleep(0.01)

    with channel(HOSTS[0], port) as ch, ThreadPoolExecutor(7) as pool:
        count = ch.unary_stream("/t.T/Count")
        streams = [count(b"300 0.05", timeout=60) for _ in range(6)]  # 15 s each
        first = [next(s).decode().split()[0] for s in streams]
        assert Counter(first) == dict.fromkeys(names, 2)
        caller = pool.submit(calls)

        def rest(i: int) -> tuple[int, str]:
            got = 1
            try:
                for _ in streams[i]:
                    got += 1
            except grpc.RpcError as exc:
                return got, str(exc.code())  # type: ignore[attr-defined]
            return got, "OK"

        outcomes = [pool.submit(rest, i) for i in range(6)]
        with cluster.client() as c:
            c.apply(grpc_spec(port, 2), "api.yaml")
        kept = wait_until_sync(
            lambda: set(r) if len(r := running(cluster, "api")) == 2 else None, 60, message="api down to 2"
        )
        wait_until_sync(lambda: sum(unary.values()) >= 50, 30, message="unary calls after the scale-down")
        gone = names - kept
        results = [o.result(timeout=90) for o in outcomes]
        stop.set()
        caller.result(timeout=30)

    for owner, (got, status) in zip(first, results, strict=True):
        if owner in kept:
            assert (got, status) == (300, "OK"), f"a stream to kept replica {owner} was cut: {got}, {status}"
    errors = {k: n for k, n in unary.items() if k.startswith("error")}
    assert not errors, f"unary calls failed during the scale-down: {errors}"
    assert set(unary) <= names
    lost = [(got, status) for owner, (got, status) in zip(first, results, strict=True) if owner in gone]
    print(
        f"grpc: 3 nodes x (30 unary, 6 streams); scale-down {gone} -> {kept}: "
        f"{sum(unary.values())} unary calls, 0 failed ({dict(unary)}); "
        f"streams of the replica that went: {lost}"
    )
