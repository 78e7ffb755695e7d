"""A real cluster on one machine: an embedded etcd and N daemons on 127.0.0.1..N.

Used by `shoal dev` and by the integration tests, so the tests run exactly what an
operator runs. Node i binds `127.0.0.i` with the same gRPC port on every node, as
real hosts would; all share the machine's Docker engine, and every container
carries the cluster's name, so `stop()` removes exactly this cluster's containers
and leaves no process behind.

Secure as any cluster: `start()` initialises the cluster in etcd (CA, join token,
first admin token) as `shoal cluster init` does, writes every node's certificate
into its data dir (a node of a dev cluster does not join: the CA is at hand), and
writes the admin's context file into the data dir (`context_file`, never the user's
home). `client()` calls with those credentials; no secret is ever on a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from node.dev import vipranges
from node.dev.freeports import free_port as free_port  # re-exported for the benches
from node.dev.freeports import free_port_on_all as free_port_on_all
from node.dev.freeports import free_port_pair as free_port_pair
from node.dev.leftovers import kernel_tables as kernel_tables
from node.dev.leftovers import remove_containers as remove_containers
from node.dev.leftovers import remove_kernel_tables, stop_proxy_workers
from node.model import errors
from node.model.keys import DEFAULT_PREFIX, Keys
from node.security import context, provision
from node.security.ca import CertError, Lifetimes
from node.security.cluster import ClusterSecurity
from node.security.etcd_pki import EtcdPki
from node.security.files import NodeFiles
from node.store.etcd import EtcdStore, EtcdTls
from node.wire.client import ShoalClient, ShoalError
from node.wire.rpc import ClientTls


class DevError(Exception):
    """The local cluster could not start; the message says why and where the logs are."""


def _wait(predicate: object, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    hint = f"; see {log}" if log else ""
    raise DevError(f"{what} not ready within {timeout:g}s{hint}")


_TLS_BY_ENDPOINT: dict[str, EtcdTls] = {}  # etcd processes started here with TLS: endpoint -> client TLS


def etcd_tls_for(endpoint: str) -> EtcdTls | None:
    """The client TLS of an etcd started by this process with `pki` (None: plaintext or unknown)."""
    return _TLS_BY_ENDPOINT.get(endpoint)


@dataclass
class EtcdProcess:
    data_dir: Path
    client_port: int = 2479
    peer_port: int = 2480
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)  # e.g. ["--quota-backend-bytes", "8589934592"]
    pki: EtcdPki | None = None  # TLS with client certificates (made on first start); None: plaintext

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def tls(self) -> EtcdTls | None:
        """What a client needs to talk to this etcd (its CA, a client certificate and key)."""
        return self.pki.tls() if self.pki is not None else None

    @property
    def client_flags(self) -> list[str]:
        """shoald's (and `shoal cluster init`'s, the simulation's) flags to reach this etcd."""
        return ["--etcd", self.endpoint, *(self.pki.client_flags() if self.pki is not None else [])]

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "etcd.log"

    def healthy(self) -> bool:
        context = None
        if self.pki is not None and self.pki.exists():
            context = ssl.create_default_context(cafile=str(self.pki.ca))
            context.load_cert_chain(self.pki.client(), self.pki.client_key())
        scheme = "https" if self.pki is not None else "http"
        try:
            with urllib.request.urlopen(
                f"{scheme}://{self.endpoint}/health", timeout=1, context=context
            ) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    def _taken(self) -> bool:
        """Something listens on the client port (another etcd, with TLS of another CA or none)."""
        try:
            with socket.create_connection((self.host, self.client_port), timeout=1):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 20.0) -> None:
        if self.healthy() or self._taken():
            raise DevError(
                f"something already answers as etcd on {self.endpoint}; choose another --etcd-port"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        scheme, tls_flags = "http", []
        if self.pki is not None:
            self.pki.make([self.host])
            scheme, tls_flags = "https", self.pki.server_flags()
        client = f"{scheme}://{self.host}:{self.client_port}"
        peer = f"{scheme}://{self.host}:{self.peer_port}"
        args = [
            "etcd", "--name", "shoal-dev", "--data-dir", str(self.data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"shoal-dev={peer}",
            "--auto-compaction-retention", "1", *tls_flags, *self.extra_args,
        ]  # fmt: skip
        try:
            log = self.log_path.open("ab")
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        except FileNotFoundError as exc:
            raise DevError(
                "etcd is not installed: apt-get install etcd-server (or run deploy/install.sh)"
            ) from exc
        proc = self.proc
        _wait(lambda: self.healthy() or proc.poll() is not None, timeout, "etcd", self.log_path)
        if self.proc.poll() is not None:
            raise DevError(f"etcd exited with status {self.proc.returncode}; see {self.log_path}")
        if self.pki is not None:
            _TLS_BY_ENDPOINT[self.endpoint] = self.pki.tls()

    def stop(self) -> None:
        _terminate(self.proc, 10.0)


@dataclass
class NodeProcess:
    index: int
    node_id: str
    address: str
    grpc_port: int
    data_dir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.node_id}.log"

    @property
    def context_file(self) -> Path:
        """The cluster's admin context file (`DevCluster.context_file`): to call this node."""
        return self.data_dir.parents[1] / "context.json"

    def start(self) -> None:
        log = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "node.daemon", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.proc.send_signal(sig)  # type: ignore[union-attr]
            self.proc.wait(30)  # type: ignore[union-attr]

    def stop(self) -> None:
        _terminate(self.proc, 15.0)


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class DevCluster:
    data_dir: Path
    nodes: int = 3
    grpc_port: int = 7070
    etcd_port: int = 2479
    metrics_port: int = 0  # /metrics of every node; 0: grpc_port + 1
    dashboard_port: int = 0  # the web dashboard of every node (HTTPS); 0: grpc_port + 2
    cluster: str = "dev"
    prefix: str = DEFAULT_PREFIX
    preset: str = "local"
    extra_args: list[str] = field(default_factory=list)
    cert_lifetime: float = 0.0  # s a node certificate is valid (0: shoald's default, 30 days)
    node_args: dict[int, list[str]] = field(default_factory=dict)  # node index -> its own extra flags
    simulate: int = 0  # simulated nodes to add (`node.dev.simcluster`, one process; they run nothing)
    sim_proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _tls: ClientTls | None = field(default=None, repr=False)
    vip_range: str = ""  # service names (issue 13): "" = a /24 of its own (node.dev.vipranges)
    addresses: dict[int, str] = field(default_factory=dict)  # node index -> its address instead of
    #   127.0.0.i (a test's veth, so a client in a network namespace reaches it as another host)
    proxy_workers: str = "1"  # per node (decision 76): the nodes share this host's cores, so not
    #   shoald's default, auto (one per core each); "0": the daemons serve the ports themselves

    @classmethod
    def on_free_ports(cls, data_dir: Path, nodes: int = 3, name: str = "t", **kwargs: Any) -> DevCluster:
        """A cluster whose gRPC, metrics and etcd ports are free on every node address
        (drawn outside the ephemeral range, `node.dev.freeports`) and whose name is unique
        (`<name><8 hex>`), so tests and benches never meet another cluster's."""
        addresses = kwargs.get("addresses", {})
        hosts = [addresses.get(i, f"127.0.0.{i}") for i in range(1, nodes + 1)]
        return cls(
            data_dir,
            nodes=nodes,
            grpc_port=free_port_on_all(hosts),
            metrics_port=free_port_on_all(hosts),  # never the same port twice in one process
            dashboard_port=free_port_on_all(hosts),
            etcd_port=free_port_pair(),
            cluster=f"{name}{uuid.uuid4().hex[:8]}",
            **kwargs,
        )

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 50:
            raise DevError(f"--nodes must be between 1 and 50, got {self.nodes}")
        self.data_dir = self.data_dir.resolve()
        self.vip_range = self.vip_range or vipranges.free_vip_range(self.cluster)
        self.etcd = EtcdProcess(
            self.data_dir / "etcd" / "data",
            self.etcd_port,
            self.etcd_port + 1,
            pki=EtcdPki(self.data_dir / "etcd" / "pki"),
        )
        self.members = [self._member(i) for i in range(1, self.nodes + 1)]

    def _member(self, i: int) -> NodeProcess:
        node_id, address = f"n{i}", self.addresses.get(i, f"127.0.0.{i}")
        data = self.data_dir / "nodes" / node_id
        args = [
            "--node-id", node_id, "--data-dir", str(data), "--address", address,
            "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port or self.grpc_port + 1),
            "--dashboard-port", str(self.dashboard_port or self.grpc_port + 2),
            *self.etcd.client_flags, "--etcd-prefix", self.prefix,
            "--cluster", self.cluster, "--preset", self.preset, "--label", f"dev.index={i}",
            "--vip-range", self.vip_range, "--proxy-workers", self.proxy_workers, *self.extra_args,
            *self.node_args.get(i, []),
        ]  # fmt: skip
        if self.cert_lifetime:
            args += ["--cert-lifetime", f"{self.cert_lifetime:g}"]
        return NodeProcess(i, node_id, address, self.grpc_port, data, args)

    @property
    def addr(self) -> str:
        return self.members[0].addr

    @property
    def endpoints(self) -> str:
        """Every node's gRPC address, comma-separated: the admin context's endpoints, so the
        CLI goes on working through the next node when the first is down."""
        return ",".join(m.addr for m in self.members)

    @property
    def context_file(self) -> Path:
        """The admin's context file (mode 0600): `SHOAL_CONTEXT_FILE=<this> shoal …`."""
        return self.data_dir / "context.json"

    @property
    def tls(self) -> ClientTls:
        """The admin's credentials (CA, client certificate and key, token)."""
        if self._tls is None:
            self._tls = context.resolve(env={}, path=self.context_file).tls()
        return self._tls

    def client(self, i: int = 1) -> ShoalClient:
        return ShoalClient(self.members[i - 1].addr, timeout=5.0, tls=self.tls)

    @property
    def lifetimes(self) -> Lifetimes:
        return Lifetimes(node=timedelta(seconds=self.cert_lifetime)) if self.cert_lifetime else Lifetimes()

    def provision(self) -> None:
        """Initialise the cluster's security in etcd (once) and give every node a certificate
        and the admin a context file; run with etcd up and before the daemons start."""
        try:
            asyncio.run(self._provision())
        except (CertError, ShoalError, OSError) as exc:
            raise DevError(f"cannot set up the cluster's certificates: {exc}") from exc
        self._tls = None

    async def _provision(self) -> None:
        store = EtcdStore([self.etcd.endpoint], tls=self.etcd.tls)
        await store.connect()
        try:
            security = ClusterSecurity(store, Keys(self.prefix), self.cluster, self.lifetimes)
            try:
                if not await security.initialised():
                    authority, secrets, admin = await security.initialise()
                    passphrase = secrets.ca_passphrase
                    context.save_context(
                        self.cluster,
                        provision.admin_context(self.endpoints, authority, admin),
                        self.context_file,
                    )
                else:
                    found = provision.read_passphrase([m.data_dir for m in self.members])
                    if found is None:
                        raise DevError(
                            f"etcd under {self.data_dir} holds a cluster whose nodes' passphrase is gone; "
                            f"remove {self.data_dir} to start afresh"
                        )
                    passphrase = found
                    authority = await security.load_ca(passphrase)
                    if not self._context_matches(authority.cert_pem):
                        admin_context = await provision.local_admin(security, passphrase, self.endpoints)
                        context.save_context(self.cluster, admin_context, self.context_file)
            except errors.ShoalError as exc:
                raise DevError(str(exc)) from exc
            for m in self.members:
                ips, dns = provision.split_address(m.address)
                provision.issue_node(
                    NodeFiles.of(m.data_dir), authority, passphrase, m.node_id, ips, dns, self.lifetimes
                )
        finally:
            await store.close()

    def _context_matches(self, ca_pem: bytes) -> bool:
        try:
            found = context.resolve(env={}, path=self.context_file)
        except context.MissingCredentials:
            return False
        return found.ca.encode() == ca_pem

    def start(self, timeout: float = 30.0) -> None:
        """Start etcd and the daemons; on any failure, `stop` what was started (and give
        back the VIP range claimed at construction) before raising."""
        try:
            (self.data_dir / "nodes").mkdir(parents=True, exist_ok=True)
            self.etcd.start()
            self.provision()
            for member in self.members:
                member.start()
            self.wait_ready(timeout)
            if self.simulate:
                self.start_simulation(self.simulate, timeout)
        except BaseException:
            self.stop()
            raise

    def add_node(self, args: list[str] | None = None, timeout: float = 30.0) -> NodeProcess:
        """Start one more daemon, node N+1 on 127.0.0.(N+1) with `args` as its own extra
        flags, as a host joining the cluster; return it once it is registered."""
        i = len(self.members) + 1
        if args:
            self.node_args[i] = list(args)
        member = self._member(i)
        self.members.append(member)
        self.nodes = len(self.members)
        self.provision()  # its certificate, from the same CA
        member.start()
        self.wait_ready(timeout)
        return member

    @property
    def sim_log_path(self) -> Path:
        return self.data_dir / "simcluster.log"

    def start_simulation(self, count: int, timeout: float = 30.0, args: list[str] | None = None) -> None:
        """Register `count` simulated nodes (`python -m node.dev.simcluster`, one process, one
        lease; `args` are its extra flags, e.g. `--cpu 4 --memory 8Gi`). They show in
        `node ls` marked SIMULATED, take tasks, and run and serve nothing."""
        cmd = [
            sys.executable, "-m", "node.dev.simcluster", *self.etcd.client_flags, "--prefix", self.prefix,
            "--nodes", str(count), *(args or []),
        ]  # fmt: skip
        log = self.sim_log_path.open("ab")
        self.sim_proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)

        def registered() -> bool:
            if self.sim_proc is not None and self.sim_proc.poll() is not None:
                raise DevError(f"the simulation exited ({self.sim_proc.returncode}); see {self.sim_log_path}")
            try:
                with self.client() as c:
                    return sum(n.simulated for n in c.list_nodes().nodes) >= count
            except ShoalError:
                return False

        _wait(registered, timeout, f"{count} simulated nodes", self.sim_log_path)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """All daemons registered and a leader elected."""

        def ready() -> bool:
            dead = [m for m in self.members if not m.alive()]
            if dead:
                raise DevError(f"shoald {dead[0].node_id} exited; see {dead[0].log_path}")
            try:
                with self.client() as c:
                    resp = c.list_nodes()
            except ShoalError:
                return False
            up = {n.id for n in resp.nodes if n.status == "ready"}
            return resp.epoch > 0 and up >= {m.node_id for m in self.members}

        _wait(ready, timeout, "the cluster", self.members[0].log_path)

    def stop(self) -> None:
        """Stop every daemon, remove this cluster's containers, stop etcd, give back the
        VIP range. etcd is stopped and the range given back even when a step before
        fails (Docker not answering, say): the error is raised after them."""
        with contextlib.ExitStack() as last:  # run in reverse: etcd, then the range
            last.callback(vipranges.release, self.vip_range)
            last.callback(self.etcd.stop)
            _terminate(self.sim_proc, 10.0)  # first: its lease is revoked, the simulated nodes vanish
            for member in self.members:
                if member.proc is not None and member.alive():
                    member.proc.terminate()
            for member in self.members:
                member.stop()
            for member in self.members:  # a graceful stop leaves them serving (decision 63)
                stop_proxy_workers(member.data_dir / "proxy")
            remove_containers(self.cluster)
            remove_kernel_tables(self.cluster, [m.node_id for m in self.members])  # decisions 74, 75


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
