"""The daemon's gRPC side put together: the client API, the peer API and the object
services (secrets, volumes, jobs) on one server, with the auth interceptor.

Split from `node.daemon.app`, which owns the order of the start and the stop; this
module only builds. A feature with a gRPC service of its own registers it in
`build_api`'s list (new services at the end).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health

from node.api import server as api_server
from node.api.admin import Signer
from node.api.gossip_transport import PeerServicer
from node.api.jobs import JobsServicer
from node.api.join import JoinHandler
from node.api.pools import PoolsServicer
from node.api.port_policy import PortPolicy
from node.api.secrets import SecretsServicer
from node.api.servicer import ShoalServicer
from node.api.taskio import PeerStubs, TaskIO
from node.api.usage import UsageBook
from node.api.volumes import VolumesServicer
from node.daemon.autoscaler import Autoscaler
from node.daemon.identity import NodeIdentity
from node.daemon.leadership import Leadership
from node.daemon.loadreport import LoadReporter
from node.daemon.membership import Membership
from node.daemon.metered import MeteredEtcdStore
from node.daemon.telemetry import Telemetry
from node.daemon.usage_meter import DockerEyes, UsageMeter
from node.dashboard import serve as dashboard
from node.dashboard.cluster import ClusterTraffic
from node.model.config import NodeConfig
from node.model.keys import Keys
from node.pb import (
    api_pb2_grpc,
    jobs_pb2_grpc,
    peer_pb2_grpc,
    pools_pb2_grpc,
    secrets_pb2_grpc,
    volumes_pb2_grpc,
)
from node.proxy.mesh import Mesh
from node.runtime.docker import DockerRuntime
from node.runtime.docker_logs import DockerStreams
from node.security.auth import AuthInterceptor, Policy
from node.security.credentials import EtcdCredentials
from node.security.files import NodeFiles, read_secret
from node.security.sealing import Sealer
from node.store.session import Session
from node.telemetry.events import EventLog


class Parts(Protocol):
    """What `build_api` reads of the daemon (`node.daemon.app.Daemon`)."""

    config: NodeConfig
    keys: Keys
    store: MeteredEtcdStore
    identity: NodeIdentity
    credentials: EtcdCredentials
    runtime: DockerRuntime
    events: EventLog
    telemetry: Telemetry
    membership: Membership
    mesh: Mesh

    def restarts(self, task_id: str) -> int: ...


@dataclass
class Api:
    servicer: ShoalServicer
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    traffic: ClusterTraffic  # issue 14: the proxies' traffic per service, for the dashboards


def build_api(d: Parts) -> Api:
    """Every servicer wired to the daemon's store, identity and telemetry; the server is
    bound (OSError when the port is taken) but not started."""
    c = d.config
    signer = Signer(d.identity.security, d.identity.passphrase, d.identity.lifetimes, d.credentials)
    servicer = ShoalServicer(d.store, d.keys, c.node_id, d.membership)
    servicer.writer.history_limit = c.history_limit
    servicer.signer = signer
    servicer.writer.objects.sealer = Sealer(d.identity.passphrase)  # issue 13: secrets sealed
    servicer.writer.ports = PortPolicy.of(
        c.grpc_port,
        c.metrics_port,
        c.etcd,
        (
            *c.reserved_ports,
            *([c.dashboard_port] if c.dashboard_port else []),
            *[p for p in (c.ingress_http_port, c.ingress_https_port) if p],  # issue 17: ingress
        ),
    )
    joins = JoinHandler(d.store, d.keys, c.node_id, signer, c.join_token_uses)
    peers = PeerStubs(d.identity.client_tls)
    d.identity.on_renewed(peers.set_tls)
    taskio = TaskIO(d.store, d.keys, c.node_id, DockerStreams(d.runtime.url), peers, d.events.emit)
    taskio.cluster = c.cluster  # its containers carry it: `FindTasks` reads only this cluster's
    servicer.taskio = taskio
    servicer.emit = d.events.emit  # issue 14: apply, scale and rollback events
    servicer.settled = d.mesh.settled  # decision 76: a lookup answers once this node's proxy serves it
    peer_servicer = PeerServicer(d.membership.list, joins.join)
    peer_servicer.taskio = taskio
    usage = UsageBook(c.node_id, d.telemetry.usage, d.restarts, d.store, d.keys, peers)
    servicer.usage = peer_servicer.usage = usage  # issue 14: usage per task
    traffic = ClusterTraffic(dashboard.traffic_of(d.mesh.stats), c.node_id, d.store, d.keys, peers)
    peer_servicer.traffic_source = traffic.local  # issue 14: Peer/NodeTraffic
    server, health = api_server.build(
        [
            (api_pb2_grpc.add_ShoalServicer_to_server, servicer),
            (
                secrets_pb2_grpc.add_SecretsServicer_to_server,
                SecretsServicer(servicer.writer, d.events),
            ),
            (peer_pb2_grpc.add_PeerServicer_to_server, peer_servicer),
            (
                volumes_pb2_grpc.add_VolumesServicer_to_server,
                VolumesServicer(d.store, d.keys, d.events),
            ),
            (
                jobs_pb2_grpc.add_JobsServicer_to_server,
                JobsServicer(d.store, d.keys),
            ),  # issue 18
            (
                pools_pb2_grpc.add_PoolsServicer_to_server,
                PoolsServicer(d.store, d.keys, d.events),
            ),  # issue 15: node pools
        ],
        c.address,
        c.grpc_port,
        d.identity.server_tls,
        [
            d.telemetry.api,  # first: refused calls are counted too
            AuthInterceptor(d.credentials, Policy(c.cluster, max_streams_per_token=c.max_streams_per_token)),
        ],
    )
    return Api(servicer, server, health, traffic)


def metrics_guard(config: NodeConfig) -> tuple[Path | None, str]:
    """(identity file for TLS, bearer token) of /metrics, as configured; OSError when unreadable."""
    identity = NodeFiles.of(config.data_dir).identity if config.metrics_tls else None
    token = read_secret(Path(config.metrics_token_file)).decode().strip() if config.metrics_token_file else ""
    if config.metrics_token_file and not token:
        raise OSError(f"{config.metrics_token_file} is empty: put the /metrics bearer token in it")
    return identity, token


def autoscaling(
    d: Parts, leadership: Leadership, servicer: ShoalServicer, mesh: Mesh, session: Session
) -> LoadReporter:
    """Issue 15 (decision 58): this node's load record publisher (run it), and the
    autoscaler as a companion of its leadership (run while it leads)."""
    c = d.config
    autoscaler = Autoscaler(d.store, d.keys, c.node_id, servicer.writer, d.events.emit)
    leadership.companions.append(autoscaler.run)
    reporter = LoadReporter(d.store, d.keys, c.node_id, mesh.stats, d.telemetry.usage, lambda: session.lease)
    mesh.cold.on_hold.append(reporter.wake)  # item 2: a request held for a service at zero
    return reporter


def usage_meter(config: NodeConfig, store: MeteredEtcdStore, keys: Keys) -> UsageMeter:
    """Issue 15 item 4 (decision 67): this node's usage meter (run it); `collector()` serves
    its counters on /metrics."""
    eyes = DockerEyes(config.docker_host or None, config.cluster, config.node_id)
    meter = UsageMeter(store, keys, config.node_id, eyes, config.usage_interval)
    meter.rollup_after, meter.keep_days = config.usage_rollup_after, config.usage_keep_days
    return meter
