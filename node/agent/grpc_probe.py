"""The `grpc` health check: one call of the standard gRPC health protocol.

`grpc.health.v1.Health/Check` with the check's service name ("" asks about the server
as a whole) on a fresh h2c channel to the replica's container address and port. The
verdict is the answer's status: SERVING passes; NOT_SERVING, UNKNOWN and
SERVICE_UNKNOWN fail, and so does any RPC error (UNIMPLEMENTED: the server has no health
service; UNAVAILABLE: nothing listens, or it is not HTTP/2), each named in the message.
Never raises for a failed check; the prober bounds the whole call by the check's timeout.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_OPTIONS = [("grpc.enable_retries", 0), ("grpc.max_receive_message_length", 64 * 1024)]


async def check(host: str, port: int, service: str, timeout: float) -> tuple[bool, str]:
    """(passed, message) of one Health/Check call."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    what = f"grpc health :{port}" + (f" {service}" if service else "")
    async with grpc.aio.insecure_channel(target, options=_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            details = " ".join((exc.details() or "").split())[:200]
            return False, f"{what}: {exc.code().name}" + (f": {details}" if details else "")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return answer.status == health_pb2.HealthCheckResponse.SERVING, f"{what}: {status}"
