"""The daemon's configuration: typed, frozen, documented; from flags, env and TOML.

Precedence, highest first: command-line flags, environment (`SHOAL_<FIELD>`, e.g.
`SHOAL_GRPC_PORT=7070`, `SHOAL_ETCD=10.0.0.5:2379,10.0.0.6:2379`), the TOML file
(`--config`, or `SHOAL_CONFIG`), then the preset (`local` or `lan`).

The node id is persisted in `<data_dir>/node-id` on first start, so a node keeps
its identity (and its containers) across restarts.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from node.model.atomic import write_atomic
from node.model.keys import DEFAULT_PREFIX
from node.model.spec import parse_memory

NODE_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
LABEL_KEY = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?")


class ConfigError(ValueError):
    """A setting is wrong; the message names it and says what is allowed."""


@dataclass(frozen=True)
class Preset:
    """Timings that go together. `local`: fast, for tests and one machine; `lan`: production."""

    lease_ttl: int  # s; the node lease. A node whose daemon is gone this long is lost: its tasks
    #   move. Longer rides out daemon restarts without moving tasks; shorter reacts faster
    #   (gossip, not this lease, is meant to detect dead hosts quickly).
    leader_ttl: int  # s; the leader key's own lease. A dead leader is replaced after about this.
    down_grace: float  # s a node must stay dead to gossip before its tasks move. Rides out a
    #   daemon restart (the restarted daemon refutes its death) without moving tasks; the
    #   proxy stops routing to a dead node at once regardless.
    agent_resync: float  # s; the agent re-checks its containers at least this often.
    leader_resync: float  # s; the leader re-plans at least this often even without changes.


PRESETS = {
    "local": Preset(lease_ttl=10, leader_ttl=3, down_grace=3.0, agent_resync=1.0, leader_resync=2.0),
    "lan": Preset(lease_ttl=15, leader_ttl=5, down_grace=3.0, agent_resync=2.0, leader_resync=5.0),
}


MAX_PROXY_WORKERS = 256
AUTO = "auto"


def auto_workers() -> int:
    """`proxy_workers = "auto"`: one worker per core this process may run on (its CPU
    affinity, as a cgroup's cpuset or `taskset` set it), at least 1."""
    return max(1, len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class NodeConfig:
    node_id: str = ""  # empty: read from data_dir/node-id, or made up on first start
    data_dir: Path = Path("/var/lib/shoal")
    cluster: str = "shoal"  # containers carry it, so clusters sharing a Docker engine never mix
    address: str = "127.0.0.1"  # advertise address: peers and clients reach this node here
    grpc_port: int = 7070
    etcd: tuple[str, ...] = ("127.0.0.1:2379",)
    etcd_prefix: str = DEFAULT_PREFIX
    etcd_timeout: float = 5.0  # s per etcd call; an unreachable etcd fails calls after it
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu: float = 0.0  # cores offered to tasks; 0 = detect from the host (less reserve_cpu)
    memory: int = 0  # bytes offered to tasks ("8Gi" in TOML/env); 0 = detect (less reserve_memory)
    reserve_cpu: float = 0.0  # cores kept for the system when cpu is detected: shoald, dockerd,
    #   sshd. More leaves less for tasks; none lets tasks starve the host under full load.
    reserve_memory: int = 256 * 2**20  # bytes kept for the system when memory is detected; the
    #   scheduler never reserves it for tasks (Nomad's `reserved`, kubelet's system-reserved)
    publish_address: str = ""  # where container ports are published; empty = `address`
    preset: str = "lan"
    lease_ttl: int = 0  # 0 = from the preset
    leader_ttl: int = 0  # 0 = from the preset
    down_grace: float = 0.0  # s a node stays dead to gossip before its tasks move; 0 = from the preset
    stop_timeout: float = 10.0  # s between SIGTERM and SIGKILL when stopping a container
    shutdown_grace: float = 10.0  # s from the daemon's SIGTERM until it has exited, whatever etcd or
    #   Docker do: leadership resigned, tasks cancelled, server drained; what is still running
    #   then is logged by name and the process exits anyway. Keep it below systemd's
    #   TimeoutStopSec (20 s in the unit), so the daemon, not SIGKILL, ends itself
    drain: float = 2.0  # s between withdrawing a replica from every proxy and stopping it
    #   (a service's `update.drain` overrides it): in-flight requests finish, new ones go elsewhere
    docker_host: str = ""  # the Docker engine's address (unix:///run/docker.sock, tcp://h:p);
    #   empty = DOCKER_HOST from the environment, else the local socket
    engine_timeout: float = 15.0  # s the container engine may go unanswered (pings every second)
    #   before this node withdraws its endpoints and reports itself not ready, so its tasks move
    #   to other nodes; it is ready again at the first answer. Shorter moves tasks sooner, longer
    #   rides out a dockerd restart (a few seconds) without moving anything
    pull_timeout: float = 600.0  # s an image pull may take before it is abandoned and its task
    #   reported failed (retried with back-off); pulls run apart and never delay other tasks
    task_history_limit: int = 5  # exited containers kept per slot (service and slot) on this node,
    #   for `shoal task logs` of a replaced or restarted task (decision 71); older ones are
    #   removed. Each keeps its log file and writable layer on disk; 0: removed at once
    metrics_port: int = 7071  # Prometheus `/metrics` on `address`; 0 = off
    dashboard_port: int = 0  # the web dashboard (HTTPS, this node's certificate, login with a
    #   client token) on `address`; 0 = off. Off by default: one more port open is the
    #   operator's choice (7072, next to metrics, is the documented one); `shoal dev` turns it on
    reserved_ports: tuple[int, ...] = ()  # more ports no service may publish, besides shoal's own
    #   (gRPC, metrics, etcd's), e.g. an agent's or a database's on these hosts
    metrics_tls: bool = False  # serve /metrics over TLS with this node's certificate (scrapers
    #   verify it with the cluster CA); off by default so a plain Prometheus scrape works
    metrics_token_file: str = ""  # a file (0600) holding a bearer token /metrics then requires
    #   (`Authorization: Bearer <token>`); empty = none. Off by default: the series hold
    #   service names, ports and counts, no secret (docs/security.md)
    wait_for_etcd: bool = False  # keep retrying at start instead of exiting
    join: tuple[str, ...] = ()  # gossip seeds (host:port of peers); the etcd registry is used too
    leave_on_stop: bool = False  # on SIGTERM, tell peers this node left (its tasks move at once);
    #   off by default so that a restart re-adopts its containers without moving them
    restart_grace: float = 0.0  # s a SIGTERM'd node's tasks stay put while it restarts (a
    #   `restarting/<node>` mark on a lease that long); 0 = the lease TTL; -1 = none
    log_format: str = "text"  # text | json
    log_level: str = "info"
    # -- security (docs/operations.md, "Security") ------------------------------------------
    join_token: str = field(default="", repr=False)  # SHOAL-1-…: joins a secured cluster on first
    #   start (gets a node certificate). A secret: give it as SHOAL_JOIN_TOKEN or in a file
    #   (join_token_file), not as a flag, which every user of the host sees in `ps`
    join_token_file: str = ""  # a file holding the join token (mode 0600)
    max_streams_per_token: int = 32  # server streams (watch, events --follow) one client token
    #   may hold open on this node; RESOURCE_EXHAUSTED beyond (each holds etcd watches)
    join_token_uses: int = 100  # hosts one join token admits through this member (each node id
    #   once, recorded in etcd `joins/`); then rotate it. Bounds what a leaked token is worth
    cert_lifetime: float = 30 * 86400.0  # s a node certificate is valid; the daemon renews it at
    #   2/3 of that without a restart. Shorter limits what a stolen node key is worth; longer
    #   rides out a longer etcd outage (renewal reads the CA key from etcd)
    etcd_ca: str = ""  # path of the CA certificate that signed etcd's (PEM): turns on TLS to etcd
    etcd_cert: str = ""  # path of this node's client certificate for etcd (PEM), with etcd_key
    etcd_key: str = ""  # path of its key (PEM, mode 0600)
    etcd_server_name: str = ""  # name to check every etcd member's certificate for; unset: the
    #   endpoint's, or with several endpoints the first one's host (one channel checks one name)
    # -- etcd stays bounded (docs/operations.md, "etcd's size") ----------------------------
    etcd_retention: float = 600.0  # s of etcd history the leader keeps: it compacts to the
    #   revision of this long ago. Longer lets a watcher cut off longer resume without a
    #   re-list; shorter keeps etcd smaller under a high write rate. 0: never compact
    etcd_defrag_ratio: float = 0.5  # the leader defragments a member (one at a time) when
    #   less than this fraction of its database file is in use (and the file is etcd_defrag_min
    #   or more). A defragmentation stalls that member for a moment; 0: never
    etcd_defrag_min: int = 64 * 2**20  # bytes ("64Mi"): smaller files are never defragmented
    history_limit: int = 10  # versions of a service kept in history/ (rollback targets)
    reap_after: float = 86400.0  # s a node must be gone (no registry entry) before the leader
    #   drops its down mark, and gossip forgets it; revoked or expired
    #   client tokens are kept this long after, so callers still learn why they fail
    # -- durable events (issue 14; node.telemetry.events, leader.upkeep trims) ----------------
    events_max: int = 5000  # events kept in etcd (all nodes together); the oldest go first
    events_max_age: float = 86400.0  # s an event is kept at most; 0: by count only

    # -- limits of the routing mesh (node.proxy.limits; docs/operations.md) -----------------
    # A published port takes connections from anyone who reaches the node, before any
    # authentication, on the event loop that also keeps the node's lease and gossip.
    proxy_max_head_bytes: int = 64 * 1024  # request line and headers; over: 431 and close
    proxy_max_url_bytes: int = 8 * 1024  # the request target; over: 414 and close
    proxy_max_headers: int = 100  # header lines of a request; over: 431 and close
    proxy_head_timeout: float = 10.0  # s for a whole request head, from its first byte or the
    #   accept; over: 408 and close (slow loris)
    proxy_body_timeout: float = 60.0  # s without a byte of a request body; over: 408 and close
    proxy_max_connections: int = 10_000  # client connections on all published ports of the node
    #   together (two file descriptors each); more are closed at once; 0 = no bound
    proxy_tcp_idle_timeout: float = 3600.0  # s without a byte either way on a tcp port: closed
    proxy_tunnel_idle: float = 3600.0  # s without a byte either way in an upgraded (WebSocket) tunnel
    # issue 17, items 4-6 (node.proxy.direct, node.proxy.workers; docs/operations.md)
    proxy_direct: bool = True  # reach this node's replicas by container address, not through
    #   their published port (docker-proxy); only where the container network is on-link
    proxy_workers: int = field(default_factory=auto_workers)  # processes serving the
    #   published ports (SO_REUSEPORT), which keep serving while the daemon is down (kill -9,
    #   restart, upgrade) and are adopted when it is back. "auto" (the default, decision 76):
    #   one per usable core, which spreads the load; 0: the daemon's own event loop serves them
    proxy_nft: str = "nft"  # the nft program for `fast_path: kernel` ports (decision 75): a name
    #   on PATH or a path; "off": never. Missing, or refusing the table: those ports are served
    #   by the userland mesh as the others (one warning, a `proxy.kernel_fallback` event)

    # -- the shared HTTP(S) entrance (issue 17; node.proxy.ingress, docs/ingress.md) ------------
    ingress_http_port: int = 0  # routes services' `ingress` rules by Host and path on `address`;
    #   0 = off. Off by default: 80 is the documented port on a host (binding it needs root or
    #   CAP_NET_BIND_SERVICE), another one in dev. No service may publish it
    ingress_https_port: int = 0  # the same behind TLS (certificates from secrets, else issued by
    #   the cluster CA), SNI per host; 0 = off; 443 is the documented port

    # -- service names (issue 13; node.proxy.vips, docs/names.md) ---------------------------
    names: bool = True  # run the name server and the VIP listeners for this host's containers
    vip_range: str = "10.213.0.0/16"  # the services' virtual addresses; the same on every node.
    #   The whole range is made local on the host (`ip route replace local <range> dev lo`);
    #   its first address is the name server's. Must not overlap a network the hosts use
    vip_kernel: bool = True  # decision 74: containers' connections to a VIP go straight to its
    #   replicas by an nftables DNAT rule (table `shoal_vip_<cluster>_<node>`) when they all run
    #   on this host; needs `nft` and br_netfilter, else (or false) the VIP listeners serve all

    # -- usage metering (issue 15 item 4; node.daemon.usage_meter, docs/usage.md) -----------
    usage_interval: int = 60  # s per metered interval; divides a day (60, 30, 2, ...)
    usage_rollup_after: float = 3600.0  # s after which the leader rolls raw intervals into day totals
    usage_keep_days: int = 400  # days of day totals kept; older ones are deleted

    @property
    def timings(self) -> Preset:
        base = PRESETS[self.preset]
        return replace(
            base,
            lease_ttl=self.lease_ttl or base.lease_ttl,
            leader_ttl=self.leader_ttl or base.leader_ttl,
            down_grace=self.down_grace or base.down_grace,
        )

    @property
    def publish_to(self) -> str:
        return self.publish_address or self.address


def _coerce(name: str, value: Any) -> Any:
    kinds = {f.name: f.type for f in fields(NodeConfig)}
    kind = str(kinds[name])
    try:
        if kind in ("int", "float") and isinstance(value, bool):
            raise ValueError("expected a number, not true/false")
        if (
            kind == "int"
            and name in ("memory", "reserve_memory", "etcd_defrag_min")
            and isinstance(value, str)
        ):
            return parse_memory(value)
        if name == "proxy_workers":
            return _workers(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("expected a whole number")
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
                raise ValueError("expected true or false (also yes/no, on/off, 1/0)")
            return str(value).lower() in ("1", "true", "yes", "on")
        if kind == "Path":
            return Path(value)
        if name == "reserved_ports":
            items = value.split(",") if isinstance(value, str) else list(value)
            ports = tuple(int(str(p).strip()) for p in items if str(p).strip())
            if any(not 1 <= p <= 65535 for p in ports):
                raise ValueError("every port must be between 1 and 65535")
            return ports
        if name in ("etcd", "join"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(e.strip() for e in items if e.strip())
        if name == "labels":
            if isinstance(value, (str, list, tuple)):
                return parse_labels(value)
            return parse_labels([f"{k}={v}" for k, v in dict(value).items()])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot use {value!r}: {exc}") from exc
    return str(value)


def _workers(value: Any) -> int:
    """`proxy_workers`: "auto" (one per core) or a whole number (bounds: `validate`)."""
    text = str(value).strip().lower()
    if text == AUTO:
        return auto_workers()
    if isinstance(value, bool) or not re.fullmatch(r"-?\d+", text):
        raise ValueError("expected auto (one worker per core) or a whole number of worker processes")
    return int(text)


def parse_labels(items: str | list[str] | tuple[str, ...]) -> dict[str, str]:
    parts = items.split(",") if isinstance(items, str) else list(items)
    out = {}
    for part in (p.strip() for p in parts):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not LABEL_KEY.fullmatch(key):
            raise ConfigError(f"labels: {part!r} is not key=value (key: letters, digits, '.', '_', '-')")
        out[key] = value
    return out


def load(flags: Mapping[str, Any], env: Mapping[str, str], config_file: str | None = None) -> NodeConfig:
    names = {f.name for f in fields(NodeConfig)}
    merged: dict[str, Any] = {}
    path = config_file or env.get("SHOAL_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
        merged.update(data)
    for name in names:
        if f"SHOAL_{name.upper()}" in env:
            merged[name] = env[f"SHOAL_{name.upper()}"]
    merged.update({k: v for k, v in flags.items() if v is not None and k in names})
    config = NodeConfig(**{k: _coerce(k, v) for k, v in merged.items()})
    return validate(config)


_PROXY_BOUNDS = (
    ("proxy_max_head_bytes", 1024, 1024 * 1024),
    ("proxy_max_url_bytes", 256, 1024 * 1024),
    ("proxy_max_headers", 8, 10_000),
    ("proxy_head_timeout", 0.1, 3600),
    ("proxy_body_timeout", 0.1, 86400),
    ("proxy_max_connections", 0, 1_000_000),
    ("proxy_tcp_idle_timeout", 0.1, 7 * 86400),
    ("proxy_tunnel_idle", 0.1, 7 * 86400),
)


def vip_network(text: str) -> ipaddress.IPv4Network:
    """The setting `vip_range` checked: an IPv4 network of /8 to /26 (48 VIPs at least)."""
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"vip_range: {text!r} is not an IPv4 network like 10.213.0.0/16: {exc}") from None
    if not 8 <= net.prefixlen <= 26:
        raise ConfigError(f"vip_range: {text} must be a /8 to /26 network, with room for the services")
    return net


def validate(c: NodeConfig) -> NodeConfig:
    if c.preset not in PRESETS:
        raise ConfigError(f"preset: {c.preset!r} is not one of {', '.join(PRESETS)}")
    if not 1 <= c.grpc_port <= 65535:
        raise ConfigError(f"grpc_port: {c.grpc_port} is not a port (1-65535)")
    if not 0 <= c.metrics_port <= 65535 or c.metrics_port == c.grpc_port:
        raise ConfigError(f"metrics_port: {c.metrics_port} must be a port other than grpc_port, or 0 (off)")
    if not 0 <= c.dashboard_port <= 65535 or (
        c.dashboard_port and c.dashboard_port in (c.grpc_port, c.metrics_port)
    ):
        raise ConfigError(
            f"dashboard_port: {c.dashboard_port} must be a port other than grpc_port and "
            "metrics_port, or 0 (off)"
        )
    own = {"grpc_port": c.grpc_port, "metrics_port": c.metrics_port, "dashboard_port": c.dashboard_port}
    for name in ("ingress_http_port", "ingress_https_port"):
        port = getattr(c, name)
        taken = [n for n, p in own.items() if p and p == port]
        if not 0 <= port <= 65535 or taken:
            why = f" (also {taken[0]})" if taken else ""
            raise ConfigError(f"{name}: {port} must be a port of its own{why}, or 0 (off)")
        own[name] = port
    if not 0 <= c.drain <= 3600:
        raise ConfigError(f"drain: {c.drain} must be between 0 and 3600 seconds")
    if not 1 <= c.engine_timeout <= 3600:
        raise ConfigError(f"engine_timeout: {c.engine_timeout:g} must be between 1 and 3600 seconds")
    if not 1 <= c.pull_timeout <= 86400:
        raise ConfigError(f"pull_timeout: {c.pull_timeout:g} must be between 1 and 86400 seconds")
    if not 0 <= c.task_history_limit <= 100:
        raise ConfigError(
            f"task_history_limit: {c.task_history_limit} must be between 0 (remove at once) "
            "and 100 containers"
        )
    if c.docker_host and "://" not in c.docker_host:
        raise ConfigError(
            f"docker_host: {c.docker_host!r} needs a scheme: unix:///path/docker.sock or tcp://host:port"
        )
    if c.node_id and not NODE_ID.fullmatch(c.node_id):
        raise ConfigError(f"node_id: {c.node_id!r} must be 1-63 of a-z, 0-9, '-'")
    if not NODE_ID.fullmatch(c.cluster):
        raise ConfigError(f"cluster: {c.cluster!r} must be 1-63 of a-z, 0-9, '-'")
    if not c.etcd:
        raise ConfigError("etcd: at least one endpoint (host:port) is needed")
    for endpoint in c.etcd:
        host, _, port = endpoint.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()):
            raise ConfigError(f"etcd: {endpoint!r} is not host:port")
    if c.names:
        vip_network(c.vip_range)
    if c.log_format not in ("text", "json"):
        raise ConfigError(f"log_format: {c.log_format!r} is not text or json")
    if c.cpu < 0 or c.reserve_cpu < 0:
        raise ConfigError(f"cpu, reserve_cpu: {c.cpu}, {c.reserve_cpu} must not be negative (cores)")
    if c.memory < 0 or c.reserve_memory < 0:
        raise ConfigError(f"memory, reserve_memory: {c.memory}, {c.reserve_memory} must not be negative")
    if not 1 <= c.shutdown_grace <= 3600:
        raise ConfigError(f"shutdown_grace: {c.shutdown_grace:g} must be between 1 and 3600 seconds")
    if not (c.restart_grace == -1 or 0 <= c.restart_grace <= 3600):
        raise ConfigError(f"restart_grace: {c.restart_grace:g} must be -1 (none) or between 0 and 3600 s")
    if not 0 <= c.down_grace <= 3600:
        raise ConfigError(f"down_grace: {c.down_grace} must be between 0 (the preset's) and 3600 seconds")
    for name in ("lease_ttl", "leader_ttl"):
        ttl = getattr(c, name)
        if ttl and not 2 <= ttl <= 300:
            raise ConfigError(f"{name}: {ttl} must be between 2 and 300 seconds")
    if not 1 <= c.max_streams_per_token <= 10_000:
        raise ConfigError(f"max_streams_per_token: {c.max_streams_per_token} must be between 1 and 10000")
    if not 1 <= c.join_token_uses <= 10_000:
        raise ConfigError(f"join_token_uses: {c.join_token_uses} must be between 1 and 10000")
    if c.join_token and c.join_token_file:
        raise ConfigError("join_token, join_token_file: give the join token one way, not both")
    if not 10 <= c.cert_lifetime <= 5 * 365 * 86400:
        raise ConfigError(f"cert_lifetime: {c.cert_lifetime:g} must be between 10 seconds and 5 years")
    for name, low, high in _PROXY_BOUNDS:
        value = getattr(c, name)
        if not low <= value <= high:
            raise ConfigError(f"{name}: {value:g} must be between {low:g} and {high:g}")
    if not 0 <= c.proxy_workers <= MAX_PROXY_WORKERS:
        raise ConfigError(
            f"proxy_workers: {c.proxy_workers} must be auto (one per core), 0 (the daemon serves the "
            f"published ports itself) or up to {MAX_PROXY_WORKERS} worker processes"
        )
    if not (c.etcd_retention == 0 or 60 <= c.etcd_retention <= 7 * 86400):
        raise ConfigError(f"etcd_retention: {c.etcd_retention:g} must be 0 (off) or 60 s to 7 days")
    if not 0 <= c.etcd_defrag_ratio < 1:
        raise ConfigError(f"etcd_defrag_ratio: {c.etcd_defrag_ratio:g} must be at least 0 and below 1")
    if c.etcd_defrag_min < 0:
        raise ConfigError(f"etcd_defrag_min: {c.etcd_defrag_min} must not be negative")
    if not 1 <= c.history_limit <= 1000:
        raise ConfigError(f"history_limit: {c.history_limit} must be between 1 and 1000 versions")
    if not 600 <= c.reap_after <= 365 * 86400:
        raise ConfigError(f"reap_after: {c.reap_after:g} must be between 600 seconds and a year")
    if not 100 <= c.events_max <= 1_000_000:
        raise ConfigError(f"events_max: {c.events_max} must be between 100 and 1000000 events")
    if c.events_max_age != 0 and not 60 <= c.events_max_age <= 365 * 86400:
        raise ConfigError(f"events_max_age: {c.events_max_age:g} must be 0 (no limit) or 60 s to a year")
    if c.usage_interval < 1 or 86400 % c.usage_interval:
        raise ConfigError(
            f"usage_interval: {c.usage_interval} must be whole seconds dividing a day (60, 30, 2, ...)"
        )
    if not max(2.0 * c.usage_interval, 4.0) <= c.usage_rollup_after <= 7 * 86400:
        raise ConfigError(
            f"usage_rollup_after: {c.usage_rollup_after:g} must be 2 intervals (4 s at least) to 7 days"
        )
    if not 1 <= c.usage_keep_days <= 3650:
        raise ConfigError(f"usage_keep_days: {c.usage_keep_days} must be between 1 and 3650 days")
    if (c.etcd_cert or c.etcd_key) and not (c.etcd_cert and c.etcd_key and c.etcd_ca):
        raise ConfigError(
            "etcd_cert, etcd_key: a client certificate for etcd needs all of etcd_ca, etcd_cert and etcd_key"
        )
    return c


def resolve_node_id(c: NodeConfig) -> NodeConfig:
    """Read or persist the node id in the data dir; refuse a data dir of another node."""
    c.data_dir.mkdir(parents=True, exist_ok=True)
    path = c.data_dir / "node-id"
    stored = path.read_text().strip() if path.exists() else ""
    if path.exists() and not stored:  # a power loss under an older shoal's plain write
        raise ConfigError(
            f"node_id: {path} is empty; write this node's id into it (`shoal node ls` on a member "
            "lists them), or remove it to start as a new node"
        )
    if stored and c.node_id and stored != c.node_id:
        raise ConfigError(f"node_id: {c.data_dir} belongs to node {stored!r}, not {c.node_id!r}")
    node_id = stored or c.node_id or f"{_host_part()}-{secrets.token_hex(2)}"
    if not stored:  # whole or not at all (a plain write could be left empty by a power loss)
        write_atomic(path, (node_id + "\n").encode(), 0o644)
    return replace(c, node_id=node_id)


def _host_part() -> str:
    host = re.sub(r"[^a-z0-9-]", "-", socket.gethostname().lower()).strip("-")
    return host[:50] or "node"


def detect_capacity(c: NodeConfig) -> NodeConfig:
    """Fill in what the node offers to tasks: `cpu`/`memory` as configured, else the host's
    cores and memory less `reserve_cpu`/`reserve_memory` (never below zero)."""
    cpu = c.cpu or max(0.0, float(len(os.sched_getaffinity(0))) - c.reserve_cpu)
    memory = c.memory
    if not memory:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = max(0, int(line.split()[1]) * 1024 - c.reserve_memory)
                    break
    return replace(c, cpu=cpu, memory=memory)
