"""Stacks: the stack file loader, cycles, the depends_on gate, and the one-transaction
deploy/remove against the in-memory store (docs/stacks.md)."""

from __future__ import annotations

import threading

import pytest

from leader.dependencies import gated, observer, waiting_plan
from node.api.services import ServiceWriter
from node.api.stacks import StackWriter
from node.compose.depends import DepState, unmet, waiting_reason
from node.compose.stackfile import find_cycle, parse_stack
from node.model.domain import Assignment, ServiceRecord, TaskStatus
from node.model.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from node.model.keys import Keys
from node.model.spec import SpecError, parse_spec
from node.store import StoreUnavailable
from node.store.memory import MemoryStore

KEYS = Keys()
APP = """\
name: shop
services:
  db:
    image: shoal/demo
    health: {tcp: {port: 6379}}
  web:
    image: shoal/demo
    replicas: 2
    ports: [{container: 8000, published: 18080}]
    depends_on: {db: healthy}
"""


def test_stack_file_names_services_stack_underscore_service() -> None:
    stack, specs = parse_stack(APP, "app.yaml")
    assert stack == "shop"
    assert [s.name for s in specs] == ["shop_db", "shop_web"]
    assert specs[1].stack == "shop" and specs[1].depends_on == {"shop_db": "healthy"}
    assert parse_stack(APP, "app.yaml", "other")[1][0].name == "other_db"  # NAME wins over name:


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "services:\n  db:\n    image: a\n    replicas: x\n",
            "app.yaml:4:5: services.db.replicas: must be an integer",
        ),
        (
            "services:\n  db:\n    image: a\n    depends_on: [nope]\n",
            "app.yaml:4:5: services.db.depends_on: 'nope'",
        ),
        ("services:\n  Db:\n    image: a\n", "app.yaml:2:3: services.Db"),
        ("services:\n  db:\n    imag: a\n", "did you mean 'image'?"),
        ("services:\n  db:\n    image: a\n    name: web\n", "services.db.name: must be the service's key"),
        ("servics: {}\n", "app.yaml:1:1: servics: unknown top-level key"),
        (
            "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n",
            "dependency cycle: a -> b -> a",
        ),
    ],
)
def test_stack_file_errors_have_line_and_column(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_stack(text, "app.yaml", "shop")
    assert expected in str(err.value)


def test_stack_needs_a_name() -> None:
    with pytest.raises(SpecError, match="the stack has no name"):
        parse_stack("services: {db: {image: a}}", "app.yaml")


def test_underscore_names_belong_to_stacks() -> None:
    with pytest.raises(SpecError, match="must be 1 to 63"):
        parse_spec("name: a__b\nimage: x\n")
    assert parse_spec("name: shop_db\nimage: x\nstack: shop\n").stack == "shop"


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": ["x"]}) == ["x", "x"]
    assert find_cycle({"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}) is None  # a diamond is fine


# --- the gate ---------------------------------------------------------------------------


def _record(name: str, depends_on: dict[str, str] | None = None, replicas: int = 1) -> ServiceRecord:
    spec = parse_spec(f"name: {name}\nimage: x\nstack: shop\nreplicas: {replicas}\n")
    return ServiceRecord(name, 1, spec.model_copy(update={"depends_on": depends_on}))


@pytest.mark.parametrize(
    ("condition", "state", "waits"),
    [
        ("started", DepState(False), "waiting for db (started; not deployed)"),
        ("started", DepState(True, 0, 0), "waiting for db (started)"),
        ("started", DepState(True, 1, 0), ""),
        ("healthy", DepState(True, 1, 0), "waiting for db (healthy)"),
        ("healthy", DepState(True, 2, 1), ""),
    ],
)
def test_gate_decisions(condition: str, state: DepState, waits: str) -> None:
    services = {"shop_db": _record("shop_db"), "shop_web": _record("shop_web", {"shop_db": condition})}
    decided = gated(services, set(), lambda name: state)
    assert decided.get("shop_web", "") == waits
    assert "shop_db" not in decided  # no depends_on: never gated


def test_gate_holds_only_the_first_start_and_never_cascades() -> None:
    services = {"shop_web": _record("shop_web", {"shop_db": "healthy"})}
    assert gated(services, {"shop_web"}, lambda n: DepState(True, 0, 0)) == {}  # it has tasks: planned
    scaled_to_zero = {"shop_web": _record("shop_web", {"shop_db": "healthy"}, replicas=0)}
    assert gated(scaled_to_zero, set(), lambda n: DepState()) == {}
    plan = waiting_plan(
        _record("shop_web", {"shop_db": "healthy"}, replicas=3), "waiting for db (healthy)", {"n1"}
    )
    assert plan.unplaced == [1, 2, 3] and plan.reason == "waiting for db (healthy)" and not plan.place


def test_observer_counts_running_and_routable_tasks() -> None:
    tasks = {
        ("shop_db", 1): Assignment("t1", "shop_db", 1, "n1", 1, 1),
        ("shop_db", 2): Assignment("t2", "shop_db", 2, "n1", 1, 1),
    }
    statuses = {
        "t1": TaskStatus("t1", "shop_db", 1, "n1", "running", health="starting"),
        "t2": TaskStatus("t2", "shop_db", 2, "n1", "running", health="healthy"),
    }
    observe = observer({"shop_db"}, tasks, statuses.get)
    assert observe("shop_db") == DepState(True, 2, 1)
    assert observe("shop_cache") == DepState(False, 0, 0)
    assert unmet({"shop_db": "healthy"}, {"shop_db": DepState(True, 1, 0)}, "shop") == ["db (healthy)"]
    assert waiting_reason({"shop_db": "started"}, {"shop_db": DepState(True, 1, 0)}, "shop") == ""


# --- deploy and remove: one transaction -------------------------------------------------


async def _writer() -> tuple[MemoryStore, StackWriter]:
    store = MemoryStore()
    return store, StackWriter(ServiceWriter(store, KEYS, "n1"))


async def _services(store: MemoryStore) -> dict[str, ServiceRecord]:
    kvs, _ = await store.range(KEYS.services)
    return {r.name: r for r in (ServiceRecord.from_json(kv.value) for kv in kvs)}


async def test_deploy_redeploy_prune_and_remove() -> None:
    store, stacks = await _writer()
    name, changes = await stacks.deploy(APP, "app.yaml")
    assert name == "shop" and {(c.service, c.action) for c in changes} == {
        ("shop_db", "created"),
        ("shop_web", "created"),
    }
    assert (await store.get(KEYS.port(18080))) is not None  # the port claim went in with it
    _, again = await stacks.deploy(APP, "app.yaml")
    assert {c.action for c in again} == {"unchanged"}
    changed = APP.replace("replicas: 2", "replicas: 3").replace(
        "  db:\n    image: shoal/demo\n    health: {tcp: {port: 6379}}\n", ""
    )
    changed = changed.replace("    depends_on: {db: healthy}\n", "")
    _, third = await stacks.deploy(changed, "app.yaml")
    assert {(c.service, c.action, c.version) for c in third} == {
        ("shop_web", "updated", 2),
        ("shop_db", "removed", 0),
    }
    services = await _services(store)
    assert set(services) == {"shop_web"} and services["shop_web"].version == 2
    assert (await store.range(KEYS.history("shop_db")))[0] == []
    removed = await stacks.remove("shop")
    assert removed == ["shop_web"] and await _services(store) == {}
    assert (await store.get(KEYS.port(18080))) is None
    with pytest.raises(NotFound, match="stack 'shop' not found"):
        await stacks.remove("shop")


async def test_the_stack_file_is_parsed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large file takes seconds of YAML: parsed on the loop, it would stall the daemon's
    leases and gossip. It is parsed in a worker thread; the loop is never that thread."""
    from node.api import stacks as stacks_module

    threads: list[int] = []
    real = stacks_module.parse_stack

    def recording(*args: object) -> object:
        threads.append(threading.get_ident())
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(stacks_module, "parse_stack", recording)
    _, stacks = await _writer()
    await stacks.deploy(APP, "app.yaml")
    assert threads and threading.get_ident() not in threads


async def test_rm_removes_the_stacks_unreadable_services_by_key_and_names_them() -> None:
    """A record of the stack that does not read (not JSON, a spec this shoal does not know)
    was left out of `stack rm` and lingered. `<stack>_<x>` is provably the stack's: it goes
    by its key, with its history, and the answer names it; no other record is touched."""
    store, stacks = await _writer()
    await stacks.deploy(APP, "app.yaml")
    await store.put(KEYS.service("shop_db"), b"{not json")
    await store.put(KEYS.service("shop_cache"), b'{"name": "shop_cache", "spec": {"image": 5}}')
    await store.put(KEYS.service("shopx_db"), b"{not json")  # another stack's
    await store.put(KEYS.service("shop"), b"{not json")  # no stack's
    assert (await store.range(KEYS.history("shop_db")))[0] != []
    removed = await stacks.remove("shop")
    assert removed == ["shop_cache", "shop_db", "shop_web"]
    left = {kv.key for kv in (await store.range(KEYS.services))[0]}
    assert left == {KEYS.service("shopx_db"), KEYS.service("shop")}
    assert (await store.range(KEYS.history("shop_db")))[0] == []
    with pytest.raises(NotFound):
        await stacks.remove("shop")


async def test_a_deploy_prunes_an_unreadable_service_the_file_dropped() -> None:
    store, stacks = await _writer()
    await stacks.deploy(APP, "app.yaml")
    await store.put(KEYS.service("shop_old"), b"{not json")
    _, changes = await stacks.deploy(APP, "app.yaml")
    assert ("shop_old", "removed") in {(c.service, c.action) for c in changes}
    assert await store.get(KEYS.service("shop_old")) is None


async def test_a_bad_file_writes_nothing() -> None:
    store, stacks = await _writer()
    bad = APP.replace("replicas: 2", "replicas: -1")
    with pytest.raises(InvalidArgument, match=r"app.yaml:8:5: services.web.replicas"):
        await stacks.deploy(bad, "app.yaml")
    assert await _services(store) == {}
    before = store.revision
    with pytest.raises(InvalidArgument, match="dependency cycle"):
        await stacks.deploy(
            "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n", "s", "shop"
        )
    assert store.revision == before


async def test_deploy_is_one_transaction_all_or_nothing() -> None:
    """A port owned by another service makes the whole deploy fail: neither service of the
    stack is written (no half stack), whatever the order of the services."""
    store, stacks = await _writer()
    writer = stacks.writer
    await writer.apply("name: other\nimage: x\nports: [{container: 80, published: 18080}]\n", "o.yaml")
    with pytest.raises(Exception, match="already published by service 'other'"):
        await stacks.deploy(APP, "app.yaml")
    assert set(await _services(store)) == {"other"}


async def test_a_concurrent_change_is_retried_then_reported() -> None:
    """Every attempt loses the race (a write lands between the reads and the transaction):
    after a few tries Conflict, and the stack is not half written."""
    store, stacks = await _writer()
    await stacks.deploy(APP, "app.yaml")
    real_txn = store.txn

    async def racing_txn(compares, ops, else_ops=()):  # type: ignore[no-untyped-def]
        kv = await store.get(KEYS.service("shop_db"))
        assert kv is not None
        await store.put(KEYS.service("shop_db"), kv.value)  # same value, new mod revision
        return await real_txn(compares, ops, else_ops)

    store.txn = racing_txn  # type: ignore[method-assign]
    with pytest.raises(Conflict, match="stack 'shop' is being changed concurrently"):
        await stacks.deploy(APP.replace("replicas: 2", "replicas: 5"), "app.yaml")
    store.txn = real_txn  # type: ignore[method-assign]
    assert (await _services(store))["shop_web"].replicas == 2


async def test_crash_before_the_transaction_leaves_the_old_stack() -> None:
    """The deploy's only write is its one transaction: a store that stops answering
    before it (the process dying there is the same) leaves the old stack whole."""
    store, stacks = await _writer()
    await stacks.deploy(APP, "app.yaml")
    store.unavailable = True
    with pytest.raises(StoreUnavailable):
        await stacks.deploy(APP.replace("replicas: 2", "replicas: 4"), "app.yaml")
    store.unavailable = False
    services = await _services(store)
    assert services["shop_web"].replicas == 2 and services["shop_db"].version == 1


async def test_service_apply_refuses_an_underscore_name_outside_a_stack() -> None:
    _, stacks = await _writer()
    with pytest.raises(InvalidArgument, match=r"web.yaml: name: '_' is for services of a stack"):
        await stacks.writer.apply("name: shop_web\nimage: x\n", "web.yaml")
    record, changed = await stacks.writer.apply("name: shop_web\nimage: x\nstack: shop\n", "web.yaml")
    assert changed and record.spec.stack == "shop"
    assert [r.name for r, _ in (await stacks.members("shop"))["shop"]] == ["shop_web"]


SECRET_STACK = """
name: vault
services:
  api:
    image: shoal/demo
    secret_env: {TOKEN: hunter2}
    secrets: [{source: db_pw}]
  worker:
    image: shoal/demo
    secrets: [{source: db_pw}]
"""


async def test_a_stack_binds_its_secrets_and_seals_secret_env_as_apply_does() -> None:
    """A stack goes through apply's write path: secret_env sealed, secret references bound
    and checked, one use-key put for a secret two services name (etcd refuses a txn that
    puts one key twice)."""
    from node.security.sealing import Sealer

    store, stacks = await _writer()
    stacks.writer.objects.sealer = Sealer(lambda: b"the-ca-passphrase-of-this-cluster")
    with pytest.raises(FailedPrecondition, match="secret 'db_pw' does not exist"):
        await stacks.deploy(SECRET_STACK, "app.yaml")  # the secret does not exist yet
    assert await _services(store) == {}
    await stacks.writer.objects.put("secret", "db_pw", b"s3cret", False, stacks.writer)
    _, changes = await stacks.deploy(SECRET_STACK, "app.yaml")
    assert {c.action for c in changes} == {"created"}
    kvs, _ = await store.range(KEYS.prefix)
    raw = b"\n".join(kv.value for kv in kvs)
    assert b"hunter2" not in raw and b"s3cret" not in raw, "a secret in clear in etcd"
    services = await _services(store)
    assert all(r.spec.secrets and r.spec.secrets[0].revision for r in services.values())
