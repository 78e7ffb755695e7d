"""Several hosts on one machine: one network namespace per node, on a bridge, made and removed here.

On one machine a daemon's connections to 127.0.0.1 leave *from* 127.0.0.1, so iptables
rules on a node's own loopback address only cut one direction. A network namespace
per node gives every node its own stack, like a real host, and a cut of its veth
link is total and symmetric.

    host netns:  bridge shb-<id>  10.216.<k>.1/24   etcd, dockerd + docker-proxy
                   |-- veth shv-<id>-<i>  ==  shp-<id>-<i> in netns sh-<id>-n<i>
                                              10.216.<k>.<10+i>/24, lo up,
                                              default route via 10.216.<k>.1
                                              shoald --address 10.216.<k>.<10+i>

Each shoald runs inside its namespace (`ip netns exec`, which execs: the Popen's pid
is the daemon's), reaches etcd on the bridge address and Docker by its socket (a file,
so reachable from any netns); containers are published on the bridge address, where
dockerd's proxy listens (`--publish-address`).

`HostNet.cut(i)` sets the host end of node i's veth down: nothing goes in or out of
its namespace, while its processes, routes and addresses stay as they were;
`heal(i)` sets it up again. `separate(i, others)` drops only the traffic between
node i and those others (iptables rules inside node i's netns), so node i still
reaches etcd: alive in etcd terms, dead to its peers; `rejoin` removes the rules.

With `br_netfilter` loaded (Docker loads it) bridged frames go through iptables'
FORWARD chain, whose policy Docker sets to DROP, so `setup()` inserts one ACCEPT
rule for traffic within the bridge, tagged with the id. `teardown()` removes
everything made here (also rules left by `separate`), even after a partial setup,
and raises only after it has tried every step.

Every name carries a random id (`shb-<id>`, `sh-<id>-n<i>`, `shv-<id>-<i>`, the
iptables comment `shoal-netns-<id>`), so concurrent runs never touch each other's.
Traffic stays between the host's bridge address and the namespaces: the only route
out of a namespace is the bridge, and FORWARD lets frames through only within it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from node.dev.devcluster import DevCluster, NodeProcess

SUPERNET = ipaddress.IPv4Network("10.216.0.0/16")
LOCK = Path("/run/lock/shoal-netns.lock")
GRPC_PORT = 7070  # every node has its own stack, so the same port everywhere, as on real hosts

# Prints the targets (host:port) that accept a TCP connection within 1 s.
_PROBE = """
import socket, sys
ok = []
for target in sys.argv[1:]:
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
        ok.append(target)
    except OSError:
        pass
print(" ".join(ok))
"""


class NetnsError(Exception):
    """A namespace, link or rule could not be made or removed; the message has the command."""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network on this host's interfaces and routes."""
    out = []
    for argv in (("ip", "-4", "-o", "addr", "show"), ("ip", "-4", "route", "show", "table", "all")):
        for line in run(*argv).stdout.splitlines():
            for word in line.split():
                if word[:1].isdigit() and ("/" in word or word.count(".") == 3):
                    with contextlib.suppress(ValueError):
                        out.append(ipaddress.IPv4Network(word, strict=False))
    return out


def free_subnet(
    rng: random.Random | None = None, supernet: ipaddress.IPv4Network = SUPERNET, prefix: int = 24
) -> ipaddress.IPv4Network:
    """A /`prefix` of `supernet` (a /24 of 10.216.0.0/16) that overlaps nothing on this host
    (tried in random order)."""
    used = used_networks()
    subnets = list(supernet.subnets(new_prefix=prefix))
    (rng or random.Random()).shuffle(subnets)
    for net in subnets:
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsError(f"no free /{prefix} left in {supernet}")


def reachable(targets: list[str], timeout: float = 1.0) -> list[str]:
    """The targets (host:port) that accept a TCP connection from the host's netns."""
    ok = []
    for target in targets:
        host, _, port = target.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
            ok.append(target)
        except OSError:
            pass
    return ok


@dataclass
class HostNet:
    """A bridge and `nodes` namespaces; node i (1-based) is 10.216.<k>.<10+i>."""

    nodes: int = 3
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: ipaddress.IPv4Network | None = None
    made: list[tuple[str, ...]] = field(default_factory=list)  # undo commands, in order of making
    down: set[int] = field(default_factory=set)

    @property
    def bridge(self) -> str:
        return f"shb-{self.id}"

    @property
    def rule(self) -> tuple[str, ...]:
        return ("FORWARD", "-i", self.bridge, "-o", self.bridge, "-m", "comment", "--comment",
                f"shoal-netns-{self.id}", "-j", "ACCEPT")  # fmt: skip

    def netns(self, i: int) -> str:
        return f"sh-{self.id}-n{i}"

    def veth(self, i: int) -> str:
        """The host end of node i's link (the bridge port)."""
        return f"shv-{self.id}-{i}"

    def inner(self, i: int) -> str:
        return f"shp-{self.id}-{i}"

    def _ip(self, host: int) -> str:
        if self.subnet is None:
            raise NetnsError("HostNet.setup() has not run")
        return str(self.subnet.network_address + host)

    @property
    def host_ip(self) -> str:
        """The host's address on the bridge: etcd and published containers are here."""
        return self._ip(1)

    def node_ip(self, i: int) -> str:
        return self._ip(10 + i)

    def prefix(self, i: int) -> list[str]:
        """Run a command inside node i's namespace: `[*prefix(i), argv...]`."""
        # nsenter --net, not `ip netns exec`: that copies the mount namespace, and a copy kept
        # by a long-lived daemon pins every mount of the moment (a test bed's disks) after umount
        return ["nsenter", f"--net=/var/run/netns/{self.netns(i)}"]

    def setup(self) -> HostNet:
        if not 1 <= self.nodes <= 200:
            raise NetnsError(f"nodes must be 1-200, got {self.nodes}")
        try:
            self._setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def _setup(self) -> None:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        with LOCK.open("a") as lock:  # two runs choosing a subnet at once would choose the same
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.subnet = free_subnet()
            run("ip", "link", "add", self.bridge, "type", "bridge")
            self.made.append(("ip", "link", "del", self.bridge))
            run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        run("iptables", "-I", *self.rule[:1], "1", *self.rule[1:])
        self.made.append(("iptables", "-D", *self.rule))
        for i in range(1, self.nodes + 1):
            ns, veth, inner = self.netns(i), self.veth(i), self.inner(i)
            run("ip", "netns", "add", ns)
            self.made.append(("ip", "netns", "del", ns))
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", inner, "netns", ns)
            self.made.append(("ip", "link", "del", veth))  # gone with the netns already, usually
            run("ip", "link", "set", veth, "master", self.bridge, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{self.node_ip(i)}/24", "dev", inner)
            run("ip", "-n", ns, "link", "set", inner, "up")
            run("ip", "-n", ns, "route", "add", "default", "via", self.host_ip)

    def teardown(self) -> None:
        """Undo everything made, newest first; every step is tried, then failures are raised."""
        errors = []
        while self.made:
            argv = self.made.pop()
            if (
                argv[:3] == ("ip", "link", "del")
                and run("ip", "link", "show", argv[3], check=False).returncode
            ):
                continue  # the veth pair went with its namespace
            done = run(*argv, check=False)
            if done.returncode != 0:
                errors.append(f"{' '.join(argv)}: {done.stderr.strip()}")
        self.down.clear()
        if errors:
            raise NetnsError("teardown incomplete: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """What of this net still exists (empty after a clean teardown)."""
        found = []
        if run("ip", "link", "show", self.bridge, check=False).returncode == 0:
            found.append(f"link {self.bridge}")
        names = run("ip", "netns", "list").stdout
        found += [f"netns {self.netns(i)}" for i in range(1, self.nodes + 1) if self.netns(i) in names]
        found += [f"link {self.veth(i)}" for i in range(1, self.nodes + 1)
                  if run("ip", "link", "show", self.veth(i), check=False).returncode == 0]  # fmt: skip
        if run("iptables", "-C", *self.rule, check=False).returncode == 0:
            found.append(f"iptables rule shoal-netns-{self.id}")
        return found

    # -- faults ----------------------------------------------------------------------------

    def cut(self, i: int) -> None:
        """Isolate node i completely: its link to the bridge goes down (both directions)."""
        run("ip", "link", "set", self.veth(i), "down")
        self.down.add(i)

    def heal(self, i: int) -> None:
        run("ip", "link", "set", self.veth(i), "up")
        self.down.discard(i)

    def _peer_rules(self, i: int, j: int) -> list[tuple[str, ...]]:
        tag = ("-m", "comment", "--comment", f"shoal-netns-{self.id}")
        return [("INPUT", "-s", self.node_ip(j), *tag, "-j", "DROP"),
                ("OUTPUT", "-d", self.node_ip(j), *tag, "-j", "DROP")]  # fmt: skip

    def separate(self, i: int, others: list[int]) -> None:
        """Drop all traffic between node i and each of `others`, both ways, with rules in
        node i's own netns; node i still reaches the host (etcd, Docker's published ports)."""
        for j in others:
            for rule in self._peer_rules(i, j):
                run(*self.prefix(i), "iptables", "-I", *rule)
                self.made.append((*self.prefix(i), "iptables", "-D", *rule))

    def rejoin(self, i: int, others: list[int]) -> None:
        """Remove the rules of `separate(i, others)`."""
        for j in others:
            for rule in self._peer_rules(i, j):
                undo = (*self.prefix(i), "iptables", "-D", *rule)
                if undo in self.made:
                    run(*undo)
                    self.made.remove(undo)

    def reachable_from(self, i: int, targets: list[str]) -> list[str]:
        """The targets (host:port) that accept a TCP connection from inside node i's netns."""
        done = run(*self.prefix(i), sys.executable, "-c", _PROBE, *targets)
        return done.stdout.split()


@dataclass
class NetnsNode(NodeProcess):
    """A `NodeProcess` whose daemon runs behind a command prefix (`nsenter --net=<netns>`)."""

    prefix: list[str] = field(default_factory=list)

    def start(self) -> None:
        log = self.log_path.open("ab")
        cmd = [*self.prefix, sys.executable, "-m", "node.daemon", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)


@dataclass
class NetnsCluster(DevCluster):
    """A `DevCluster` whose etcd listens on the bridge and whose node i runs in netns i."""

    net: HostNet = field(default_factory=HostNet)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.etcd.host = self.net.host_ip

    def _member(self, i: int) -> NodeProcess:
        node_id, address = f"n{i}", self.net.node_ip(i)
        data = self.data_dir / "nodes" / node_id
        args = [
            "--node-id", node_id, "--data-dir", str(data), "--address", address,
            "--grpc-port", str(self.grpc_port), "--etcd", f"{self.net.host_ip}:{self.etcd_port}",
            *self.etcd.client_flags[2:],  # its TLS files (the host is set after this runs)
            "--etcd-prefix", self.prefix, "--publish-address", self.net.host_ip,
            "--cluster", self.cluster, "--preset", self.preset, "--label", f"dev.index={i}",
            "--proxy-workers", self.proxy_workers, *self.extra_args,
        ]  # fmt: skip
        return NetnsNode(i, node_id, address, self.grpc_port, data, args, prefix=self.net.prefix(i))


@contextlib.contextmanager
def netns_cluster(
    data_dir: Path, nodes: int = 3, preset: str = "local", extra_args: tuple[str, ...] = ()
) -> Iterator[NetnsCluster]:
    """A started cluster of `nodes` daemons, each in its own netns; everything removed on exit."""
    from tests.helpers import free_port_pair

    net = HostNet(nodes).setup()
    try:
        cluster = NetnsCluster(
            data_dir,
            nodes=nodes,
            grpc_port=GRPC_PORT,
            etcd_port=free_port_pair(net.host_ip),
            cluster=f"t{net.id}",
            preset=preset,
            net=net,
            extra_args=list(extra_args),
        )
        try:
            cluster.start()
            yield cluster
        finally:
            for i in sorted(net.down):  # a cut daemon would stop slowly (and leave stale state)
                net.heal(i)
            cluster.stop()
    finally:
        net.teardown()
