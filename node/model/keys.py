"""Every etcd key shoal uses, in one place.

All state lives under a prefix (default `/shoal/v1/`):

| key                               | writer                 | lifetime            |
|-----------------------------------|------------------------|---------------------|
| `nodes/<node>`                    | the node               | on the node's lease |
| `leader`                          | election               | leader's lease; create revision = epoch |
| `down/<node>`                     | leader only, fenced    | while the node is dead; reaped (1) |
| `nodespec/<node>`                 | API, any node          | until changed (drain, labels) |
| `services/<name>`                 | API, any node          | until `rm`          |
| `history/<name>/<version>`        | API, any node          | last 10 versions (2); `rm` |
| `tasks/<service>/<slot>`          | leader only, fenced    | until scaled away   |
| `status/<task-id>`                | the task's agent       | node's lease; on change only (3) |
| `endpoints/<service>/<task-id>`   | the task's agent       | on the node's lease |
| `events/<time-ns>/<node>/<seq>`   | every node             | `events_max`, `events_max_age` (5) |
| `binds/<service>/<node>`          | the node's proxy       | on the node's lease |
| `rollouts/<service>`              | leader only, fenced    | until `rm`          |
| `pending/<service>`               | leader only, fenced    | while replicas wait for a node |
| `ports/<published>`               | API, leader (rollback) | while published; <= 65,535 |
| `ingress/<host>/<path>`           | API, leader (rollback) | while routed (12)   |
| `security/ca.crt`                 | `cluster init`         | forever             |
| `security/ca.key`                 | `cluster init`         | forever             |
| `security/join`                   | init, `rotate-token`; any node renewing its cert | until rotated |
| `tokens/<id>`                     | init, `token create`   | until revoked/expired, then reaped (1) |
| `joins/<key-id>`                  | `Peer/Join`, any node  | until the join token is rotated; its uses |
| `joins/<key-id>/<node>`           | `Peer/Join`, any node  | until rotated; ≤ `join_token_uses` |
| `secrets/<name>`                  | API (create, stacks)   | `secret rm`, its stack's (13); sealed (4) |
| `configs/<name>`                  | API (create, stacks)   | `config rm`, its stack's (13) |
| `objuse/<kind>/<name>`            | API (apply, rm, stacks) | while the secret/config exists (4) |
| `vips/<service>`                  | any node's names (7)   | while the service incarnation exists |
| `vipaddrs/<address>`              | any node's names (7)   | with its `vips/` record |
| `vipcursor`                       | any node's names (7)   | forever; one key   |
| `netaliases/<network>/<alias>`    | API, leader (rollback) | with its service; <= 16 per service (14) |
| `volumes/<service>/<slot>/<name>` | leader (fenced), API, agent | until `rm` of the service or volume (6) |
| `jobs/<service>`                  | leader only, fenced    | while the job's service exists (8) |
| `runs/<service>/<tick>`           | leader only, fenced    | `schedule.history` per scheduled job (9) |
| `jobruns/<service>/<tick>`        | leader only, fenced    | with its `runs/` record (11) |

| `pools`                           | API (`pool apply`)     | until changed (10)  |
| `poolnodes/<pool>/<node>`         | leader only, fenced    | from the request to the node's return (10) |

Bounds (issue 11): every prefix is bounded by the nodes, services, replicas and
tokens in force, never by time. The leader (`leader.upkeep`, fenced) compacts etcd to
the revision of `etcd_retention` (600 s) ago and defragments one member at a time
past `etcd_defrag_ratio`. (1) reaped by the leader, fenced, once the node has no
registry entry and neither its mark nor its ring was written for `reap_after` (1 day);
a token once revoked or expired for `reap_after`. (2) `history_limit` (10), pruned in
the same transaction that adds a version. (3) written when it changes only: liveness
is the node's lease, there is no periodic rewrite.

A `rollouts/` record an `rm` raced (written by a pass that planned the service just
before) is deleted by the leader's next pass, while the service key is absent.
`ports/<published>` says which service incarnation (name and uid) owns a published
port; it is written in the same transaction as `services/<name>` (`node.store.ports`), so two
services never both get one port, whatever the order of concurrent applies.
`binds/` holds the ports a node's proxy cannot bind, while that lasts. `security/`
holds the CA certificate (public), the CA key encrypted (its passphrase is only on the
nodes' disks), and the join token's certificate, key id and the token sealed under that
passphrase; `tokens/` the client tokens' records (role, sha256, never the secret).
`joins/` records each use of the current join token (per node id, and a count), so a
token admits a node id once and at most `join_token_uses` hosts; a rotation clears it.
Nothing there is a usable secret without a node's disk (`node.security.cluster`).
(4) `secrets/` values are AES-GCM sealed under the cluster key (`node.security.sealing`);
`objuse/<kind>/<name>` is rewritten by every apply that references the object, so a
`secret rm` that compares its revision never races an apply into using a removed one.
Bounded by the secrets and configs in force.
(5) the cluster's event log (`node.telemetry.events`), keyed by the emitter's wall clock
in nanoseconds (20 digits): the leader (`leader.upkeep`, fenced) deletes, in one range
delete, every event older than `events_max_age` and the oldest beyond `events_max`. A
node's loss does not remove its events; they age out like the others.
(6) a slot's volume claim (`node.model.domain.VolumeClaim`): which node holds its data.
Written by the leader when the slot is first placed; deleted with the service by `rm`;
`volume rm` marks it `removing` and the holding node's agent deletes it once the Docker
volume is gone. Bounded by the slots of services with volumes.

(7) issue 13, names (`node.proxy.names`, `node.proxy.vipstore`): the virtual address of
each service incarnation and its claim, written together in one transaction compared
on the service key, so two nodes allocating at once never give one address twice; the
cursor makes a released address the last to be reused. Bounded by the services.
(8) `jobs/<service>`: a `kind: job` service's progress (`node.model.jobs`), one per job,
at most completions + retries task ids; a record of another incarnation (uid) is
replaced, one of a removed service is deleted by the leader's next pass.
(9) `runs/<service>/<tick>`: one record per tick of a scheduled job (`node.model.runs`),
`<tick>` its unix second, zero-padded. Written (create-only, fenced) before the tick's
run starts; the oldest beyond `schedule.history` are pruned, all of a removed service's
by the leader's next pass.

(11) `jobruns/<service>/<tick>`: the job record of a scheduled run that is no longer the
latest (decision 69): `jobs/<service>` is the latest run, earlier ones still going
(`concurrency: allow`) or whose containers are kept are stepped from here. Written with
the next run's record, deleted with its `runs/` record; so at most `schedule.history`.

(12) decision 77: which service incarnation routes one ingress (host, path prefix),
written in the same transaction as `services/<name>` (`node.store.ingress_claims`), as
`ports/` is. The route is normalized as the entrance matches it: the host lowercased
without a trailing dot, the path without a trailing `/` (`/` when empty), and then
percent-encoded whole (`/api` -> `%2Fapi`), so the key has one segment per part.
Bounded by the services' rules (at most 64 each).

(10) issue 15, node pools (`node.model.pools`, `leader.pools`): the pools' declaration,
and one record per node a pool asked its provider for, written before the provider is
called. Bounded by the pools' `max`.

(13) decision 72: a secret or config a Compose stack deploy wrote (`<stack>_<name>`) names
its stack in its record (`ObjectRecord.stack`) and is written in the stack's transaction;
`stack rm`, and a redeploy whose file dropped it once no service uses it, delete it (and
its `objuse/` key) in theirs. Bounded with the others by the objects in force.
(14) decision 73: `netaliases/<network>/<alias>` holds which service incarnation (name,
uid) answers by `alias` on `network` (a `PortClaim` record), written and deleted in the
same transaction as `services/<name>` (`node.store.aliases`), like `ports/`: two services
never hold one alias on one network, whatever the order of concurrent applies. At most
`MAX_ALIASES` (16) per service.

Pure: no etcd import. Names are validated before they reach here (spec module),
so `/` never appears inside a segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

DEFAULT_PREFIX = "/shoal/v1/"


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or not self.prefix.endswith("/"):
            raise ValueError(f"etcd prefix must start and end with '/': {self.prefix!r}")

    # prefixes (for ranges and watches)
    @property
    def nodes(self) -> str:
        return f"{self.prefix}nodes/"

    @property
    def services(self) -> str:
        return f"{self.prefix}services/"

    @property
    def tasks(self) -> str:
        return f"{self.prefix}tasks/"

    @property
    def status_all(self) -> str:
        return f"{self.prefix}status/"

    @property
    def endpoints_all(self) -> str:
        return f"{self.prefix}endpoints/"

    @property
    def down_all(self) -> str:
        return f"{self.prefix}down/"

    @property
    def restarting_all(self) -> str:
        """`restarting/<node>`: a node's daemon stopped to come back (an upgrade, a restart),
        on a lease of `restart_grace` seconds: its tasks stay while the mark lives."""
        return f"{self.prefix}restarting/"

    @property
    def events(self) -> str:
        return f"{self.prefix}events/"

    @property
    def nodespecs(self) -> str:
        return f"{self.prefix}nodespec/"

    @property
    def security(self) -> str:
        return f"{self.prefix}security/"

    @property
    def tokens(self) -> str:
        return f"{self.prefix}tokens/"

    # single keys
    @property
    def leader(self) -> str:
        return f"{self.prefix}leader"

    @property
    def ca_cert(self) -> str:
        return f"{self.security}ca.crt"

    @property
    def ca_key(self) -> str:
        return f"{self.security}ca.key"

    @property
    def join(self) -> str:
        return f"{self.security}join"

    @property
    def joins(self) -> str:
        return f"{self.prefix}joins/"

    def join_uses(self, key_id: str) -> str:
        """How many hosts joined with the join token of `key_id` (a count)."""
        return f"{self.joins}{key_id}"

    def join_use(self, key_id: str, node: str) -> str:
        """The record of node id `node` joining with that token (`JoinUse`)."""
        return f"{self.joins}{key_id}/{node}"

    def token(self, token_id: str) -> str:
        return f"{self.tokens}{token_id}"

    def node(self, node: str) -> str:
        return f"{self.nodes}{node}"

    def service(self, name: str) -> str:
        return f"{self.services}{name}"

    def history(self, name: str) -> str:
        return f"{self.prefix}history/{name}/"

    def history_version(self, name: str, version: int) -> str:
        return f"{self.history(name)}{version:012d}"

    def service_tasks(self, service: str) -> str:
        return f"{self.tasks}{service}/"

    def task(self, service: str, slot: int) -> str:
        return f"{self.service_tasks(service)}{slot}"

    def status(self, task_id: str) -> str:
        return f"{self.status_all}{task_id}"

    def endpoints(self, service: str) -> str:
        return f"{self.endpoints_all}{service}/"

    def endpoint(self, service: str, task_id: str) -> str:
        return f"{self.endpoints(service)}{task_id}"

    @property
    def rollouts(self) -> str:
        return f"{self.prefix}rollouts/"

    def rollout(self, service: str) -> str:
        return f"{self.rollouts}{service}"

    @property
    def pendings(self) -> str:
        return f"{self.prefix}pending/"

    def pending(self, service: str) -> str:
        """Why some of a service's replicas have no node (`PendingRecord`), while that lasts."""
        return f"{self.pendings}{service}"

    @property
    def ports(self) -> str:
        return f"{self.prefix}ports/"

    def port(self, published: int) -> str:
        """Which service owns published port `published` (`PortClaim`)."""
        return f"{self.ports}{published}"

    @property
    def ingress(self) -> str:
        return f"{self.prefix}ingress/"

    def route(self, host: str, path: str) -> str:
        """Which service routes ingress `host` + `path` prefix (`PortClaim`), normalized as
        the entrance matches a request (note 12 above)."""
        host = host.lower().rstrip(".")
        path = path.rstrip("/") or "/"
        return f"{self.ingress}{host}/{quote(path, safe='')}"

    def binds(self, service: str) -> str:
        return f"{self.prefix}binds/{service}/"

    def bind(self, service: str, node: str) -> str:
        return f"{self.binds(service)}{node}"

    def down(self, node: str) -> str:
        return f"{self.down_all}{node}"

    def restarting(self, node: str) -> str:
        return f"{self.restarting_all}{node}"

    def nodespec(self, node: str) -> str:
        """The operator's settings of a node: availability (drain) and labels."""
        return f"{self.nodespecs}{node}"

    def event(self, time_ns: int, node: str, seq: int) -> str:
        """One event of the cluster log: keys sort by the emitter's wall clock (issue 14)."""
        return f"{self.event_at(time_ns)}/{node}/{seq}"

    def event_at(self, time_ns: int) -> str:
        """Where events of `time_ns` begin: the end of a range of older ones (trimming)."""
        return f"{self.events}{time_ns:020d}"

    # secrets and configs (issue 13): kind is "secret" or "config"
    def objects(self, kind: str) -> str:
        return f"{self.prefix}{kind}s/"

    def object(self, kind: str, name: str) -> str:
        return f"{self.objects(kind)}{name}"

    def object_use(self, kind: str, name: str) -> str:
        return f"{self.prefix}objuse/{kind}/{name}"

    # service names (issue 13): the virtual address of each service incarnation
    @property
    def vips(self) -> str:
        return f"{self.prefix}vips/"

    def vip(self, service: str) -> str:
        return f"{self.vips}{service}"

    @property
    def vipaddrs(self) -> str:
        return f"{self.prefix}vipaddrs/"

    def vipaddr(self, address: str) -> str:
        return f"{self.vipaddrs}{address}"

    @property
    def vipcursor(self) -> str:
        return f"{self.prefix}vipcursor"

    @property
    def netaliases(self) -> str:
        return f"{self.prefix}netaliases/"

    def netalias(self, network: str, alias: str) -> str:
        """Which service holds `alias` on `network` (`PortClaim`'s record; decision 73)."""
        return f"{self.netaliases}{network}/{alias}"

    # issue 13 item 5: volume claims
    @property
    def volumes(self) -> str:
        return f"{self.prefix}volumes/"

    def service_volumes(self, service: str) -> str:
        return f"{self.volumes}{service}/"

    def volume(self, service: str, slot: int, name: str) -> str:
        return f"{self.volumes}{service}/{slot}/{name}"

    # jobs (issue 18)
    @property
    def jobs(self) -> str:
        return f"{self.prefix}jobs/"

    def job(self, service: str) -> str:
        return f"{self.jobs}{service}"

    # runs of scheduled jobs (issue 18 item 3)
    @property
    def runs(self) -> str:
        return f"{self.prefix}runs/"

    def service_runs(self, service: str) -> str:
        return f"{self.runs}{service}/"

    def run(self, service: str, tick: float) -> str:
        return f"{self.runs}{service}/{int(tick):012d}"

    # job records of earlier runs (decision 69)
    @property
    def jobruns(self) -> str:
        return f"{self.prefix}jobruns/"

    def service_jobruns(self, service: str) -> str:
        return f"{self.jobruns}{service}/"

    def jobrun(self, service: str, tick: float) -> str:
        return f"{self.jobruns}{service}/{int(tick):012d}"

    # node pools (issue 15, capacity on demand)
    @property
    def pools(self) -> str:
        """The cluster's pools (`shoal pool apply`): one key."""
        return f"{self.prefix}pools"

    @property
    def poolnodes(self) -> str:
        return f"{self.prefix}poolnodes/"

    def poolnode(self, pool: str, node: str) -> str:
        """One node a pool asked its provider for (`node.model.pools.PoolNode`)."""
        return f"{self.poolnodes}{pool}/{node}"

    # issue 15: autoscaling (node.model.load)
    @property
    def loads(self) -> str:
        return f"{self.prefix}load/"

    def load(self, node: str) -> str:
        """A node's proxy rates and replica usage per service (`LoadRecord`), on its lease."""
        return f"{self.loads}{node}"

    @property
    def autoscales(self) -> str:
        return f"{self.prefix}autoscale/"

    def autoscale(self, service: str) -> str:
        """The leader's view of an autoscaled service (`AutoscaleStatus`)."""
        return f"{self.autoscales}{service}"

    # parsing
    def tail(self, key: str, prefix: str) -> str:
        """The part of `key` after `prefix` (which must be one of the prefixes above)."""
        if not key.startswith(prefix):
            raise ValueError(f"{key!r} is not under {prefix!r}")
        return key[len(prefix) :]

    def parse_task(self, key: str) -> tuple[str, int]:
        """`tasks/<service>/<slot>` -> (service, slot)."""
        service, _, slot = self.tail(key, self.tasks).partition("/")
        return service, int(slot)
