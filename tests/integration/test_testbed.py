"""Cross-host behaviour on the test bed (deploy/testbed/): real hosts on one machine.

Each host is a network namespace with its own Docker engine and its own shoald,
configured as docs/operations.md installs a real host; etcd is three members with TLS
and client certificates on h1-h3. One bed serves the whole module (the up/down test
makes its own small ones). What is checked, each against the real thing:

- `up` and `down` leave nothing behind, also after an `up` that failed half-way;
- a client inside h1 reaches a service whose replicas run only on h2 and h3, through
  h1's mesh (every request crosses the bridge to another host's engine);
- a host whose engine is stopped loses its tasks to the other hosts, and is ready
  again once its engine is back;
- losing the etcd member that is raft leader (killed, or frozen with SIGSTOP: a hung
  member) leaves the cluster working: etcd elects another, shoal has an acting leader
  again and a new apply converges (before the leader fix a step-down left the leader
  key on a lease etcd renewed, so nobody led);
- quorum loss (two of three members killed): every call that needs etcd answers
  UNAVAILABLE within FAIL_BOUND, while the containers stay as they were and the mesh
  goes on serving; once the members return, a write is accepted and converges.

Every wait polls with a deadline; the one fixed duration is the outage's own
observation window (HOLD). The measured times are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from deploy.testbed import hostfaults
from deploy.testbed.bed import Bed, BedError
from node.wire.client import ShoalError, Unavailable
from tests.helpers import wait_until_sync

pytestmark = pytest.mark.integration

FAIL_BOUND = 12.0  # s: a call that needs etcd answers UNAVAILABLE within this (etcd_timeout 5 s)
HOLD = 6.0  # s: the quorum outage observed; containers must stay and the mesh serve throughout
CONVERGE = 45.0  # s: a change (or a recovery) shows in tasks, engines and the mesh

WEB = """
name: web
image: shoal-demo/web:1
replicas: 2
placement: {constraints: ["node.id != h1"], max_per_node: 1}
ports:
  - {container: 8080, published: 18080, protocol: http}
"""

APP = """
name: app
image: shoal-demo/web:1
replicas: %d
"""

# Run inside a host's netns: GET each URL (argv[2:]) argv[1] times; print a JSON list of
# bodies, or "ERR <what>" per failed request.
_GET = """
import json, sys, urllib.request
out = []
for _ in range(int(sys.argv[1])):
    for url in sys.argv[2:]:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                out.append(r.read().decode().strip())
        except Exception as exc:
            out.append(f"ERR {exc}")
print(json.dumps(out))
"""


def get_from(bed: Bed, host: int, url: str, times: int = 1) -> list[str]:
    """Bodies (or "ERR ...") of `times` GETs of `url` made from inside `host`."""
    done = bed.in_host_run(host, sys.executable, "-c", _GET, str(times), url)
    if done.returncode != 0:
        raise AssertionError(f"the client in h{host} failed: {done.stderr.strip()}")
    return list(json.loads(done.stdout))


def running(bed: Bed, service: str, host: int = 1) -> dict[str, str]:
    """task id -> node of the service's running tasks (what the cluster says, through `host`)."""
    with bed.client(host) as c:
        return {t.task_id: t.node for t in c.list_tasks(service) if t.state == "running"}


def engines(bed: Bed, service: str) -> dict[int, list[str]]:
    """host -> names of the service's running containers (what each running engine says;
    a stopped engine stopped its containers)."""
    return {
        i: [n for n in bed.containers(i) if n.startswith(f"{service}.")] if bed.engine_running(i) else []
        for i in range(1, bed.hosts + 1)
    }


def placed(bed: Bed, service: str, n: int, allowed: set[str], host: int = 1) -> Callable[[], bool]:
    """n running tasks, all on `allowed` nodes, and exactly n containers across the engines."""

    def check() -> bool:
        tasks = running(bed, service, host)
        found = engines(bed, service)
        on_engines = sum(len(names) for names in found.values())
        return len(tasks) == n and set(tasks.values()) <= allowed and on_engines == n

    return check


def timed(call: Callable[[], object]) -> tuple[float, ShoalError | None]:
    start = time.monotonic()
    try:
        call()
    except ShoalError as err:
        return time.monotonic() - start, err
    return time.monotonic() - start, None


def apply_when_able(bed: Bed, spec: str, host: int = 1, timeout: float = CONVERGE) -> float:
    """Apply `spec` through `host`, retrying while the cluster cannot take it; the seconds."""
    start = time.monotonic()

    def applied() -> bool:
        with bed.client(host) as c:
            c.apply(spec, "spec.yaml")
        return True

    wait_until_sync(applied, timeout, interval=0.2, message=f"an apply through h{host} accepted")
    return time.monotonic() - start


@pytest.fixture(scope="module")
def bed(demo_images: tuple[str, ...]) -> Iterator[Bed]:
    made = Bed(3).up()
    print(f"\ntestbed {made.id}: up in {made.timings['up']:.1f}s {made.timings}")
    try:
        yield made
    finally:
        left = made.down()
        print(f"testbed {made.id}: down in {made.timings['down']:.1f}s")
        assert left == [], f"the bed left {left}"


def test_up_and_down_leave_nothing_even_after_a_failed_up(demo_images: tuple[str, ...]) -> None:
    broken = Bed(1, images=("shoal-demo/no-such-image:0",))
    with pytest.raises(BedError, match=r"deploy/images/build\.sh"):
        broken.up()  # fails after the network, the engine and etcd are up: all removed
    assert broken.leftovers() == []
    small = Bed(2, small_disk=128, clock_shift=True).up()  # the chaos suite's disk_full, clock_jump
    try:
        assert small.timings["up"] < 30, small.timings
        assert small.ready([1, 2])
        assert "shoal-demo/web:1" in small.docker(2, "images", "--format", "{{.Repository}}:{{.Tag}}")
        # each host has its own stack: h2's engine and etcd are not h1's, its docker0 is its own
        assert (
            small.in_host_run(2, "ip", "-4", "-o", "addr", "show", "docker0").stdout.count("10.215.2.1/24")
            == 1
        )
        full_disk_stops_only_that_engine(small)
        a_shifted_clock_moves_only_that_daemons_wall_clock(small)
        assert small.leftovers() != []
    finally:
        left = small.down()
    print(f"\n2-host bed: up {small.timings['up']:.1f}s, down {small.timings['down']:.1f}s")
    assert left == []


def full_disk_stops_only_that_engine(bed: Bed) -> None:
    """h2's Docker root is a file system of its own: filled, h2 cannot create a container
    while h1 can; freed, h2 can again."""
    assert os.stat(bed.docker_root(2)).st_dev != os.stat(bed.dir).st_dev
    run = ("run", "--rm", "shoal-demo/base:1", "true")
    hostfaults.fill_disk(bed.docker_root(2))
    try:
        refused = subprocess.run(["docker", "-H", bed.docker_host(2), *run], capture_output=True, text=True)
        assert refused.returncode != 0 and "no space left" in refused.stderr.lower(), refused.stderr
        bed.docker(1, *run)
    finally:
        hostfaults.free_disk(bed.docker_root(2))
    bed.docker(2, *run)


def a_shifted_clock_moves_only_that_daemons_wall_clock(bed: Bed) -> None:
    """h2's shoald stamps its events with its own wall clock: 120 s ahead once shifted."""
    hostfaults.set_clock(bed.clock_file(2), 120)
    try:

        def stamped_ahead() -> bool:  # an apply through h2: h2's API stamps service.applied
            name = f"clock{int(time.monotonic() * 1000) % 100000}"
            sent = time.time()
            with bed.client(2) as c:
                c.apply(f"name: {name}\nimage: shoal-demo/base:1\nreplicas: 0\n", "clock.yaml")
                times = [e.time for e in c.events(service=name) if e.node == "h2"]
            return bool(times) and min(times) - sent > 100

        wait_until_sync(stamped_ahead, 30, interval=0.5, message="h2's events stamped 120 s ahead")
    finally:
        hostfaults.set_clock(bed.clock_file(2), 0)
    with bed.client(1) as c:  # h1's clock was never shifted
        c.apply("name: clockh1\nimage: shoal-demo/base:1\nreplicas: 0\n", "clock.yaml")

        def stamped_by_h1() -> list[float] | None:  # the event is written after the apply answers
            return [e.time for e in c.events(service="clockh1") if e.node == "h1"] or None

        times = wait_until_sync(stamped_by_h1, 30, interval=0.5, message="h1's event for clockh1")
    assert all(abs(t - time.time()) < 30 for t in times), times


def test_a_client_on_one_host_reaches_replicas_on_the_others_through_its_mesh(bed: Bed) -> None:
    with bed.client() as c:
        c.apply(WEB, "web.yaml")
    wait_until_sync(placed(bed, "web", 2, {"h2", "h3"}), CONVERGE, 0.2, "web on h2 and h3")
    found = engines(bed, "web")
    assert found[1] == [] and len(found[2]) == 1 and len(found[3]) == 1, found
    ids = {bed.docker(i, "inspect", "-f", "{{.Config.Hostname}}", found[i][0]).strip() for i in (2, 3)}

    def both_answer() -> bool:
        bodies = get_from(bed, 1, f"http://{bed.ip(1)}:18080/", times=6)
        return {b.rsplit(" ", 1)[-1] for b in bodies} == ids  # round-robin over both, no error

    wait_until_sync(both_answer, CONVERGE, 0.2, "h1's mesh answering from both h2 and h3")


NSDB = """
name: nsdb
image: shoal-demo/web:1
replicas: 2
placement: {constraints: ["node.id != h1"], max_per_node: 1}
ports:
  - {container: 8080}
"""

NSCLIENT = """
name: nsclient
image: shoal-demo/base:1
command: ["sleep", "100000"]
placement: {constraints: ["node.id == h1"]}
"""


def test_a_container_on_one_host_reaches_a_service_by_name_on_the_others(bed: Bed) -> None:
    """Issue 13, names: a container on h1 asks h1's name server for `nsdb` and connects to
    its VIP on the container port; h1's proxy sends it to the replicas on h2 and h3."""
    with bed.client() as c:
        c.apply(NSDB, "nsdb.yaml")
        c.apply(NSCLIENT, "nsclient.yaml")
    wait_until_sync(placed(bed, "nsdb", 2, {"h2", "h3"}), CONVERGE, 0.2, "nsdb on h2 and h3")
    wait_until_sync(placed(bed, "nsclient", 1, {"h1"}), CONVERGE, 0.2, "nsclient on h1")
    found = engines(bed, "nsdb")
    ids = {bed.docker(i, "inspect", "-f", "{{.Config.Hostname}}", found[i][0]).strip() for i in (2, 3)}
    client = engines(bed, "nsclient")[1][0]
    script = "for i in 1 2 3 4 5 6; do timeout 5 wget -qO- http://nsdb:8080/ || echo FAILED; done"

    def both_answer() -> bool:
        out = bed.docker(1, "exec", client, "sh", "-c", script, check=False)
        return {line.rsplit(" ", 1)[-1] for line in out.splitlines() if line.strip()} == ids

    wait_until_sync(both_answer, CONVERGE, 0.5, "nsdb by name from h1, answered from h2 and h3")
    with bed.client() as c:
        c.delete_service("nsdb")

    def gone() -> bool:
        out = bed.docker(1, "exec", client, "sh", "-c", "nslookup nsdb.shoal 2>&1", check=False)
        return "NXDOMAIN" in out

    wait_until_sync(gone, CONVERGE, 0.5, "nsdb's name gone after rm")


def _scoped(name: str, networks: str, image: str = "shoal-demo/base:1", where: str = "== h1") -> str:
    spec = f"name: {name}\nimage: {image}\nnetworks: {networks}\n"
    spec += f"placement: {{constraints: ['node.id {where}']}}\n"
    if image == "shoal-demo/base:1":
        return spec + 'command: ["sleep", "100000"]\n'
    return spec + "replicas: 2\nports: [{container: 8080}]\n"


def test_networks_scope_names_and_vips_on_separate_hosts(bed: Bed) -> None:
    """Decision 64 on real hosts: a container on h1 on `netdb`'s network resolves it and is
    answered by its replicas on h2 and h3; one on another network (same host) neither
    resolves it nor connects to its VIP (h1's listener resets it), though it is h1's
    engine that knows both containers."""
    with bed.client() as c:
        c.apply(_scoped("netdb", "[backnet]", "shoal-demo/web:1", "!= h1"), "netdb.yaml")
        c.apply(_scoped("netin", "[backnet]"), "netin.yaml")
        c.apply(_scoped("netout", "[frontnet]"), "netout.yaml")
    wait_until_sync(placed(bed, "netdb", 2, {"h2", "h3"}), CONVERGE, 0.2, "netdb on h2 and h3")
    for name in ("netin", "netout"):
        wait_until_sync(placed(bed, name, 1, {"h1"}), CONVERGE, 0.2, f"{name} on h1")
    found = engines(bed, "netdb")
    ids = {bed.docker(i, "inspect", "-f", "{{.Config.Hostname}}", found[i][0]).strip() for i in (2, 3)}
    inside, outside = engines(bed, "netin")[1][0], engines(bed, "netout")[1][0]
    script = "for i in 1 2 3 4 5 6; do timeout 5 wget -qO- http://netdb:8080/ 2>&1 || echo FAILED; done"

    def both_answer() -> bool:
        out = bed.docker(1, "exec", inside, "sh", "-c", script, check=False)
        return {line.rsplit(" ", 1)[-1] for line in out.splitlines() if line.strip()} == ids

    wait_until_sync(both_answer, CONVERGE, 0.5, "netdb by name from netin on h1, answered from h2 and h3")
    looked = bed.docker(1, "exec", inside, "sh", "-c", "nslookup netdb", check=False)
    vip = looked.rsplit("Address:", 1)[-1].split()[0]
    hidden = bed.docker(1, "exec", outside, "sh", "-c", "nslookup netdb.shoal 2>&1", check=False)
    assert "NXDOMAIN" in hidden and vip not in hidden, hidden
    refused = bed.docker(
        1, "exec", outside, "sh", "-c", f"timeout 5 wget -qO- http://{vip}:8080/ 2>&1", check=False
    )
    assert "reset by peer" in refused and not any(i in refused for i in ids), refused
    with bed.client() as c:
        for name in ("netdb", "netin", "netout"):
            c.delete_service(name)


def test_a_host_whose_engine_stops_loses_its_tasks_to_the_other_hosts(bed: Bed) -> None:
    with bed.client() as c:
        c.apply(APP % 3, "app.yaml")
    wait_until_sync(placed(bed, "app", 3, {"h1", "h2", "h3"}), CONVERGE, 0.2, "app on three hosts")
    assert sorted(running(bed, "app").values()) == ["h1", "h2", "h3"]  # spread: one per host
    start = time.monotonic()
    bed.stop_engine(3)
    try:
        wait_until_sync(placed(bed, "app", 3, {"h1", "h2"}), CONVERGE, 0.2, "app's h3 replica moved")
        moved = time.monotonic() - start
        with bed.client() as c:
            status = {n.id: n.status for n in c.list_nodes().nodes}
        assert status["h3"] == "not-ready", status
        print(f"\nengine of h3 stopped: its task ran elsewhere after {moved:.1f}s")
    finally:
        bed.start_engine(3)
        bed.save()
    wait_until_sync(lambda: bed.ready([1, 2, 3]), CONVERGE, 0.2, "h3 ready again with its engine")
    with bed.client() as c:
        c.apply(APP % 4, "app.yaml")  # h3 takes work again
    wait_until_sync(placed(bed, "app", 4, {"h1", "h2", "h3"}), CONVERGE, 0.2, "app at 4")
    assert "h3" in running(bed, "app").values()


KEEPER = """
name: keeper
image: shoal-demo/web:1
mode: global
restart: {condition: on-failure, delay: 0s}
"""


def test_a_replica_stopped_by_its_engines_restart_while_shoald_was_down_runs_again(bed: Bed) -> None:
    """A host reboot, in short: shoald stops (SIGTERM, its `restarting/` mark holds its
    tasks), the engine stops (its containers get SIGTERM; web:1 exits 0), the engine and
    then shoald start. Nothing saw the engine go, and `on-failure` does not restart an
    exit 0; but the exit came before the engine's process started, so it is not the
    task's end: the same task runs again."""
    # The reboot must fit the node's lease and restart mark (10 s in the local preset), or
    # its tasks move, as they should: on a loaded machine (CI, two test files at once) the
    # engine's stop and start took longer. h3 runs with 30 s for this test.
    bed.settings[3] = "lease_ttl = 30\nrestart_grace = 30\n"
    restart_shoald(bed, 3)
    try:
        with bed.client() as c:
            c.apply(KEEPER, "keeper.yaml")
        wait_until_sync(placed(bed, "keeper", 3, {"h1", "h2", "h3"}), CONVERGE, 0.2, "keeper on three hosts")
        [task] = [t for t, node in running(bed, "keeper").items() if node == "h3"]
        down = time.monotonic()
        bed.stop_shoald(3)
        try:
            bed.stop_engine(3)
            bed.start_engine(3)
        finally:
            bed.start_shoald(3)
            bed.save()
        print(f"figure: h3's reboot (shoald and engine down, up): {time.monotonic() - down:.1f}s")
        reboot_ran_again(bed, task)
        with bed.client() as c:
            c.delete_service("keeper")
    finally:
        del bed.settings[3]
        restart_shoald(bed, 3)  # the preset's timings again, for the tests after


def restart_shoald(bed: Bed, i: int) -> None:
    """Stop and start host i's shoald (with its settings as they are now) and wait until
    every host is ready again."""
    bed.stop_shoald(i)
    bed.start_shoald(i)
    bed.save()
    wait_until_sync(lambda: bed.ready([1, 2, 3]), CONVERGE, 0.2, f"h{i} ready again")


def reboot_ran_again(bed: Bed, task: str) -> None:
    """The keeper's h3 task `task` runs again after the reboot: the same task, restarted."""

    def again() -> bool:
        with bed.client() as c:
            [t] = [t for t in c.list_tasks("keeper") if t.node == "h3"]
        assert t.task_id == task, f"the task was replaced ({t.task_id}), not restarted: {t}"
        assert not t.terminal, f"taken for a completion: {t}"
        return t.state == "running" and t.restarts >= 1 and engines(bed, "keeper")[3] != []

    try:
        wait_until_sync(again, CONVERGE, 0.2, "keeper's h3 task running again after the engine's restart")
    except TimeoutError as exc:  # what the engine says of the container, and when it started
        states = bed.docker(3, "ps", "-a", "--filter", "name=keeper.", "--format", "{{.ID}}").split()
        seen = [bed.docker(3, "inspect", "-f", "{{json .State}}", cid) for cid in states]
        engine = (bed.host_dir(3) / "docker.pid").read_text().strip()
        said = [  # what the daemons said of it: whose decision replaced the task
            f"h{i}: {line}"
            for i in (1, 2, 3)
            for line in (bed.host_dir(i) / "shoald.log").read_text(errors="replace").splitlines()
            if any(word in line for word in ("keeper", task, "restarting", bed.node_id(3)))
        ]
        raise AssertionError(
            f"{exc}\nengine pid {engine}; containers: {seen}\nlogs:\n" + "\n".join(said[-80:])
        ) from exc


@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_losing_the_etcd_raft_leader_leaves_a_working_cluster_and_a_shoal_leader(
    bed: Bed, fault: str
) -> None:
    """kill: SIGKILL (connections refused at once); freeze: SIGSTOP, a hung member that
    keeps its connections open, so calls routed to it hang until their deadline."""
    victim = bed.etcd_leader()
    replicas = 2 if fault == "kill" else 3
    start = time.monotonic()
    if fault == "kill":
        bed.stop_etcd(victim, signal.SIGKILL)
    else:
        bed.freeze(f"etcd-{victim}")
    try:
        others = [i for i in bed.etcd_hosts if i != victim]
        wait_until_sync(lambda: bed.etcd_leader(others) != victim, 30, 0.1, "a new etcd raft leader")
        elected = time.monotonic() - start
        through = others[0]
        accepted = apply_when_able(bed, APP % replicas, through)
        wait_until_sync(
            placed(bed, "app", replicas, {"h1", "h2", "h3"}, through), CONVERGE, 0.2, "app rescaled"
        )

        def has_leader() -> bool:
            with bed.client(through) as c:
                resp = c.list_nodes()
            return resp.epoch > 0 and any(n.leader for n in resp.nodes)

        wait_until_sync(has_leader, CONVERGE, 0.2, "an acting shoal leader")
        took = time.monotonic() - start
        print(f"\netcd leader h{victim} ({fault}): new raft leader in {elected:.1f}s, "
              f"an apply accepted after {accepted:.1f}s, converged after {took:.1f}s")  # fmt: skip
    finally:
        if fault == "kill":
            bed.start_etcd(victim)
            bed.save()
        else:
            bed.freeze(f"etcd-{victim}", frozen=False)
    wait_until_sync(lambda: all(bed.etcd_healthy(i) for i in bed.etcd_hosts), 30, 0.1, "etcd whole")


def test_quorum_loss_fails_calls_fast_while_containers_and_mesh_serve_then_recovers(bed: Bed) -> None:
    wait_until_sync(placed(bed, "web", 2, {"h2", "h3"}), CONVERGE, 0.2, "web on h2 and h3")
    url = f"http://{bed.ip(1)}:18080/"
    wait_until_sync(lambda: not any(b.startswith("ERR") for b in get_from(bed, 1, url, 4)), CONVERGE, 0.2,
                    "the mesh serving before the outage")  # fmt: skip
    before = engines(bed, "web")
    lost = [2, 3]
    bed.stop_all([f"etcd-{i}" for i in lost], signal.SIGKILL)
    try:
        with bed.client(1, timeout=FAIL_BOUND + 10) as c:
            took, err = timed(lambda: c.apply(APP % 3, "app.yaml"))
        assert isinstance(err, Unavailable), f"apply without quorum: {err!r} after {took:.1f}s"
        assert took < FAIL_BOUND, f"UNAVAILABLE only after {took:.1f}s"
        print(f"\nquorum lost: apply answered UNAVAILABLE in {took:.1f}s ({err})")
        served, failed, until = 0, [], time.monotonic() + HOLD
        while time.monotonic() < until:  # the observation window
            bodies = get_from(bed, 1, url, 4)
            served += len(bodies)
            failed += [b for b in bodies if b.startswith("ERR")]
        assert failed == [], f"{len(failed)} of {served} requests failed without quorum: {failed[:3]}"
        assert engines(bed, "web") == before  # the same containers, none stopped or added
        print(f"quorum lost: the mesh served {served} requests over {HOLD:g}s, none failed")
    finally:
        for i in lost:
            bed.start_etcd(i, wait_ready=False)
        bed.save()
    start = time.monotonic()
    wait_until_sync(lambda: all(bed.etcd_healthy(i) for i in bed.etcd_hosts), 30, 0.1, "etcd whole")
    accepted = apply_when_able(bed, APP % 3)
    wait_until_sync(placed(bed, "app", 3, {"h1", "h2", "h3"}), CONVERGE, 0.2, "app at 3 after recovery")
    wait_until_sync(lambda: bed.ready([1, 2, 3]), CONVERGE, 0.2, "every host ready")
    assert not any(b.startswith("ERR") for b in get_from(bed, 1, url, 4))
    print(
        f"quorum back: apply accepted after {accepted:.1f}s, converged after {time.monotonic() - start:.1f}s"
    )
