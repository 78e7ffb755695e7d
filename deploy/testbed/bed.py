"""A test bed of real hosts on one machine: a network namespace, a Docker engine and a
shoald per host, and a 3-member etcd with TLS on the first three hosts.

    root netns:  bridge stb-<id>  10.214.<k>.1/24  (nothing of the bed runs here)
      |-- veth stv-<id>-<i> == stp-<id>-<i> in netns st-<id>-h<i>: 10.214.<k>.<10+i>/24
              dockerd   own data root, exec root, socket <dir>/h<i>/docker.sock,
                        docker0 10.215.<i>.1/24 (its own iptables, in its own netns)
              etcd      https://10.214.<k>.<10+i>:2379 (hosts 1-3; peers on :2380)
              shoald    --config <dir>/h<i>/shoald.toml: address 10.214.<k>.<10+i>,
                        the three etcd endpoints, docker_host its own socket

Every process of a host runs inside its namespace (`nsenter --net`, which execs, so a
Popen's pid is the process's). Each host is set up as docs/operations.md installs a
real one: a `shoald.toml`, `shoal cluster init --config` on the first host (it prints
the join token and writes the admin's context file), the join token in a 0600 file
(`join_token_file`) on every other host. etcd has its own PKI (`node.security.etcd_pki`,
as deploy/etcd/make-certs.sh makes it): one server certificate whose SANs are every
member's address and the name `etcd.testbed.shoal`, which shoald checks
(`etcd_server_name`) since etcd3aio reaches the three endpoints as one round-robin
channel; one client certificate per host.

Every name carries a random id (bridge, namespaces, links, the iptables comment
`shoal-testbed-<id>`, the state directory, the cluster name `bed-<id>`), so beds
never collide. `down()` removes everything (processes, containers, mounts under the
state directory, namespaces, links, the rule, the directory) even after a partial
`up()`, from the state file alone (`bed.json`), so another process can do it.
Traffic stays inside the bridge: the only FORWARD rule added accepts frames from the
bridge to the bridge, and no namespace has a route beyond it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from deploy.testbed import hostfaults
from deploy.testbed.teardown import BedError, Teardown, pid_alive, run, wait

REPO = Path(__file__).resolve().parents[2]
SUPERNET = ipaddress.IPv4Network("10.214.0.0/16")
LOCK = Path("/run/lock/shoal-testbed.lock")
ROOT = Path(os.environ.get("SHOAL_TESTBED_DIR", "/tmp/shoal-testbed"))
ETCD_NAME = "etcd.testbed.shoal"  # in etcd's certificate; shoald checks it (etcd_server_name)
GRPC_PORT, METRICS_PORT, ETCD_PORT = 7070, 7071, 2379
IMAGES = ("shoal-demo/base:1", "shoal-demo/web:1", "shoal-demo/web:2")


def free_subnet() -> ipaddress.IPv4Network:
    used = []
    for argv in (("ip", "-4", "-o", "addr", "show"), ("ip", "-4", "route", "show", "table", "all")):
        for word in run(*argv).stdout.split():
            if word[:1].isdigit() and ("/" in word or word.count(".") == 3):
                with contextlib.suppress(ValueError):
                    used.append(ipaddress.IPv4Network(word, strict=False))
    subnets = list(SUPERNET.subnets(new_prefix=24))
    random.shuffle(subnets)
    for net in subnets:
        if not any(net.overlaps(u) for u in used):
            return net
    raise BedError(f"no free /24 left in {SUPERNET}")


@dataclass
class Bed(Teardown):
    """`hosts` hosts (1-50); etcd on the first min(3, hosts). `Bed(...).up()`, `.down()`."""

    hosts: int = 3
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: str = ""
    preset: str = "local"
    images: tuple[str, ...] = IMAGES
    pids: dict[str, int] = field(default_factory=dict)  # "dockerd-1", "etcd-2", "shoald-3" -> pid
    made: list[str] = field(default_factory=list)  # what exists: "bridge", "rule", "netns-<i>"
    timings: dict[str, float] = field(default_factory=dict)
    small_disk: int = 0  # MiB: each host's Docker root on a file system that size (hostfaults)
    clock_shift: bool = False  # each shoald's wall clock shiftable (hostfaults, clock-offset)
    settings: dict[int, str] = field(
        default_factory=dict
    )  # host -> extra shoald.toml lines, from its next start

    # -- names -----------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return ROOT / self.id

    @property
    def bridge(self) -> str:
        return f"stb-{self.id}"

    @property
    def cluster(self) -> str:
        return f"bed-{self.id}"

    @property
    def rule(self) -> tuple[str, ...]:
        return ("FORWARD", "-i", self.bridge, "-o", self.bridge, "-m", "comment", "--comment",
                f"shoal-testbed-{self.id}", "-j", "ACCEPT")  # fmt: skip

    def netns(self, i: int) -> str:
        return f"st-{self.id}-h{i}"

    def veth(self, i: int) -> str:
        return f"stv-{self.id}-{i}"

    def host_dir(self, i: int) -> Path:
        return self.dir / f"h{i}"

    def node_id(self, i: int) -> str:
        return f"h{i}"

    def ip(self, i: int) -> str:
        """Host i's address (1-based); 0 is the bridge's own."""
        return str(ipaddress.IPv4Network(self.subnet).network_address + (1 if i == 0 else 10 + i))

    def addr(self, i: int) -> str:
        return f"{self.ip(i)}:{GRPC_PORT}"

    @property
    def etcd_hosts(self) -> list[int]:
        return list(range(1, min(3, self.hosts) + 1))

    @property
    def etcd_endpoints(self) -> list[str]:
        return [f"{self.ip(i)}:{ETCD_PORT}" for i in self.etcd_hosts]

    def docker_host(self, i: int) -> str:
        return f"unix://{self.host_dir(i) / 'docker.sock'}"

    def in_host(self, i: int) -> list[str]:
        """A command prefix that runs inside host i's network namespace."""
        return ["nsenter", f"--net=/var/run/netns/{self.netns(i)}"]

    @property
    def context_file(self) -> Path:
        return self.dir / "context.json"

    @property
    def pki(self) -> Path:
        return self.dir / "etcd-pki"

    # -- state -----------------------------------------------------------------------------
    def save(self) -> None:
        names = ("hosts", "id", "subnet", "preset", "pids", "made", "timings", "small_disk", "clock_shift",
                 "settings")  # fmt: skip
        state = {k: getattr(self, k) for k in names}
        (self.dir / "bed.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, bed_id: str) -> Bed:
        path = ROOT / bed_id / "bed.json"
        if not path.exists():
            raise BedError(f"no bed {bed_id} in {ROOT} (see: bed.sh ls)")
        state = json.loads(path.read_text())
        state["settings"] = {int(k): v for k, v in state.get("settings", {}).items()}  # JSON keys are strings
        return cls(**state)

    # -- up --------------------------------------------------------------------------------
    def up(self) -> Bed:
        if not 1 <= self.hosts <= 50:
            raise BedError(f"hosts must be 1-50, got {self.hosts}")
        if os.geteuid() != 0:
            raise BedError("the test bed needs root (ip netns, iptables, dockerd)")
        start = time.monotonic()
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        self.timings["up"] = round(time.monotonic() - start, 2)
        self.save()
        return self

    def _step(self, name: str, start: float) -> None:
        self.timings[name] = round(time.monotonic() - start, 2)

    def _up(self) -> None:
        t = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=False)
        self.dir.chmod(0o700)
        self.save()
        self._network()
        self._step("network", t)
        t = time.monotonic()
        image_tar = self.dir / "images.tar"
        saver = subprocess.Popen(["docker", "save", "-o", str(image_tar), *self.images],
                                 stderr=subprocess.PIPE)  # fmt: skip
        from node.security.etcd_pki import EtcdPki

        EtcdPki(self.pki).make(
            [*(self.ip(i) for i in self.etcd_hosts), ETCD_NAME],
            [self.node_id(i) for i in range(1, self.hosts + 1)],
        )
        self._host_faults()
        for i in range(1, self.hosts + 1):
            self.start_engine(i, wait_ready=False)
        for i in self.etcd_hosts:
            self.start_etcd(i, wait_ready=False)
        self.save()
        _, err = saver.communicate(timeout=120)
        if saver.returncode != 0:
            raise BedError(f"docker save {' '.join(self.images)} failed: {err.decode().strip()}; "
                           "build the images first: deploy/images/build.sh")  # fmt: skip
        for i in range(1, self.hosts + 1):
            wait(lambda i=i: self.engine_ready(i), 60, f"dockerd of h{i}", self.host_dir(i) / "dockerd.log")
        self._step("engines", t)
        loads = [subprocess.Popen(["docker", "-H", self.docker_host(i), "load", "-q", "-i", str(image_tar)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for i in range(1, self.hosts + 1)]  # fmt: skip
        for i in self.etcd_hosts:
            wait(lambda i=i: self.etcd_healthy(i), 30, f"etcd on h{i}", self.host_dir(i) / "etcd.log")
        self._step("etcd", t)
        self._init_cluster()
        for i, load in enumerate(loads, 1):
            if load.wait(120) != 0:
                raise BedError(f"docker load into h{i}: {load.stderr.read().decode().strip()}")  # type: ignore[union-attr]
        self._step("images", t)
        self.start_shoald(1)
        self.save()
        wait(lambda: self.ready([1]), 30, "shoald h1", self.host_dir(1) / "shoald.log")
        for i in range(2, self.hosts + 1):  # they join through h1
            self.start_shoald(i)
        self.save()
        wait(
            lambda: self.ready(range(1, self.hosts + 1)), 60, "every shoald", self.host_dir(1) / "shoald.log"
        )
        self._step("shoald", t)

    def _network(self) -> None:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        with LOCK.open("a") as lock:  # two beds choosing a subnet at once would choose the same
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.subnet = str(free_subnet())
            self.made.append("bridge")
            self.save()
            run("ip", "link", "add", self.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{self.ip(0)}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        self.made.append("rule")
        self.save()
        run("iptables", "-I", self.rule[0], "1", *self.rule[1:])
        for i in range(1, self.hosts + 1):
            ns, veth, inner = self.netns(i), self.veth(i), f"stp-{self.id}-{i}"
            self.made.append(f"netns-{i}")
            self.save()
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", inner, "netns", ns)
            run("ip", "link", "set", veth, "master", self.bridge, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", inner)
            run("ip", "-n", ns, "link", "set", inner, "up")
            run("ip", "-n", ns, "route", "add", "default", "via", self.ip(0))
            self.host_dir(i).mkdir(mode=0o700)

    def _host_faults(self) -> None:
        """The small disks and the clock shim (deploy/testbed/hostfaults.py), when asked."""
        for i in range(1, self.hosts + 1):
            if self.small_disk:
                self.made.append(f"disk-{i}")
                self.save()
                image = self.host_dir(i) / "disk.img"
                hostfaults.make_small_disk(image, self.docker_root(i), self.small_disk)
            if self.clock_shift:
                hostfaults.set_clock(self.clock_file(i), 0)
        if self.clock_shift:
            hostfaults.build_clock_shim(self.dir)

    def docker_root(self, i: int) -> Path:
        return self.host_dir(i) / "docker"

    def clock_file(self, i: int) -> Path:
        return self.host_dir(i) / "clock-offset"

    def _spawn(
        self, key: str, i: int, argv: list[str], log: str, extra_env: dict[str, str] | None = None
    ) -> None:
        with (self.host_dir(i) / log).open("ab") as out:
            env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
            env |= extra_env or {}
            proc = subprocess.Popen(
                [*self.in_host(i), *argv],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.host_dir(i),
                env=env,
            )
        self.pids[key] = proc.pid

    # -- the engines -----------------------------------------------------------------------
    def start_engine(self, i: int, wait_ready: bool = True) -> None:
        d = self.host_dir(i)
        argv = ["dockerd", "--data-root", str(self.docker_root(i)), "--exec-root", str(d / "x"),
                "--pidfile", str(d / "docker.pid"), "-H", self.docker_host(i),
                "--bip", f"10.215.{i}.1/24", "--log-level", "warn"]  # fmt: skip
        self._spawn(f"dockerd-{i}", i, argv, "dockerd.log")
        if wait_ready:
            self.save()
            wait(lambda: self.engine_ready(i), 60, f"dockerd of h{i}", d / "dockerd.log")

    def engine_ready(self, i: int) -> bool:
        return run("docker", "-H", self.docker_host(i), "version", "-f", "{{.Server.Version}}",
                   check=False, timeout=10).returncode == 0  # fmt: skip

    def engine_running(self, i: int) -> bool:
        return pid_alive(self.pids.get(f"dockerd-{i}", 0))

    def stop_engine(self, i: int, sig: int = signal.SIGTERM) -> None:
        """Stop host i's dockerd (SIGTERM: as `systemctl stop docker`; its containers stop)."""
        self.stop(f"dockerd-{i}", sig, 30)

    def docker(self, i: int, *args: str, check: bool = True) -> str:
        return run("docker", "-H", self.docker_host(i), *args, check=check).stdout

    def containers(self, i: int) -> list[str]:
        """Names of the bed's running containers on host i's engine."""
        out = self.docker(
            i, "ps", "--filter", f"label=io.shoal.cluster={self.cluster}", "--format", "{{.Names}}"
        )
        return out.split()

    # -- etcd ------------------------------------------------------------------------------
    def start_etcd(self, i: int, wait_ready: bool = True) -> None:
        from node.security.etcd_pki import EtcdPki

        pki = EtcdPki(self.pki)
        peers = ",".join(f"h{j}=https://{self.ip(j)}:{ETCD_PORT + 1}" for j in self.etcd_hosts)
        client, peer = f"https://{self.ip(i)}:{ETCD_PORT}", f"https://{self.ip(i)}:{ETCD_PORT + 1}"
        argv = ["etcd", "--name", f"h{i}", "--data-dir", str(self.host_dir(i) / "etcd"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", peers, "--initial-cluster-token", self.cluster,
                "--initial-cluster-state", "new", "--auto-compaction-retention", "1",
                *pki.server_flags()]  # fmt: skip
        self._spawn(f"etcd-{i}", i, argv, "etcd.log")
        if wait_ready:
            self.save()
            wait(lambda: self.etcd_healthy(i), 30, f"etcd on h{i}", self.host_dir(i) / "etcd.log")

    def stop_etcd(self, i: int, sig: int = signal.SIGTERM) -> None:
        self.stop(f"etcd-{i}", sig, 20)

    def freeze(self, key: str, frozen: bool = True) -> None:
        """SIGSTOP (or with frozen=False SIGCONT) a process of the bed, e.g. "etcd-1": it
        keeps its sockets open and answers nothing, as a hung host does."""
        pid = self.pids.get(key, 0)
        if not self._ours(pid):
            raise BedError(f"{key} is not running")
        os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def cut(self, i: int, down: bool = True) -> None:
        """Cut host i off the bridge (its link down: nothing in or out), or heal it."""
        run("ip", "link", "set", self.veth(i), "down" if down else "up")

    def _etcd_call(self, i: int, path: str, body: bytes | None = None) -> dict[str, object]:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(self.pki / "client-h1.crt", self.pki / "client-h1.key")
        url = f"https://{self.ip(i)}:{ETCD_PORT}{path}"
        with urllib.request.urlopen(url, data=body, timeout=2, context=ctx) as resp:
            return json.loads(resp.read())

    def etcd_healthy(self, i: int) -> bool:
        try:
            return self._etcd_call(i, "/health").get("health") == "true"
        except OSError:
            return False

    def etcd_leader(self, among: list[int] | None = None) -> int:
        """The host whose etcd member is raft leader, as the members of `among` (default:
        all) see it; BedError if none of them knows one."""
        asked = among or self.etcd_hosts
        for i in asked:
            if not pid_alive(self.pids.get(f"etcd-{i}", 0)):
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):  # no "leader": it knows none
                status = self._etcd_call(i, "/v3/maintenance/status", b"{}")
                leader = str(status["leader"])
                for j in asked:
                    with contextlib.suppress(OSError, ValueError):
                        other = self._etcd_call(j, "/v3/maintenance/status", b"{}")
                        if str(other["header"]["member_id"]) == leader:  # type: ignore[index]
                            return j
        raise BedError("no etcd member knows a leader")

    # -- shoald ----------------------------------------------------------------------------
    def config(self, i: int) -> Path:
        """Host i's shoald.toml: the settings docs/operations.md asks of a real host."""
        d = self.host_dir(i)
        token = f'join_token_file = "{d / "join-token"}"\n' if i > 1 else ""
        text = (
            f'node_id = "{self.node_id(i)}"\ndata_dir = "{d / "data"}"\ncluster = "{self.cluster}"\n'
            f'address = "{self.ip(i)}"\ngrpc_port = {GRPC_PORT}\nmetrics_port = {METRICS_PORT}\n'
            f"etcd = {json.dumps(self.etcd_endpoints)}\nwait_for_etcd = true\n"
            f'etcd_ca = "{self.pki / "ca.crt"}"\netcd_cert = "{self.pki / f"client-h{i}.crt"}"\n'
            f'etcd_key = "{self.pki / f"client-h{i}.key"}"\netcd_server_name = "{ETCD_NAME}"\n'
            f'docker_host = "{self.docker_host(i)}"\nengine_timeout = 3.0\npreset = "{self.preset}"\n'
            f'{token}{self.settings.get(i, "")}\n[labels]\n"bed.host" = "h{i}"\n'
        )
        path = d / "shoald.toml"
        path.write_text(text)
        return path

    def _init_cluster(self) -> None:
        done = run(sys.executable, "-m", "node.cli.main", "cluster", "init", "--config", str(self.config(1)),
                   "--context-file", str(self.context_file), cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
        token = next((w for w in done.stdout.split() if w.startswith("SHOAL-1-")), None)
        if token is None:
            raise BedError(f"shoal cluster init printed no join token: {done.stdout.strip()}")
        for i in range(2, self.hosts + 1):
            path = self.host_dir(i) / "join-token"
            path.touch(mode=0o600)
            path.write_text(token + "\n")

    def start_shoald(self, i: int) -> None:
        shim = {}
        if self.clock_shift:
            shim = hostfaults.clock_env(self.dir / "clockshift.so", self.clock_file(i))
        self._spawn(f"shoald-{i}", i, [sys.executable, "-m", "node.daemon", "--config", str(self.config(i))],
                    "shoald.log", shim)  # fmt: skip

    def stop_shoald(self, i: int, sig: int = signal.SIGTERM) -> None:
        self.stop(f"shoald-{i}", sig, 20)

    def client(self, i: int = 1, timeout: float = 5.0):  # type: ignore[no-untyped-def]
        from node.security import context
        from node.wire.client import ShoalClient

        tls = context.resolve(env={}, path=self.context_file).tls()
        return ShoalClient(self.addr(i), timeout=timeout, tls=tls)

    def ready(self, hosts: object) -> bool:
        """A leader with an epoch, and these hosts' nodes ready and alive to gossip in the
        view of the first of them."""
        chosen = list(hosts)  # type: ignore[call-overload]
        want = {self.node_id(i) for i in chosen}
        with self.client(chosen[0]) as c:
            resp = c.list_nodes()
        alive = {n.id for n in resp.nodes if n.status == "ready" and n.member_state == "alive"}
        return resp.epoch > 0 and want <= alive

    def in_host_run(self, i: int, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run(*self.in_host(i), *argv, check=False, timeout=timeout)
