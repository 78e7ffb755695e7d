"""A stack's own secrets and configs, written in the stack's one transaction (decision 72),
against the in-memory store: all or nothing, nothing on a refusal or a failed compare,
ownership (rm and prune take only the stack's own), collisions refused, values nowhere."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from node.api.servicer import ShoalServicer
from node.api.services import ServiceWriter
from node.api.stack_objects import MAX_WRITE_BYTES, StackObject
from node.api.stacks import StackWriter
from node.model.domain import ServiceRecord
from node.model.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, ShoalError
from node.model.keys import Keys
from node.pb import api_pb2, secrets_pb2
from node.security.objects import ObjectRecord
from node.security.sealing import Sealer
from node.security.tokens import Role, least_role
from node.store import StoreUnavailable
from node.store.memory import MemoryStore

KEYS = Keys()
PW = b"hunter2-the-db-password"
CONF = b"listen 8080;\n"
STACK = """\
name: shop
services:
  db:
    image: shoal/demo
    secrets: [{source: shop_db_pw, target: db_pw}]
  web:
    image: shoal/demo
    ports: [{container: 8000, published: 18080}]
    configs: [{source: shop_conf, target: /etc/web.conf}]
"""


def objects(pw: bytes = PW, conf: bytes = CONF) -> list[StackObject]:
    return [StackObject("secret", "shop_db_pw", pw), StackObject("config", "shop_conf", conf)]


def stacks_on(store: MemoryStore) -> StackWriter:
    writer = ServiceWriter(store, KEYS, "n1")
    writer.objects.sealer = Sealer(lambda: b"the-ca-passphrase-of-this-cluster")
    return StackWriter(writer)


async def dump(store: MemoryStore) -> dict[str, bytes]:
    kvs, _ = await store.range(KEYS.prefix)
    return {kv.key: kv.value for kv in kvs}


async def record(store: MemoryStore, kind: str, name: str) -> ObjectRecord | None:
    kv = await store.get(KEYS.object(kind, name))
    return ObjectRecord.from_json(kv.value) if kv is not None else None


async def services(store: MemoryStore) -> dict[str, ServiceRecord]:
    kvs, _ = await store.range(KEYS.services)
    return {r.name: r for r in (ServiceRecord.from_json(kv.value) for kv in kvs)}


async def test_objects_and_services_are_one_transaction_and_sealed() -> None:
    store = MemoryStore()
    stacks = stacks_on(store)
    before = store.revision
    name, changes, done = await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    assert store.revision == before + 1, "objects and services in one transaction"
    assert name == "shop" and {c.action for c in changes} == {"created"}
    assert {(o.kind, o.name, o.action, o.size) for o in done} == {
        ("secret", "shop_db_pw", "created", len(PW)),
        ("config", "shop_conf", "created", len(CONF)),
    }
    secret = await record(store, "secret", "shop_db_pw")
    assert secret is not None and secret.stack == "shop"
    assert PW not in b"".join((await dump(store)).values()), "a secret in clear in etcd"
    bound = await services(store)
    assert bound["shop_db"].spec.secrets and bound["shop_db"].spec.secrets[0].revision == secret.revision
    assert all(PW.decode() not in repr(x) for x in (objects(), done, changes))


async def test_an_unchanged_redeploy_writes_nothing_and_a_change_rolls_its_users() -> None:
    store = MemoryStore()
    stacks = stacks_on(store)
    await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    before = store.revision
    _, changes, done = await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    assert store.revision == before, "an unchanged redeploy wrote"
    assert {c.action for c in changes} == {"unchanged"} and {o.action for o in done} == {"unchanged"}

    _, changes, done = await stacks.deploy_with_objects(STACK, "app.yaml", "", objects(pw=b"new"))
    assert store.revision == before + 1
    assert {(c.service, c.action) for c in changes} == {("shop_db", "updated"), ("shop_web", "unchanged")}
    secret = await record(store, "secret", "shop_db_pw")
    assert secret is not None and secret.version == 2 and secret.stack == "shop"
    db = (await services(store))["shop_db"]
    assert db.version == 2 and db.spec.secrets and db.spec.secrets[0].revision == secret.revision


async def test_a_service_outside_the_stack_that_uses_a_changed_object_rolls_too() -> None:
    store = MemoryStore()
    stacks = stacks_on(store)
    await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    await stacks.writer.apply("name: other\nimage: x\nsecrets: [{source: shop_db_pw}]\n", "o.yaml")
    _, changes, _ = await stacks.deploy_with_objects(STACK, "app.yaml", "", objects(pw=b"rotated"))
    assert ("other", "updated") in {(c.service, c.action) for c in changes}
    other = (await services(store))["other"]
    secret = await record(store, "secret", "shop_db_pw")
    assert secret and other.version == 2 and other.spec.secrets
    assert other.spec.secrets[0].revision == secret.revision


async def test_a_stack_the_server_refuses_leaves_no_object() -> None:
    """The refusal only the server sees (a port another service holds) comes after the
    objects were planned: nothing at all is written, neither object nor service."""
    store = MemoryStore()
    stacks = stacks_on(store)
    await stacks.writer.apply("name: other\nimage: x\nports: [{container: 80, published: 18080}]\n", "o")
    before = await dump(store)
    with pytest.raises(FailedPrecondition, match="already published by service 'other'"):
        await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    assert await dump(store) == before


async def test_a_transaction_that_fails_its_compare_writes_nothing() -> None:
    """Every attempt loses a race on the secret's use key (an apply starting to use the
    name between the reads and the transaction): Conflict, and not one key written."""
    store = MemoryStore()
    stacks = stacks_on(store)
    real_txn = store.txn
    raced = 0

    async def racing_txn(compares, ops, else_ops=()):  # type: ignore[no-untyped-def]
        nonlocal raced
        raced += 1
        await store.put(KEYS.object_use("secret", "shop_db_pw"), b"someone")
        return await real_txn(compares, ops, else_ops)

    store.txn = racing_txn  # type: ignore[method-assign]
    with pytest.raises(Conflict, match="stack 'shop' is being changed concurrently"):
        await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    store.txn = real_txn  # type: ignore[method-assign]
    assert raced > 1
    left = await dump(store)
    assert set(left) == {KEYS.object_use("secret", "shop_db_pw")}, "only the racer's own key"


async def test_etcd_down_at_the_transaction_writes_nothing() -> None:
    store = MemoryStore()
    stacks = stacks_on(store)
    await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    before = await dump(store)
    real_txn = store.txn

    async def down(*args: Any, **kwargs: Any) -> Any:
        store.unavailable = True
        try:
            return await real_txn(*args, **kwargs)
        finally:
            store.unavailable = False

    store.txn = down  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await stacks.deploy_with_objects(STACK, "app.yaml", "", objects(pw=b"new"))
    assert await dump(store) == before, "no new value without its services' versions"


async def test_rm_removes_the_stacks_own_objects_only() -> None:
    store = MemoryStore()
    stacks = stacks_on(store)
    w = stacks.writer
    await w.objects.put("secret", "api_key", b"k", False, w)  # `shoal secret create`, used as external
    await w.objects.put("secret", "spare", b"s", False, w)  # `shoal secret create`, unused
    text = STACK + "  api:\n    image: shoal/demo\n    secrets: [{source: api_key}]\n"
    await stacks.deploy_with_objects(text, "app.yaml", "", objects())
    removed, objs = await stacks.remove_with_objects("shop")
    assert removed == ["shop_api", "shop_db", "shop_web"]
    assert {(o.name, o.action) for o in objs} == {("shop_db_pw", "removed"), ("shop_conf", "removed")}
    left = await dump(store)
    assert KEYS.object("secret", "api_key") in left and KEYS.object("secret", "spare") in left
    assert not any("shop_" in key for key in left), "the stack's objects or use keys stayed"
    with pytest.raises(NotFound, match="stack 'shop' not found"):
        await stacks.remove("shop")


async def test_rm_keeps_an_own_object_that_a_service_outside_uses() -> None:
    store = MemoryStore()
    stacks = stacks_on(store)
    await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    await stacks.writer.apply("name: other\nimage: x\nsecrets: [{source: shop_db_pw}]\n", "o.yaml")
    _, objs = await stacks.remove_with_objects("shop")
    assert {(o.name, o.action) for o in objs} == {("shop_db_pw", "kept"), ("shop_conf", "removed")}
    assert await record(store, "secret", "shop_db_pw") is not None
    assert set(await services(store)) == {"other"}


CORRUPT = [
    b"{not json",
    b'["a list"]',
    b'{"kind": "secret", "name": "shop_bad", "uid": "u", "version": "x", "size": 1,'
    b' "created": "c", "updated": "u", "data": "d", "stack": "shop"}',
    b'{"kind": "secret", "name": 7, "uid": "u", "version": 1, "size": 1,'
    b' "created": "c", "updated": "u", "data": "d", "stack": "shop"}',
]


@pytest.mark.parametrize("raw", CORRUPT)
async def test_a_corrupt_object_record_blocks_no_deploy_or_rm_and_is_left_alone(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """One unreadable record (written around the API) does not stop every stack's prune:
    it is logged and skipped, and never deleted (its owner cannot be read)."""
    store = MemoryStore()
    stacks = stacks_on(store)
    await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    await store.put(KEYS.object("secret", "shop_bad"), raw)
    _, _, done = await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    assert {o.action for o in done} == {"unchanged"}
    assert "secret 'shop_bad' cannot be read" in caplog.text
    removed, objs = await stacks.remove_with_objects("shop")
    assert removed == ["shop_db", "shop_web"]
    assert {(o.name, o.action) for o in objs} == {("shop_db_pw", "removed"), ("shop_conf", "removed")}
    assert (await store.get(KEYS.object("secret", "shop_bad"))) is not None
    records, _ = await stacks.writer.objects.all("secret")  # `shoal secret ls` goes on too
    assert records == []
    with pytest.raises(FailedPrecondition, match="secret 'shop_bad' cannot be read"):
        await stacks.deploy_with_objects(  # declared by the file: refused, named, nothing written
            STACK, "app.yaml", "", [*objects(), StackObject("secret", "shop_bad", b"v")]
        )
    await stacks.writer.objects.remove("secret", "shop_bad")  # what the message says to do
    assert (await store.get(KEYS.object("secret", "shop_bad"))) is None


async def test_an_object_dropped_from_the_file_is_pruned_once_unused() -> None:
    store = MemoryStore()
    stacks = stacks_on(store)
    await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    without = STACK.replace("    configs: [{source: shop_conf, target: /etc/web.conf}]\n", "")
    _, _, done = await stacks.deploy_with_objects(without, "app.yaml", "", objects()[:1])
    assert ("config", "shop_conf", "removed") in {(o.kind, o.name, o.action) for o in done}
    assert await record(store, "config", "shop_conf") is None
    assert await store.get(KEYS.object_use("config", "shop_conf")) is None


async def test_a_name_held_by_an_object_of_no_stack_is_refused_and_nothing_changes() -> None:
    store = MemoryStore()
    stacks = stacks_on(store)
    w = stacks.writer
    await w.objects.put("secret", "shop_db_pw", b"theirs", False, w)  # `shoal secret create`
    before = await dump(store)
    with pytest.raises(FailedPrecondition) as err:
        await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    message = str(err.value)
    assert "secret 'shop_db_pw' exists and belongs to `shoal secret create`" in message
    assert "external: true" in message and "theirs" not in message and PW.decode() not in message
    assert await dump(store) == before


async def test_a_name_held_by_another_stack_is_refused() -> None:
    store = MemoryStore()
    stacks = stacks_on(store)
    forged = ObjectRecord("config", "shop_conf", "u1", 1, 1, "t", "t", "eA==", stack="other")
    await store.put(KEYS.object("config", "shop_conf"), forged.to_json())
    before = await dump(store)
    with pytest.raises(FailedPrecondition, match="belongs to stack 'other'"):
        await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    assert await dump(store) == before


async def test_an_object_an_older_cli_wrote_for_the_stack_is_adopted_without_a_roll() -> None:
    """Before decision 72 the CLI wrote `<stack>_<name>` through PutObject (no owner): the
    first deploy with objects takes it over, its revision kept, nothing rolled."""
    store = MemoryStore()
    stacks = stacks_on(store)
    w = stacks.writer
    await w.objects.put("secret", "shop_db_pw", PW, False, w)
    await w.objects.put("config", "shop_conf", CONF, False, w)
    await stacks.deploy(STACK, "app.yaml")
    legacy = await record(store, "secret", "shop_db_pw")
    _, changes, done = await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    adopted = await record(store, "secret", "shop_db_pw")
    assert legacy and adopted and adopted.stack == "shop" and adopted.revision == legacy.revision
    assert {c.action for c in changes} == {"unchanged"} and {o.action for o in done} == {"unchanged"}
    before = store.revision
    await stacks.deploy_with_objects(STACK, "app.yaml", "", objects())
    assert store.revision == before


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ([StackObject("secret", "db_pw", PW)], "objects[0].name: 'db_pw' is not a name of stack 'shop'"),
        ([StackObject("secret", "other_pw", PW)], "is not a name of stack 'shop'"),
        ([StackObject("token", "shop_x", PW)], "objects[0].kind: must be one of secret, config"),
        ([StackObject("secret", "shop_x", PW)] * 2, "objects[1].name: secret 'shop_x' is given twice"),
        ([StackObject("secret", "shop_x", b"x" * 600_000)], "has 600000 bytes; the limit is 500 KiB"),
        ([StackObject("config", f"shop_c{i}", b"x") for i in range(65)], "65 secrets and configs"),
        ([StackObject("secret", "shop_x", b"")], "objects[0]: secret 'shop_x' is empty (0 bytes)"),
    ],
)
async def test_bad_objects_are_refused_before_anything(asked: list[StackObject], expected: str) -> None:
    store = MemoryStore()
    with pytest.raises(InvalidArgument) as err:
        await stacks_on(store).deploy_with_objects(STACK, "app.yaml", "", asked)
    assert expected in str(err.value) and PW.decode() not in str(err.value)
    assert await dump(store) == {}


async def test_the_bound_counts_the_objects() -> None:
    store = MemoryStore()
    many = objects() + [StackObject("config", f"shop_c{i}", b"x") for i in range(58)]
    with pytest.raises(InvalidArgument) as err:
        await stacks_on(store).deploy_with_objects(STACK, "app.yaml", "", many)
    assert "this change of 2 services and 60 secrets/configs needs 12" in str(err.value)
    assert "the limit is 100" in str(err.value) and await dump(store) == {}


async def test_objects_too_large_for_one_transaction_are_refused() -> None:
    store = MemoryStore()
    big = [StackObject("config", f"shop_c{i}", b"x" * 400_000) for i in range(3)]
    with pytest.raises(
        InvalidArgument, match=f"more than one etcd transaction takes \\({MAX_WRITE_BYTES // 1024}"
    ):
        await stacks_on(store).deploy_with_objects(STACK, "app.yaml", "", big)
    assert await dump(store) == {}


class _Context:
    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise RuntimeError(f"{code.name}: {message}")


async def test_deploy_stack_takes_no_objects_and_the_call_that_does_is_admin_only() -> None:
    store = MemoryStore()
    servicer = ShoalServicer(store, KEYS, "n1")
    request = api_pb2.DeployStackRequest(
        spec=STACK, objects=[api_pb2.StackObject(kind="secret", name="shop_db_pw", value=PW)]
    )
    with pytest.raises(RuntimeError, match="INVALID_ARGUMENT: objects: DeployStack takes no secrets"):
        await servicer.DeployStack(request, _Context())
    assert await dump(store) == {}
    assert least_role("/shoal.v1.Shoal/DeployStackWithObjects") is Role.ADMIN
    assert least_role("/shoal.v1.Shoal/DeployStack") is Role.DEPLOYER


class _OlderNode:
    """A client of a node without DeployStackWithObjects (UNIMPLEMENTED), recording calls."""

    addr = "127.0.0.1:7070"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def deploy_stack(self, name: str, text: str, source: str, objects: Any = ()) -> Any:
        self.calls.append("DeployStackWithObjects" if objects else "DeployStack")
        if objects:
            raise ShoalError("Method not found!", code=grpc.StatusCode.UNIMPLEMENTED)
        return api_pb2.DeployStackResponse(name=name)

    def list_objects(self, kind: str) -> list[Any]:
        return []

    def put_object(self, kind: str, name: str, value: bytes, update: bool) -> Any:
        self.calls.append(f"PutObject {name}")
        return secrets_pb2.PutObjectResponse(changed=True)


class _Refusing(_OlderNode):
    def deploy_stack(self, name: str, text: str, source: str, objects: Any = ()) -> Any:
        raise ShoalError("port taken", code=grpc.StatusCode.FAILED_PRECONDITION)


def _settings(client: Any) -> Any:
    return type("Settings", (), {"client": lambda self: client})()


def test_the_cli_falls_back_to_objects_first_on_an_older_node(capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli.stack import deploy_compose
    from node.compose.objects import ObjectWrite

    older = _OlderNode()
    writes = [ObjectWrite("secret", "shop_db_pw", PW)]
    deploy_compose(_settings(older), "shop", STACK, "app.yaml", writes)
    assert older.calls == ["DeployStackWithObjects", "PutObject shop_db_pw", "DeployStack"]
    err = capsys.readouterr().err
    assert "runs an older shoal" in err and PW.decode() not in err

    refused = _Refusing()
    with pytest.raises(ShoalError, match="port taken"):
        deploy_compose(_settings(refused), "shop", STACK, "app.yaml", writes)
    assert refused.calls == [], "a refusal is not a reason to write the objects first"


async def test_the_answer_the_event_and_the_log_name_objects_never_their_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    servicer = ShoalServicer(store, KEYS, "n1")
    servicer.writer.objects.sealer = Sealer(lambda: b"the-ca-passphrase-of-this-cluster")
    events: list[str] = []
    servicer.emit = lambda kind, message, *a, **k: events.append(f"{kind} {message}")
    request = api_pb2.DeployStackRequest(
        spec=STACK, objects=[api_pb2.StackObject(kind=o.kind, name=o.name, value=o.value) for o in objects()]
    )
    caplog.set_level("INFO")
    answer = await servicer.DeployStackWithObjects(request, _Context())
    assert {(o.name, o.action, o.size) for o in answer.objects} == {
        ("shop_db_pw", "created", len(PW)),
        ("shop_conf", "created", len(CONF)),
    }
    assert any(f"secret shop_db_pw created ({len(PW)} bytes)" in e for e in events), events
    removed = await servicer.RemoveStack(api_pb2.RemoveStackRequest(name="shop"), _Context())
    assert {(o.name, o.action) for o in removed.objects} == {
        ("shop_db_pw", "removed"),
        ("shop_conf", "removed"),
    }
    for text in (str(answer), str(removed), "\n".join(events), caplog.text):
        assert PW.decode() not in text and CONF.decode().strip() not in text
