"""A small synchronous Python client of shoal's client API (`shoal.v1.Shoal`).

Programs get what the `shoal` CLI gets, with the same messages: every call has a
deadline, and every gRPC failure becomes a `ShoalError` (a subclass per status code
that callers commonly handle: the very classes a node raises, `node.model.errors`) whose
message is one line a person can act on.

Every node requires mutual TLS and a token: the client takes its CA, certificate, key
and token from `tls` (an `rpc.ClientTls`), or else from the environment and the
context file, as the CLI does (`node.security.context`: SHOAL_TOKEN, SHOAL_CA, …,
`~/.config/shoal/context.json`); `CredentialsMissing` says which are missing.
A TLS handshake a node refused becomes `Unavailable` with what to check.

Example::

    from node.wire.client import NotFound, ShoalClient

    with ShoalClient("127.0.0.1:7070", timeout=5.0) as shoal:  # credentials from the context
        result = shoal.apply(open("web.yaml").read(), source="web.yaml")
        print(result.name, result.version, result.changed)
        shoal.scale("web", 5)
        for endpoint in shoal.resolve("web"):
            print(f"{endpoint.address}:{endpoint.port}")
        try:
            shoal.get_service("nope")
        except NotFound as err:
            print(err)  # service 'nope' not found
        for event in shoal.events(service="web", limit=20):
            print(event.kind, event.message)

The client is thread-safe (one gRPC channel, shared); `close()` releases it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc

from node.model.errors import (  # re-exported (__all__): one family with the server's (node.model.errors)
    Conflict,
    CredentialsMissing,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ShoalError,
    Unauthenticated,
    Unavailable,
)
from node.pb import (
    api_pb2,
    api_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    secrets_pb2,
    secrets_pb2_grpc,
    volumes_pb2,
    volumes_pb2_grpc,
)
from node.security import context as credentials
from node.wire import rpc
from node.wire.client_errors import _never_connected, split_targets
from node.wire.client_errors import error_from_rpc as error_from_rpc  # re-exported (__all__)
from node.wire.defaults import DEFAULT_ADDR as DEFAULT_ADDR  # re-exported (__all__)

__all__ = [
    "DEFAULT_ADDR",
    "Conflict",
    "CredentialsMissing",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ShoalClient",
    "ShoalError",
    "Unauthenticated",
    "Unavailable",
    "error_from_rpc",
]


class ShoalClient:
    """A blocking client of a shoal cluster; any node answers every call.

    `addr` is "host:port" of a node's gRPC port, or several, comma-separated (None:
    SHOAL_ADDR, the context's endpoint(s), or 127.0.0.1:7070). The client calls the
    first; when a call reaches no node at all (nothing listens, the host is down) it
    sends it to the next, so a request is never sent twice; `addr` names the node in
    use. `timeout` is the deadline of each call in seconds
    (except `events(follow=True)`, which has none). `tls` holds the CA, the client's
    certificate and key, and the token; without it they are read as the CLI reads
    them (`context_file`, else SHOAL_CONTEXT_FILE or ~/.config/shoal/context.json,
    and the SHOAL_* variables). `insecure=True` is plaintext without credentials,
    which no shoal node accepts: it is for test doubles only.
    """

    def __init__(
        self,
        addr: str | None = None,
        timeout: float = rpc.DEFAULT_DEADLINE,
        tls: rpc.ClientTls | None = None,
        *,
        insecure: bool = False,
        context_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if tls is None and not insecure:
            try:
                path = Path(context_file) if context_file is not None else None
                found = credentials.resolve(path=path, endpoint=addr)
            except credentials.MissingCredentials as exc:
                raise CredentialsMissing(str(exc)) from None
            addr, tls = found.endpoint, found.tls()
        self.targets = split_targets(addr or DEFAULT_ADDR)
        self.timeout = timeout
        self._tls = tls
        self._at = 0
        self._channel = rpc.channel(self.targets[0], tls)
        self._stub = api_pb2_grpc.ShoalStub(self._channel)

    @property
    def addr(self) -> str:
        """The node this client calls now (the first of `targets` that answered)."""
        return self.targets[self._at]

    def close(self) -> None:
        """Release the channel; the client cannot be used afterwards."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _error(self, err: grpc.RpcError) -> ShoalError:
        return error_from_rpc(err, self.addr, self.timeout)

    def _next_target(self, err: grpc.RpcError, tried: int) -> bool:
        """After a call that reached no node: move to the next target, if one is left untried."""
        if tried >= len(self.targets) or not _never_connected(err):
            return False
        self._channel.close()
        self._at = (self._at + 1) % len(self.targets)
        self._channel = rpc.channel(self.addr, self._tls)
        self._stub = api_pb2_grpc.ShoalStub(self._channel)
        return True

    def _give_up(self, err: grpc.RpcError, tried: int) -> ShoalError:
        """The error to raise; when every target was tried and none answered, it names them all."""
        if tried > 1 and tried >= len(self.targets) and _never_connected(err):
            return error_from_rpc(err, ", ".join(self.targets), self.timeout)
        return self._error(err)

    def _unary(self, method: str, request: Any) -> Any:
        """Call `method` on the current node; when no node took the call (nothing listens,
        the host is unreachable), on the next target, each at most once."""
        tried = 1
        while True:
            try:
                return getattr(self._stub, method)(request, timeout=self.timeout)
            except grpc.RpcError as err:
                if not self._next_target(err, tried):
                    raise self._give_up(err, tried) from None
                tried += 1

    def _stream(self, method: str, request: Any, timeout: float | None) -> Iterator[Any]:
        """A server stream from the current node, moved to the next target like `_unary`
        while nothing has been received."""
        tried = 1
        while True:
            call = getattr(self._stub, method)(request, timeout=timeout)
            received = False
            try:
                for item in call:
                    received = True
                    yield item
                return
            except grpc.RpcError as err:
                if received or not self._next_target(err, tried):
                    raise self._give_up(err, tried) from None
                tried += 1
            finally:
                call.cancel()

    def apply(self, spec_text: str, source: str = "") -> api_pb2.ApplyServiceResponse:
        """Validate and store a service spec (YAML or JSON text); `source` names it in errors."""
        request = api_pb2.ApplyServiceRequest(spec=spec_text, source=source)
        return self._unary("ApplyService", request)

    def get_service(self, name: str) -> api_pb2.Service:
        """The current version of a service; `NotFound` when there is none."""
        return self._unary("GetService", api_pb2.GetServiceRequest(name=name))

    def list_services(self) -> list[api_pb2.Service]:
        """Every service, as the server orders them (by name)."""
        response = self._unary("ListServices", api_pb2.ListServicesRequest())
        return list(response.services)

    def delete_service(self, name: str) -> None:
        """Remove a service; its tasks are stopped by the leader."""
        self._unary("DeleteService", api_pb2.DeleteServiceRequest(name=name))

    def scale(self, name: str, replicas: int) -> api_pb2.ScaleServiceResponse:
        """Set the desired replica count; returns the new spec version."""
        request = api_pb2.ScaleServiceRequest(name=name, replicas=replicas)
        return self._unary("ScaleService", request)

    def rollback(self, name: str) -> api_pb2.ApplyServiceResponse:
        """Go back to the version before the current one (rolled out as an update)."""
        return self._unary("RollbackService", api_pb2.RollbackServiceRequest(name=name))

    def history(self, name: str) -> api_pb2.ServiceHistoryResponse:
        """Every stored version of a service, oldest first."""
        return self._unary("ServiceHistory", api_pb2.ServiceHistoryRequest(name=name))

    def list_tasks(self, service: str) -> list[api_pb2.Task]:
        """The tasks (slots) of a service with their observed state."""
        response = self._unary("ListTasks", api_pb2.ListTasksRequest(service=service))
        return list(response.tasks)

    def tasks(self, service: str, all: bool = False) -> api_pb2.ListTasksResponse:
        """`list_tasks`, with the slots the scheduler has no node for and why (`pending_*`);
        with `all`, the tasks whose exited containers their nodes keep too (decision 71)."""
        return self._unary("ListTasks", api_pb2.ListTasksRequest(service=service, all=all))

    def set_node_availability(self, node: str, availability: str) -> api_pb2.UpdateNodeResponse:
        """`active`, `pause` (keeps its tasks, takes no new ones) or `drain` (its tasks move)."""
        request = api_pb2.SetNodeAvailabilityRequest(node=node, availability=availability)
        return self._unary("SetNodeAvailability", request)

    def drain_node(self, node: str) -> api_pb2.UpdateNodeResponse:
        """Move the node's tasks elsewhere and place nothing new on it (`activate_node` undoes it)."""
        return self.set_node_availability(node, "drain")

    def activate_node(self, node: str) -> api_pb2.UpdateNodeResponse:
        return self.set_node_availability(node, "active")

    def label_node(
        self, node: str, set_: dict[str, str] | None = None, remove: list[str] | None = None
    ) -> api_pb2.UpdateNodeResponse:
        """Set labels (`set_`) and remove others (`remove`) on a node; constraints see them at once."""
        request = api_pb2.LabelNodeRequest(node=node, set=set_ or {}, remove=remove or [])
        return self._unary("LabelNode", request)

    def deploy_stack(
        self, name: str, spec_text: str, source: str = "", objects: Sequence[tuple[str, str, bytes]] = ()
    ) -> api_pb2.DeployStackResponse:
        """Write every service of a stack file in one transaction (docs/stacks.md). With
        `objects` ((kind, <stack>_<name>, value) of the stack's own secrets and configs),
        they go in the same transaction (DeployStackWithObjects, admin only; an older node
        raises a `ShoalError` whose `code` is UNIMPLEMENTED)."""
        request = api_pb2.DeployStackRequest(
            name=name,
            spec=spec_text,
            source=source,
            objects=[api_pb2.StackObject(kind=k, name=n, value=v) for k, n, v in objects],
        )
        return self._unary("DeployStackWithObjects" if objects else "DeployStack", request)

    def remove_stack(self, name: str) -> api_pb2.RemoveStackResponse:
        return self._unary("RemoveStack", api_pb2.RemoveStackRequest(name=name))

    def list_stacks(self, name: str = "") -> list[api_pb2.Stack]:
        return list(self._unary("ListStacks", api_pb2.ListStacksRequest(name=name)).stacks)

    def list_nodes(self) -> api_pb2.ListNodesResponse:
        """Every node of the cluster, and the current leader's epoch."""
        return self._unary("ListNodes", api_pb2.ListNodesRequest())

    def resolve(self, name: str) -> list[api_pb2.Endpoint]:
        """The healthy, routable replicas of a service."""
        return list(self.lookup(name).endpoints)

    def lookup(self, name: str) -> api_pb2.ResolveResponse:
        """The routable replicas of a service and its mesh addresses (node address, port)."""
        return self._unary("Resolve", api_pb2.ResolveRequest(name=name))

    def watch_resolve(self, name: str) -> Iterator[api_pb2.ResolveResponse]:
        """`lookup` now, then again after every change (no deadline; leave the loop to stop)."""
        yield from self._stream("WatchResolve", api_pb2.ResolveRequest(name=name), None)

    def watch_members(self) -> Iterator[api_pb2.Member]:
        """The answering node's gossip view: every member now, then each change (no deadline)."""
        yield from self._stream("WatchMembers", api_pb2.WatchMembersRequest(), None)

    def events(
        self,
        service: str = "",
        follow: bool = False,
        limit: int = 0,
        since: float = 0.0,
        kind: str = "",
        cause: str = "",
    ) -> Iterator[api_pb2.Event]:
        """Cluster events, oldest first (only `service`'s when set, at most `limit` past ones;
        since `since` unix seconds, of `kind` (or a prefix ending in "."), of `cause`).

        With `follow` the stream stays open for new events and has no deadline;
        closing the iterator (or leaving the loop) cancels the call.
        """
        request = api_pb2.StreamEventsRequest(
            service=service, follow=follow, limit=limit, since=since, kind=kind, cause=cause
        )
        yield from self._stream("StreamEvents", request, None if follow else self.timeout)

    def backup_chunks(self, timeout: float = 600.0) -> Iterator[bytes]:
        """etcd's snapshot of the cluster, chunk by chunk (admin); see `shoal cluster backup`."""
        for chunk in self._stream("Backup", api_pb2.BackupRequest(), timeout):
            yield chunk.data

    # -- security (admin tokens only) ----------------------------------------------------

    def create_token(
        self, role: str, description: str = "", expires_in: int = 0, csr: bytes = b""
    ) -> api_pb2.CreateTokenResponse:
        """A new client token of `role` (its secret is in this answer only); with a CSR, a
        client certificate for its key too."""
        request = api_pb2.CreateTokenRequest(
            role=role, description=description, expires_in=expires_in, csr=csr
        )
        return self._unary("CreateToken", request)

    def list_tokens(self) -> list[api_pb2.TokenInfo]:
        """Every client token (ids, roles, descriptions; never a secret), revoked ones too."""
        return list(self._unary("ListTokens", api_pb2.ListTokensRequest()).tokens)

    def revoke_token(self, token_id: str) -> api_pb2.TokenInfo:
        """Revoke a client token: every later call with it is UNAUTHENTICATED."""
        return self._unary("RevokeToken", api_pb2.RevokeTokenRequest(id=token_id)).info

    def rotate_join_token(self) -> str:
        """A new join token; the old one no longer admits anyone."""
        return self._unary("RotateJoinToken", api_pb2.RotateJoinTokenRequest()).token

    def join_token(self) -> str:
        """The current join token, to add a host."""
        return self._unary("GetJoinToken", api_pb2.GetJoinTokenRequest()).token

    # -- secrets and configs (admin tokens only; `shoal.v1.Secrets`) -------------------------

    def _objects(self, method: str, request: Any) -> Any:
        try:
            return getattr(secrets_pb2_grpc.SecretsStub(self._channel), method)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def put_object(
        self, kind: str, name: str, value: bytes, update: bool = False
    ) -> secrets_pb2.PutObjectResponse:
        """Create a secret or config (`kind`), or replace its value (`update`), which rolls
        the services that use it."""
        request = secrets_pb2.PutObjectRequest(kind=kind, name=name, value=value, update=update)
        return self._objects("PutObject", request)

    def list_objects(self, kind: str) -> list[secrets_pb2.ObjectInfo]:
        return list(self._objects("ListObjects", secrets_pb2.ListObjectsRequest(kind=kind)).objects)

    def remove_object(self, kind: str, name: str) -> None:
        self._objects("RemoveObject", secrets_pb2.RemoveObjectRequest(kind=kind, name=name))

    def usage(self, service: str = "", history: bool = False) -> api_pb2.UsageResponse:
        """Usage per task (CPU %, memory, network and block I/O, restarts) from every node;
        `service` "" for all, `history` with each task's recent samples (issue 14)."""
        return self._unary("TaskUsage", api_pb2.UsageRequest(service=service, history=history))

    # -- volume claims (admin tokens only; `shoal.v1.Volumes`) ----------------------------------

    def _volumes(self, method: str, request: Any) -> Any:
        try:
            return getattr(volumes_pb2_grpc.VolumesStub(self._channel), method)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def list_volumes(self, service: str = "") -> list[volumes_pb2.VolumeInfo]:
        return list(self._volumes("ListVolumes", volumes_pb2.ListVolumesRequest(service=service)).volumes)

    def remove_volume(self, name: str) -> volumes_pb2.RemoveVolumeResponse:
        """Refused while its slot has a task; else its node deletes the data, then the claim."""
        return self._volumes("RemoveVolume", volumes_pb2.RemoveVolumeRequest(name=name))

    # -- jobs (issue 18; `shoal.v1.Jobs`) ----------------------------------------------------

    def _jobs(self, method: str, request: Any) -> Any:
        try:
            return getattr(jobs_pb2_grpc.JobsStub(self._channel), method)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def list_jobs(self) -> list[jobs_pb2.JobInfo]:
        return list(self._jobs("ListJobs", jobs_pb2.ListJobsRequest()).jobs)

    def get_job(self, name: str) -> jobs_pb2.JobInfo:
        """A job's progress per index; `NotFound`, or `FailedPrecondition` for a service."""
        return self._jobs("GetJob", jobs_pb2.GetJobRequest(name=name))
