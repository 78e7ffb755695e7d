"""Network aliases (decision 73): the spec's two forms of a `networks` entry, the claims
(`node.store.aliases`) written with the service (pure plan, then apply, stack deploy,
rollback, rm and the leader's rollback on a MemoryStore and on the session's etcd), and
what the name server answers per asking container (`NameTable.resolve`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from node.api import resolve
from node.api.services import ServiceWriter
from node.api.stacks import StackWriter
from node.model.domain import PortClaim, RolloutRecord, ServiceRecord, template_hash
from node.model.errors import FailedPrecondition, InvalidArgument, NotFound
from node.model.keys import Keys
from node.model.spec import ServiceSpec, SpecError, parse_spec, spec_from_stored, spec_to_dict
from node.model.spec_compat import known_paths, unknown_to, used_paths
from node.model.spec_networks import aliases_of, networks_of
from node.proxy import dnswire as w
from node.proxy.dnsserver import Resolver
from node.proxy.names import OUTSIDER, NameTable, VipRecord
from node.store import Compare, Delete, Put, Store, StoreUnavailable
from node.store.aliases import AliasTaken, file_conflicts, plan
from node.store.claims import Owner, Seen
from node.store.etcd import EtcdStore
from node.store.memory import MemoryStore
from tests.helpers import leader_with_events

KEYS = Keys()


def spec(name: str, networks: object, stack: str | None = None) -> ServiceSpec:
    data: dict[str, object] = {"name": name, "image": "i", "networks": networks}
    if stack:
        data["stack"] = stack
    return spec_from_stored(data)


# -- the spec ------------------------------------------------------------------------------


def test_both_forms_of_an_entry_and_what_they_mean() -> None:
    s = parse_spec(
        "name: app_db\nimage: x\nstack: app\n"
        "networks: [frontnet, {name: backnet, aliases: [database, db-primary]}, other_net]\n"
    )
    assert networks_of(s.networks, s.stack) == {"app_frontnet", "app_backnet", "other_net"}
    assert aliases_of(s.networks, s.stack) == {"app_backnet": {"database", "db-primary"}}
    stored = spec_to_dict(s)["networks"]
    assert stored == ["frontnet", {"name": "backnet", "aliases": ["database", "db-primary"]}, "other_net"]
    assert parse_spec(json.dumps(spec_to_dict(s))) == s


def test_the_plain_form_keeps_its_stored_form_hash_and_readers() -> None:
    """Decision 55: a spec that gives no aliases is stored, hashed and read as before; a
    `{name}` entry without aliases is a new form, so only nodes that know it may read it."""
    plain = parse_spec("name: a\nimage: x\nnetworks: [backnet]\n")
    assert spec_to_dict(plain)["networks"] == ["backnet"]
    assert template_hash(plain) == "b27c3be268277d68"  # as the build before aliases (and labels) hashed it
    old_build = known_paths() - {"networks.name", "networks.aliases"}
    assert "networks.aliases" in known_paths() and "networks.name" in known_paths()
    assert unknown_to(plain, [("n1", old_build)]) == {}
    aliased = parse_spec("name: a\nimage: x\nnetworks: [{name: backnet, aliases: [db]}]\n")
    assert {"networks.name", "networks.aliases"} <= used_paths(aliased)
    assert unknown_to(aliased, [("n1", old_build)]) == {"networks.aliases": ["n1"], "networks.name": ["n1"]}


@pytest.mark.parametrize(
    ("networks", "message"),
    [
        (
            "[{name: b, aliases: [DB]}]",
            "s.yaml:3:32: networks[0].aliases[0]: an alias must be 1 to 63 of a-z",
        ),
        ("[{name: b, aliases: [db.internal]}]", "no '.', '_' or capitals), got 'db.internal'"),
        ("[{name: b, aliases: [-db]}]", "networks[0].aliases[0]: an alias must be"),
        ("[{name: b, aliases: [x, x]}]", "networks[0].aliases[1]: alias 'x' is given twice for network 'b'"),
        (
            "[{name: b, aliases: [x]}, {name: b, aliases: [x]}]",
            "networks[1].aliases[0]: alias 'x' is given twice",
        ),
        ("[{name: b, alias: [x]}]", "networks[0].alias: unknown field 'alias'; did you mean 'aliases'?"),
        ("[{aliases: [x]}]", "networks[0].name: missing required field 'name'"),
        ("[{name: B}]", "networks[0].name: must be 1 to 63 of a-z"),
        ("[3]", "networks[0]: must be a string, got number 3"),
        ("[{name: b, aliases: x}]", "networks[0].aliases: must be a list"),
        (
            "[{name: a, aliases: [" + ", ".join(f"a{i}" for i in range(9)) + "]}, "
            "{name: b, aliases: [" + ", ".join(f"b{i}" for i in range(9)) + "]}]",
            "networks[1].aliases[7]: at most 16 aliases in all",
        ),
    ],
)
def test_bad_aliases_are_refused_at_their_place(networks: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(f"name: a\nimage: x\nnetworks: {networks}\n", "s.yaml")
    assert message in str(err.value)
    assert "function-after" not in str(err.value) and ".entry" not in str(err.value)


# -- the claims: the pure decision ---------------------------------------------------------


def claim(service: str, uid: str = "u1") -> PortClaim:
    return PortClaim(service, uid)


DB = spec("db", [{"name": "backnet", "aliases": ["database"]}])
KEY = KEYS.netalias("backnet", "database")


def test_a_free_alias_is_claimed_compared_absent() -> None:
    out = plan(KEYS, "db", "u1", None, DB, {}, {}, now=5.0)
    assert out.compares == [Compare(KEY, "create", "==", 0)]
    assert out.ops == [Put(KEY, PortClaim("db", "u1", 5.0).to_json())]


def test_a_held_alias_needs_no_write_and_a_dropped_one_is_freed() -> None:
    held = {("backnet", "database"): Seen(claim("db"), 7)}
    assert plan(KEYS, "db", "u1", DB, DB, held, {}).ops == []
    out = plan(KEYS, "db", "u1", DB, spec("db", ["backnet"]), held, {})
    assert (out.compares, out.ops) == ([], [Delete(KEY)])
    assert plan(KEYS, "db", "u1", DB, None, held, {}).ops == [Delete(KEY)]  # rm
    theirs = {("backnet", "database"): Seen(claim("other"), 7)}
    assert plan(KEYS, "db", "u1", DB, None, theirs, {}).ops == [], "never frees another's claim"


def test_an_alias_of_another_live_service_is_refused_naming_it() -> None:
    seen = {("backnet", "database"): Seen(claim("pg", "u9"), 7)}
    with pytest.raises(AliasTaken) as err:
        plan(KEYS, "db", "u1", None, DB, seen, {"pg": Owner("u9", 3)})
    assert str(err.value) == (
        "networks[0].aliases[0]: alias 'database' on network 'backnet' is already held by service 'pg'; "
        "choose another alias, or remove it from 'pg' first"
    )


def test_the_same_alias_on_another_network_is_anothers_to_hold() -> None:
    other = spec("db", [{"name": "frontnet", "aliases": ["database"]}])
    out = plan(KEYS, "db", "u1", None, other, {}, {})
    assert out.ops == [Put(KEYS.netalias("frontnet", "database"), PortClaim("db", "u1").to_json())]


def test_a_stale_claim_is_taken_over_compared_on_the_claim_and_its_old_owner() -> None:
    seen = {("backnet", "database"): Seen(claim("pg", "old"), 7)}
    out = plan(KEYS, "db", "u1", None, DB, seen, {"pg": Owner("new", 3)})  # pg re-created since
    assert out.compares == [Compare(KEY, "mod", "==", 7), Compare(KEYS.service("pg"), "mod", "==", 3)]
    gone = plan(KEYS, "db", "u1", None, DB, seen, {"pg": Owner()})  # pg removed by an older build
    assert gone.compares == [Compare(KEY, "mod", "==", 7), Compare(KEYS.service("pg"), "mod", "==", 0)]


def test_a_stack_name_makes_the_claim_the_stacks_network() -> None:
    s = spec(
        "app_db", [{"name": "backnet", "aliases": ["database"]}, {"name": "x_net", "aliases": ["d"]}], "app"
    )
    keys = [op.key for op in plan(KEYS, "app_db", "u1", None, s, {}, {}).ops]
    assert keys == [KEYS.netalias("app_backnet", "database"), KEYS.netalias("x_net", "d")]


def test_one_stack_file_may_not_give_one_alias_twice() -> None:
    a = spec("app_a", [{"name": "backnet", "aliases": ["database", "x"]}], "app")
    b = spec(
        "app_b", [{"name": "backnet", "aliases": ["database"]}, {"name": "front", "aliases": ["x"]}], "app"
    )
    assert file_conflicts([a, b]) == [
        "app_b: networks[0].aliases[0]: alias 'database' on network 'app_backnet' is asked for by "
        "service 'app_a' too; an alias names one service on a network"
    ]


# -- the writes, on a MemoryStore and on a real etcd ---------------------------------------


@dataclass
class Writer:
    store: Store
    keys: Keys

    def api(self, node: str = "n1") -> ServiceWriter:
        return ServiceWriter(self.store, self.keys, node)

    async def claims(self) -> dict[str, str]:
        kvs, _ = await self.store.range(self.keys.netaliases)
        return {
            self.keys.tail(kv.key, self.keys.netaliases): PortClaim.from_json(kv.value).service for kv in kvs
        }

    async def revision(self) -> int:
        return (await self.store.range(self.keys.prefix))[1]


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.integration)])
async def writer(request: pytest.FixtureRequest) -> AsyncIterator[Writer]:
    if request.param == "memory":
        yield Writer(MemoryStore(), KEYS)
        return
    store = EtcdStore([request.getfixturevalue("etcd_endpoint")], timeout=5.0)
    await store.connect()
    try:
        yield Writer(store, Keys(request.getfixturevalue("etcd_prefix")))
    finally:
        await store.close()


def yaml(name: str, *aliases: str, image: str = "shoal-demo/web:1", net: str = "backnet") -> str:
    if not aliases:
        return f"name: {name}\nimage: {image}\nnetworks: [{net}]\n"
    return f"name: {name}\nimage: {image}\nnetworks: [{{name: {net}, aliases: [{', '.join(aliases)}]}}]\n"


async def test_ten_concurrent_applies_of_one_alias_exactly_one_wins(writer: Writer) -> None:
    """Ten services on ten nodes' writers at once: one holds the alias, nine are refused
    naming it and write nothing (the claim is compared in the service write's transaction)."""
    names = [f"svc{i}" for i in range(10)]
    results = await asyncio.gather(
        *(writer.api(f"n{i}").apply(yaml(n, "database"), f"{n}.yaml") for i, n in enumerate(names)),
        return_exceptions=True,
    )
    won = [names[i] for i, r in enumerate(results) if not isinstance(r, BaseException)]
    assert len(won) == 1, results
    for r in results:
        if isinstance(r, BaseException):
            assert isinstance(r, AliasTaken) and isinstance(r, FailedPrecondition), repr(r)
            assert f"alias 'database' on network 'backnet' is already held by service '{won[0]}'" in str(r)
    kvs, _ = await writer.store.range(writer.keys.services)
    assert [ServiceRecord.from_json(kv.value).name for kv in kvs] == won
    assert await writer.claims() == {"backnet/database": won[0]}


async def test_a_refused_apply_writes_nothing_and_the_same_alias_elsewhere_is_fine(writer: Writer) -> None:
    api = writer.api()
    await api.apply(yaml("db", "database", "db-primary"), "db.yaml")
    before = await writer.revision()
    with pytest.raises(AliasTaken, match="held by service 'db'"):
        await api.apply(yaml("pg", "cache", "db-primary"), "pg.yaml")
    assert await writer.revision() == before, "a refused apply writes nothing, not even its free alias"
    await api.apply(yaml("pg", "database", net="frontnet"), "pg.yaml")  # another network: its own names
    assert await writer.claims() == {
        "backnet/database": "db",
        "backnet/db-primary": "db",
        "frontnet/database": "pg",
    }


async def test_drop_rename_and_rm_free_the_claims(writer: Writer) -> None:
    api = writer.api()
    await api.apply(yaml("db", "database", "old"), "db.yaml")
    await api.apply(yaml("db", "database", "new"), "db.yaml")
    assert await writer.claims() == {"backnet/database": "db", "backnet/new": "db"}
    await api.scale("db", 3)  # a write that moves no claim keeps them
    assert await writer.claims() == {"backnet/database": "db", "backnet/new": "db"}
    await api.remove("db")
    assert await writer.claims() == {}
    await api.apply(yaml("pg", "database"), "pg.yaml")  # free again
    assert await writer.claims() == {"backnet/database": "pg"}


async def test_a_rollback_onto_an_alias_taken_meanwhile_is_refused(writer: Writer) -> None:
    api = writer.api()
    await api.apply(yaml("db", "database"), "db.yaml")
    await api.apply(yaml("db", image="shoal-demo/web:2"), "db.yaml")  # drops the alias
    await api.apply(yaml("pg", "database"), "pg.yaml")
    before = await writer.revision()
    with pytest.raises(
        AliasTaken, match="alias 'database' on network 'backnet' is already held by service 'pg'"
    ):
        await api.rollback("db")
    assert await writer.revision() == before


async def test_the_leaders_rollback_onto_a_taken_alias_is_refused_then_goes_through(writer: Writer) -> None:
    api, keys = writer.api(), writer.keys
    await api.apply(yaml("db", "database"), "db.yaml")
    bad, _ = await api.apply(yaml("db", image="shoal-demo/web:bad"), "db.yaml")
    await api.apply(yaml("pg", "database"), "pg.yaml")
    leader, emitted = await leader_with_events(writer.store, keys)
    failed = RolloutRecord("db", 1, bad.version, "t", state="failed", uid=bad.uid)
    before = await writer.revision()
    await leader._roll_back([failed], {})
    [(kind, message)] = emitted
    assert kind == "rollout.rollback_refused" and "alias 'database' on network 'backnet'" in message
    assert "held by service 'pg'" in message
    assert await writer.revision() == before, "a refused rollback writes nothing"
    await api.remove("pg")
    await leader.services.relist()
    await leader._roll_back([failed], {})
    current, _ = await api.read("db")
    assert current.rollback_of == bad.version
    assert await writer.claims() == {"backnet/database": "db"}


STACK = """\
services:
  db:
    image: shoal-demo/web:1
    networks: [{name: backnet, aliases: [database]}]
  web:
    image: shoal-demo/web:1
    networks: [backnet]
"""


async def test_stack_deploy_claims_refuses_and_rm_frees(writer: Writer) -> None:
    stacks = StackWriter(writer.api())
    await stacks.deploy(STACK, "app.yaml", "app")
    assert await writer.claims() == {"app_backnet/database": "app_db"}
    before = await writer.revision()
    twice = STACK.replace("networks: [backnet]", "networks: [{name: backnet, aliases: [database]}]")
    with pytest.raises(
        InvalidArgument, match=r"app_web: networks.0..aliases.0.: alias 'database' on network "
    ):
        await stacks.deploy(twice, "app.yaml", "app")
    other = twice.replace(
        "db:\n    image: shoal-demo/web:1\n    networks: [{name: backnet, aliases: [database]}]",
        "db:\n    image: shoal-demo/web:1\n    networks: [backnet]",
    )
    with pytest.raises(AliasTaken, match="held by service 'app_db'"):  # a move needs two deploys (documented)
        await stacks.deploy(other, "app.yaml", "app")
    assert await writer.revision() == before, "nothing written"
    joined = "name: x\nimage: i\nnetworks: [{name: app_backnet, aliases: [database]}]\n"
    with pytest.raises(
        AliasTaken, match="alias 'database' on network 'app_backnet' is already held by service 'app_db'"
    ):
        await writer.api().apply(joined, "x.yaml")
    await stacks.remove("app")
    assert await writer.claims() == {}


# -- the names -----------------------------------------------------------------------------


def record(
    name: str, networks: object, stack: str | None = None, ports: tuple[int, ...] = (5432,)
) -> ServiceRecord:
    data: dict[str, object] = {"name": name, "image": "i", "ports": [{"container": p} for p in ports]}
    if networks is not None:
        data["networks"] = networks
    if stack:
        data["stack"] = stack
    return ServiceRecord(name, 1, spec_from_stored(data), 0.0, "n1", uid=f"u-{name}")


SERVICES = [
    record("app_db", ["frontnet", {"name": "backnet", "aliases": ["database", "db-primary"]}], "app"),
    record("app_api", ["frontnet", "backnet"], "app"),
    record("app_web", ["frontnet"], "app"),
    record("other_tool", ["app_backnet"], "other"),
    record("lone", None),
    record("app_pg", [{"name": "otherdb", "aliases": ["database"]}], "app"),  # the same alias, another net
    record("app_both", ["backnet", "otherdb"], "app"),
    record("app_shadow", [{"name": "frontnet", "aliases": ["api", "lone"]}], "app"),
]
VIPS = [VipRecord(s.name, s.uid, f"10.213.0.{16 + i}") for i, s in enumerate(SERVICES)]
DB_VIP, PG_VIP = VIPS[0].address, VIPS[5].address
TABLE = NameTable.build(SERVICES, VIPS)


def answer(name: str, asker: str | None) -> str | None:
    t = TABLE.resolve(name, asker)
    return t.address if t is not None else None


@pytest.mark.parametrize(
    ("name", "asker", "expected"),
    [
        ("database", "app_api", DB_VIP),  # on backnet: the alias answers the service's VIP
        ("database.app.shoal", "app_api", DB_VIP),  # the stack's search domain
        ("db-primary", "app_api", DB_VIP),
        ("app.database", "app_api", DB_VIP),  # <stack>.<alias>
        ("DATABASE.shoal.", "app_api", DB_VIP),
        ("database.other.shoal", "other_tool", DB_VIP),  # another stack on app_backnet, its search domain
        ("app.database", "other_tool", DB_VIP),
        ("database", "app_web", None),  # frontnet only: app_db by name, but not its backnet alias
        ("app_db", "app_web", DB_VIP),
        ("database", "lone", None),  # the cluster network
        ("database", OUTSIDER, None),
        ("database", None, DB_VIP),  # the host sees every network; the first network's by name
        ("database", "app_pg", PG_VIP),  # otherdb's own database
        ("database", "app_both", DB_VIP),  # on both: app_backnet sorts first
        ("api.app.shoal", "app_web", VIPS[1].address),  # a service's name is never shadowed by an alias
        ("lone", "app_web", None),  # lone is not on frontnet; the alias there answers...
    ],
)
def test_an_alias_answers_only_on_its_network(name: str, asker: str | None, expected: str | None) -> None:
    if name == "lone" and asker == "app_web":
        expected = VIPS[7].address  # ...app_shadow's VIP, as a per-network name (Docker does the same)
    assert answer(name, asker) == expected


def test_the_name_server_answers_a_srv_and_nxdomain_per_asker() -> None:
    resolver = Resolver(lambda: TABLE)

    def ask(name: str, qtype: int, asker: str | None) -> w.Answer:
        reply = resolver.answer(w.parse_query(w.build_query(name, qtype)), asker)
        assert reply is not None
        return w.parse_answer(reply)

    a = ask("database.app.shoal", w.A, "app_api")
    assert (a.rcode, a.a) == (w.NOERROR, [DB_VIP])
    srv = ask("_pg._tcp.database.app.shoal", w.SRV, "app_api")
    assert (srv.rcode, srv.srv, srv.a) == (w.NOERROR, [(5432, "database.app.shoal")], [DB_VIP])
    assert ask("database.app.shoal", w.A, "app_web").rcode == w.NXDOMAIN
    assert ask("_pg._tcp.database.app.shoal", w.SRV, "app_web").rcode == w.NXDOMAIN
    assert resolver.answer(w.parse_query(w.build_query("database", w.A)), "app_web") is None  # forwarded


async def test_etcd_lost_before_or_after_the_transaction() -> None:
    """The claim and the service are one transaction: etcd lost before it writes neither;
    an answer lost after it leaves both, and the apply sent again finds them its own."""
    store = MemoryStore()
    api = ServiceWriter(store, KEYS, "n1")
    real_txn = store.txn

    async def dies_before(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise StoreUnavailable("etcd went away")

    store.txn = dies_before  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await api.apply(yaml("db", "database"), "db.yaml")
    assert (await store.range(KEYS.prefix))[0] == []

    async def answer_lost(*args, **kwargs):  # type: ignore[no-untyped-def]
        await real_txn(*args, **kwargs)
        raise StoreUnavailable("the answer was lost")

    store.txn = answer_lost  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await api.apply(yaml("db", "database"), "db.yaml")
    store.txn = real_txn  # type: ignore[method-assign]
    record, changed = await api.apply(yaml("db", "database"), "db.yaml")
    assert (record.version, changed) == (1, False)
    kv = await store.get(KEYS.netalias("backnet", "database"))
    assert kv is not None and PortClaim.from_json(kv.value).uid == record.uid


async def test_resolve_finds_a_service_by_its_alias_and_names_both_holders_of_a_shared_one(
    writer: Writer,
) -> None:
    """`shoal resolve NAME`: a service's name first, else the one live holder of the alias
    on any network; an alias two services hold (on two networks) answers neither, and a
    stale claim (its service re-created) is no holder."""
    api = writer.api()
    await api.apply(yaml("db", "database", "db-primary"), "db.yaml")
    await api.apply(yaml("db-primary", image="shoal-demo/web:2", net="frontnet"), "x.yaml")
    assert await resolve.target(writer.store, writer.keys, "db") == ("db", ())
    assert await resolve.target(writer.store, writer.keys, "database") == ("db", ("backnet",))
    assert await resolve.target(writer.store, writer.keys, "db-primary") == ("db-primary", ()), "a name wins"
    answer = resolve.as_alias(
        await resolve.resolve(writer.store, writer.keys, "db", None), "database", ("backnet",)
    )
    assert (answer.name, answer.alias, list(answer.alias_networks)) == ("db", "database", ["backnet"])
    await api.apply(yaml("pg", "database", net="frontnet"), "pg.yaml")
    with pytest.raises(
        FailedPrecondition,
        match=r"'database' is an alias of several services \(db on backnet, pg on frontnet\)",
    ):
        await resolve.target(writer.store, writer.keys, "database")
    with pytest.raises(NotFound, match="service 'nothing' not found, nor a network alias"):
        await resolve.target(writer.store, writer.keys, "nothing")
    # a claim whose service is gone or re-created is stale: not a holder
    await writer.store.put(writer.keys.netalias("backnet", "ghost"), PortClaim("gone", "uid0", 1.0).to_json())
    with pytest.raises(NotFound):
        await resolve.target(writer.store, writer.keys, "ghost")
