"""Secrets and configs (issue 13, item 6): sealing, spec references, the write paths
(apply, update, rm, rollback) and the agent's files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from node.api.services import ServiceWriter
from node.model.domain import ServiceRecord, template_hash
from node.model.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from node.model.keys import Keys
from node.model.spec import SpecError, parse_spec, spec_to_dict
from node.runtime.base import ContainerSpec, EngineError
from node.security.objects import ObjectRecord
from node.security.sealing import PREFIX, Sealer, SealError, is_sealed, secret_ad, secret_env_ad
from node.store import StoreError, StoreUnavailable
from node.store.memory import MemoryStore
from tests.factories import make_task
from tests.helpers import leader_with_events

KEYS = Keys()
PHRASE = b"the-ca-passphrase-of-this-cluster"
SPEC = "name: app\nimage: x:1\nreplicas: 1\nsecrets: [{source: db_pw}]\n"


def sealer(phrase: bytes = PHRASE) -> Sealer:
    return Sealer(lambda: phrase)


def writer(store: MemoryStore) -> ServiceWriter:
    w = ServiceWriter(store, KEYS, "n1")
    w.objects.sealer = sealer()
    return w


async def dump(store: MemoryStore) -> bytes:
    kvs, _ = await store.range(KEYS.prefix)
    return b"\n".join(kv.key.encode() + b"=" + kv.value for kv in kvs)


# -- sealing ---------------------------------------------------------------------------


def test_seal_round_trip_with_a_fresh_nonce_per_write() -> None:
    s = sealer()
    one, two = s.seal(b"hunter2", secret_ad("db")), s.seal(b"hunter2", secret_ad("db"))
    assert one != two and is_sealed(one) and one.startswith(PREFIX)
    assert b"hunter2" not in one.encode()
    assert s.open(one, secret_ad("db")) == s.open(two, secret_ad("db")) == b"hunter2"


def test_another_cluster_key_does_not_open() -> None:
    sealed = sealer().seal(b"hunter2", secret_ad("db"))
    with pytest.raises(SealError, match="does not open"):
        sealer(b"another-passphrase").open(sealed, secret_ad("db"))


def test_the_name_is_bound_as_associated_data() -> None:
    s = sealer()
    sealed = s.seal(b"hunter2", secret_ad("db"))
    with pytest.raises(SealError):
        s.open(sealed, secret_ad("other"))
    env = s.seal(b"k", secret_env_ad("web", "API_KEY"))
    with pytest.raises(SealError):
        s.open(env, secret_env_ad("evil", "API_KEY"))  # copied into another service's spec
    with pytest.raises(SealError):
        s.open(env, secret_env_ad("web", "OTHER"))


def test_altered_or_malformed_sealed_text_fails_clearly() -> None:
    s = sealer()
    sealed = s.seal(b"hunter2", secret_ad("db"))
    flipped = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    for bad in (flipped, PREFIX + "!!!", PREFIX + "AAAA", "plain"):
        with pytest.raises(SealError):
            s.open(bad, secret_ad("db"))
    with pytest.raises(SealError, match="empty"):
        Sealer(lambda: b"").seal(b"x", "a")


def test_record_repr_never_shows_the_value() -> None:
    r = ObjectRecord("secret", "db", "u1", 1, 7, "t", "t", sealer().seal(b"hunter2", secret_ad("db")))
    assert "hunter2" not in repr(r) and r.data not in repr(r)
    spec = ContainerSpec("c", "x:1", {}, env={"PW": "hunter2"})
    assert "hunter2" not in repr(spec)


# -- spec ------------------------------------------------------------------------------


def test_spec_references_parse_and_round_trip() -> None:
    spec = parse_spec(
        "name: a\nimage: x\nsecrets: [{source: db_pw}, {source: tls.key, target: key, mode: '0440'}]\n"
        "configs: [{source: app_conf, target: /etc/app.conf, mode: 644}]\n"
    )
    assert [(r.source, r.target, r.mode) for r in spec.secrets or []] == [
        ("db_pw", None, "0400"),
        ("tls.key", "key", "0440"),
    ]
    assert spec.configs and spec.configs[0].mode == "0644"
    assert parse_spec(json.dumps(spec_to_dict(spec))) == spec


def test_a_spec_without_references_keeps_its_template_hash() -> None:
    spec = parse_spec("name: a\nimage: x\n")
    assert "secrets" not in spec_to_dict(spec) and "configs" not in spec_to_dict(spec)
    assert template_hash(spec) == template_hash(
        {"name": "a", "image": "x", "env": {}, "replicas": 1, "ports": []}
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("secrets: [{source: 'a/b'}]", "secrets[0].source: must be 1 to 63 letters"),
        (
            "secrets: [{source: a, mode: 999}]",
            'secrets[0].mode: must be a file mode in octal digits, e.g. "0400"',
        ),
        (
            "secrets: [{source: a}, {source: b, target: a}]",
            "secrets[1].target: target 'a' is already used by [0]",
        ),
        ("configs: [{source: c}]", "configs[0].target: missing required field 'target'"),
        ("configs: [{source: c, target: etc/x}]", "configs[0].target: must be an absolute file path"),
        ("configs: [{source: c, target: /a/../etc/passwd}]", "must be an absolute file path"),
        ("configs: [{source: c, target: /run/secrets/x}]", "/run/secrets is where secrets are mounted"),
        ("configs: [{source: c, target: /run/./secrets/x}]", "no '.' or '..' segment"),  # the rule, dodged
        ("configs: [{source: c, target: /.}]", "must be an absolute file path"),  # is /
        ("secrets: [{source: a, sorce: b}]", "unknown field 'sorce'; did you mean 'source'?"),
    ],
)
def test_bad_references_are_refused_with_the_field(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(f"name: a\nimage: x\n{text}\n", "app.yaml")
    assert expected in str(err.value) and "app.yaml:3:" in str(err.value)


# -- the write paths -------------------------------------------------------------------


async def test_apply_of_a_missing_secret_is_refused_and_writes_nothing() -> None:
    store = MemoryStore()
    w = writer(store)
    before = store.revision
    with pytest.raises(FailedPrecondition, match=r"secrets\[0\]\.source: secret 'db_pw' does not exist"):
        await w.apply(SPEC + "configs: [{source: nope, target: /etc/x}]\n", "app.yaml")
    assert store.revision == before


async def test_apply_records_the_revision_and_update_rolls_in_one_transaction() -> None:
    store = MemoryStore()
    w = writer(store)
    made, rolled = await w.objects.put("secret", "db_pw", b"hunter2", False, w)
    assert rolled == [] and made.version == 1
    record, changed = await w.apply(SPEC, "app.yaml")
    assert changed and record.spec.secrets and record.spec.secrets[0].revision == made.revision
    assert b"hunter2" not in await dump(store)
    assert (await w.apply(SPEC, "app.yaml"))[1] is False, "the same file again is unchanged"

    before = store.revision
    updated, rolled = await w.objects.put("secret", "db_pw", b"hunter3", True, w)
    assert rolled == ["app"] and updated.version == 2
    assert store.revision == before + 1, "the secret and the services' new versions: one transaction"
    current, _ = await w.read("app")
    assert (
        current.version == 2 and current.spec.secrets and current.spec.secrets[0].revision == updated.revision
    )
    assert "secret db_pw updated" in current.updated_by
    assert template_hash(current.spec) != template_hash(record.spec), "the template changes: the leader rolls"

    before = store.revision
    same, rolled = await w.objects.put("secret", "db_pw", b"hunter3", True, w)
    assert same.revision == updated.revision and rolled == [] and store.revision == before


async def test_the_versions_an_update_rolls_carry_its_cause_id() -> None:
    """`secret update` wrote the using services' new versions with no cause id (issue 14),
    where every apply has one: the roll's task events could not be traced to the update."""
    store = MemoryStore()
    w = writer(store)
    await w.objects.put("secret", "db_pw", b"hunter2", False, w)
    await w.apply(SPEC, "app.yaml")
    await w.apply(SPEC.replace("name: app", "name: api"), "api.yaml")
    applied = (await w.read("app"))[0].cause
    _, rolled = await w.objects.put("secret", "db_pw", b"hunter3", True, w, "cause-of-the-update")
    assert sorted(rolled) == ["api", "app"]
    assert [(await w.read(n))[0].cause for n in rolled] == ["cause-of-the-update"] * 2
    _, rolled = await w.objects.put("secret", "db_pw", b"hunter4", True, w)  # none given: one made
    causes = {(await w.read(n))[0].cause for n in rolled}
    assert len(causes) == 1 and causes.isdisjoint({"", applied, "cause-of-the-update"})


async def test_create_of_an_existing_name_and_update_of_a_missing_one_are_refused() -> None:
    store = MemoryStore()
    w = writer(store)
    await w.objects.put("config", "c", b"a=1", False, w)
    with pytest.raises(Conflict, match="config update c -f FILE"):
        await w.objects.put("config", "c", b"a=2", False, w)
    with pytest.raises(NotFound, match="shoal secret create nope"):
        await w.objects.put("secret", "nope", b"x", True, w)
    with pytest.raises(Exception, match="limit is 500 KiB"):
        await w.objects.put("config", "big", b"x" * (501 * 1024), False, w)


async def test_ls_names_each_user_once_and_the_services_pulling_with_a_secret() -> None:
    """`secret ls` left out the services that name a secret as `image_pull_secret`, which
    `secret rm` refuses for (the list said unused, rm said used), and named a service twice
    when it mounts one secret at two targets."""
    store = MemoryStore()
    w = writer(store)
    await w.objects.put("secret", "db_pw", b"hunter2", False, w)
    await w.objects.put("secret", "regcred", b"user:pw", False, w)
    await w.apply(SPEC.replace("source: db_pw}", "source: db_pw}, {source: db_pw, target: again}"), "a.yaml")
    await w.apply("name: puller\nimage: x:1\nimage_pull_secret: regcred\n", "p.yaml")
    _, users = await w.objects.all("secret")
    assert users == {"db_pw": ["app"], "regcred": ["puller"]}
    with pytest.raises(FailedPrecondition, match="used by service\\(s\\) puller"):
        await w.objects.remove("secret", "regcred")


async def test_rm_in_use_is_refused_naming_the_services() -> None:
    store = MemoryStore()
    w = writer(store)
    await w.objects.put("secret", "db_pw", b"hunter2", False, w)
    await w.apply(SPEC, "app.yaml")
    await w.apply(SPEC.replace("name: app", "name: api"), "api.yaml")
    before = store.revision
    with pytest.raises(FailedPrecondition, match=r"secret 'db_pw' is used by service\(s\) api, app"):
        await w.objects.remove("secret", "db_pw")
    assert store.revision == before
    records, users = await w.objects.all("secret")
    assert [r.name for r in records] == ["db_pw"] and sorted(users["db_pw"]) == ["api", "app"]
    await w.remove("app")
    await w.remove("api")
    await w.objects.remove("secret", "db_pw")
    assert b"db_pw" not in await dump(store)


async def test_rm_racing_an_apply_loses_on_the_use_key() -> None:
    """rm read the services (none used it), then an apply bound the secret: the apply
    rewrote objuse/, so rm's transaction fails and its retry sees the user."""
    store = MemoryStore()
    w = writer(store)
    await w.objects.put("secret", "db_pw", b"hunter2", False, w)
    real = w.objects._services
    calls = 0

    async def services_then_apply() -> list[tuple[ServiceRecord, int]]:
        nonlocal calls
        calls += 1
        found = await real()
        if calls == 1:
            await w.apply(SPEC, "app.yaml")
        return found

    w.objects._services = services_then_apply  # type: ignore[method-assign]
    with pytest.raises(FailedPrecondition, match="used by service"):
        await w.objects.remove("secret", "db_pw")
    assert await store.get(KEYS.object("secret", "db_pw")) is not None


async def test_an_update_that_fails_in_etcd_changes_nothing() -> None:
    store = MemoryStore()
    w = writer(store)
    await w.objects.put("secret", "db_pw", b"hunter2", False, w)
    await w.apply(SPEC, "app.yaml")
    before = await dump(store)
    real_txn = store.txn

    async def down(*args: object, **kwargs: object) -> object:
        store.unavailable = True
        try:
            return await real_txn(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            store.unavailable = False

    store.txn = down  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await w.objects.put("secret", "db_pw", b"hunter3", True, w)
    assert await dump(store) == before, "no secret without its services' versions, nor the reverse"


async def test_secret_env_is_sealed_in_etcd_and_an_unchanged_apply_rolls_nothing() -> None:
    store = MemoryStore()
    w = writer(store)
    text = "name: db\nimage: x:1\nsecret_env: {PASSWORD: hunter2}\n"
    record, _ = await w.apply(text, "db.yaml")
    stored = (record.spec.secret_env or {})["PASSWORD"]
    assert is_sealed(stored) and b"hunter2" not in await dump(store)
    assert sealer().open(stored, secret_env_ad("db", "PASSWORD")) == b"hunter2"
    assert (await w.apply(text, "db.yaml"))[1] is False
    changed, _ = await w.apply(text.replace("hunter2", "hunter3"), "db.yaml")
    assert changed.version == 2 and (changed.spec.secret_env or {})["PASSWORD"] != stored
    back = await w.rollback("db")
    assert (back.spec.secret_env or {})["PASSWORD"] == stored, "a rollback keeps the old sealed value"

    nokey = ServiceWriter(store, KEYS, "n2")
    with pytest.raises(FailedPrecondition, match="no cluster key"):
        await nokey.apply(text.replace("db", "db2"), "db.yaml")


async def test_a_sealed_secret_env_value_that_does_not_open_for_the_service_is_refused() -> None:
    """A spec given with a sealed value (pasted from a stored spec) was stored as it was:
    one of another service or variable, or altered, never opens, so every task of that
    version failed at start. It is refused with what to do, nothing written; a sealed
    value that does open as that variable (a stored version given again) is kept."""
    store = MemoryStore()
    w = writer(store)
    record, _ = await w.apply("name: db\nimage: x:1\nsecret_env: {PASSWORD: hunter2}\n", "db.yaml")
    sealed = (record.spec.secret_env or {})["PASSWORD"]
    before = await dump(store)
    for text in (
        f"name: web\nimage: x:1\nsecret_env: {{PASSWORD: '{sealed}'}}\n",  # another service
        f"name: db\nimage: x:1\nsecret_env: {{OTHER: '{sealed}'}}\n",  # another variable
        f"name: db\nimage: x:1\nsecret_env: {{PASSWORD: '{sealed[:-4]}AAA='}}\n",  # altered
    ):
        with pytest.raises(InvalidArgument, match=r"secret_env\.\w+: a sealed value .* in the clear"):
            await w.apply(text, "x.yaml")
    assert await dump(store) == before
    again = sealer().seal(b"hunter3", secret_env_ad("db", "PASSWORD"))
    changed, _ = await w.apply(f"name: db\nimage: x:1\nsecret_env: {{PASSWORD: '{again}'}}\n", "db.yaml")
    assert changed.version == 2 and (changed.spec.secret_env or {})["PASSWORD"] == again


async def test_rollback_binds_the_objects_current_revision_or_refuses_a_removed_one() -> None:
    store = MemoryStore()
    w = writer(store)
    await w.objects.put("secret", "db_pw", b"a", False, w)
    await w.objects.put("secret", "other", b"b", False, w)
    await w.apply(SPEC, "app.yaml")
    await w.apply(SPEC.replace("db_pw", "other"), "app.yaml")
    await w.objects.remove("secret", "db_pw")
    with pytest.raises(FailedPrecondition, match="secret 'db_pw' does not exist"):
        await w.rollback("app")


async def test_the_leaders_rollback_binds_the_objects_or_is_refused_for_a_removed_one() -> None:
    """v1 uses db_pw, v2 does not; db_pw is removed while v2 rolls out (nothing uses it
    then), and v2 fails. The leader's rollback to v1 once stored v1's reference as it was:
    a spec naming a secret that is not there, every task failing to start, and a secret
    made again under that name mounted as if it were the old one. Now it is refused with
    an event, writes nothing, and goes through once db_pw exists again, at its revision."""
    from node.model.domain import RolloutRecord

    store = MemoryStore()
    w = writer(store)
    await w.objects.put("secret", "db_pw", b"a", False, w)
    good, _ = await w.apply(SPEC, "app.yaml")
    bad, _ = await w.apply(SPEC.replace("secrets: [{source: db_pw}]\n", "").replace("x:1", "x:2"), "app.yaml")
    await w.objects.remove("secret", "db_pw")
    leader, emitted = await leader_with_events(store, KEYS)
    failed = RolloutRecord("app", good.version, bad.version, "t", state="failed", uid=bad.uid)
    before = await dump(store)
    await leader._roll_back([failed], {})
    assert (await w.read("app"))[0].version == bad.version, "no rollback written"
    [(kind, message)] = emitted
    assert kind == "rollout.rollback_refused" and "secret 'db_pw' does not exist" in message
    assert await dump(store) == before, "a refused rollback writes nothing"

    again, _ = await w.objects.put("secret", "db_pw", b"made again", False, w)
    await leader.services.relist()
    await leader._roll_back([failed], {})
    current, _ = await w.read("app")
    assert current.rollback_of == bad.version and current.spec.image == "x:1"
    [ref] = current.spec.secrets or []
    assert ref.revision == again.revision != (good.spec.secrets or [])[0].revision
    assert await store.get(KEYS.object_use("secret", "db_pw")) is not None


# -- the agent's files -----------------------------------------------------------------


async def test_prepare_writes_0400_files_opens_secret_env_and_sweep_removes_them(tmp_path: Path) -> None:
    from node.agent.secretfiles import SecretFiles

    store = MemoryStore()
    w = writer(store)
    await w.objects.put("secret", "db_pw", b"hunter2", False, w)
    await w.objects.put("config", "conf", b"a=1\n", False, w)
    text = SPEC + "configs: [{source: conf, target: /etc/app.conf}]\nsecret_env: {K: v1}\n"
    record, _ = await w.apply(text, "app.yaml")
    task = make_task(record, 1, "n1")
    files = SecretFiles(store, KEYS, tmp_path / "root", sealer())
    made = await files.prepare(task, record.spec, ContainerSpec("c", "x:1", {}, env={"K": "sealed?"}))
    assert made.env["K"] == "v1"
    mounts = {m.target: Path(m.source) for m in made.mounts}
    assert set(mounts) == {"/run/secrets/db_pw", "/etc/app.conf"} and all(m.read_only for m in made.mounts)
    assert mounts["/run/secrets/db_pw"].read_bytes() == b"hunter2"
    assert mounts["/run/secrets/db_pw"].stat().st_mode & 0o777 == 0o400
    assert mounts["/etc/app.conf"].stat().st_mode & 0o777 == 0o444
    assert (tmp_path / "root").stat().st_mode & 0o777 == 0o700
    files.sweep({task.task_id})
    assert mounts["/run/secrets/db_pw"].exists()
    # A daemon that died mid-write left a temporary file (0400) and no file: the next start writes.
    leftover = mounts["/run/secrets/db_pw"].parent / ".db_pw.tmp"
    mounts["/run/secrets/db_pw"].unlink()
    leftover.write_bytes(b"half")
    leftover.chmod(0o400)
    again = await files.prepare(task, record.spec, ContainerSpec("c", "x:1", {}))
    assert {m.target: m.source for m in again.mounts} == {t: str(p) for t, p in mounts.items()}
    assert mounts["/run/secrets/db_pw"].read_bytes() == b"hunter2"
    assert not leftover.exists()
    files.sweep(set())
    assert not (tmp_path / "root" / task.task_id).exists()

    nokey = SecretFiles(store, KEYS, tmp_path / "other")
    with pytest.raises(EngineError, match="no cluster key"):
        await nokey.prepare(task, record.spec, ContainerSpec("c", "x:1", {}))
    wrong = SecretFiles(store, KEYS, tmp_path / "other", sealer(b"not-the-cluster-one"))
    with pytest.raises(EngineError, match="does not open"):
        await wrong.prepare(task, record.spec, ContainerSpec("c", "x:1", {}))
    await store.delete(KEYS.object("secret", "db_pw"))
    with pytest.raises(EngineError, match="secret 'db_pw' does not exist"):
        await files.prepare(make_task(record, 2, "n1"), record.spec, ContainerSpec("c", "x:1", {}))


async def test_a_restart_of_the_same_task_needs_no_etcd(tmp_path: Path) -> None:
    """etcd away, a replica with secrets crashes: its restart (the same task) mounts the
    files its first start wrote, where it read etcd again and could not start. A task's
    spec binds the objects' revisions, so those files hold what etcd would give."""
    from node.agent.secretfiles import SecretFiles

    store = MemoryStore()
    w = writer(store)
    await w.objects.put("secret", "db_pw", b"hunter2", False, w)
    await w.objects.put("config", "conf", b"a=1\n", False, w)
    record, _ = await w.apply(SPEC + "configs: [{source: conf, target: /etc/app.conf}]\n", "app.yaml")
    task = make_task(record, 1, "n1")
    files = SecretFiles(store, KEYS, tmp_path / "root", sealer())
    first = await files.prepare(task, record.spec, ContainerSpec("c", "x:1", {}))
    store.unavailable = True
    again = await files.prepare(task, record.spec, ContainerSpec("c", "x:1", {}))
    assert again.mounts == first.mounts
    written = {m.target: m.source for m in again.mounts}["/run/secrets/db_pw"]
    assert await asyncio.to_thread(Path(written).read_bytes) == b"hunter2"
    with pytest.raises(StoreError):  # another task has no files yet: it needs etcd
        await files.prepare(make_task(record, 2, "n1"), record.spec, ContainerSpec("c", "x:1", {}))


async def test_legacy_plain_secret_env_passes_and_no_references_touch_no_disk(tmp_path: Path) -> None:
    from node.agent.secretfiles import SecretFiles

    spec = parse_spec("name: old\nimage: x\nsecret_env: {K: plain}\n")  # stored before sealing existed
    files = SecretFiles(MemoryStore(), KEYS, tmp_path / "root")
    made = await files.prepare(
        make_task("old", 1, "n1"), spec, ContainerSpec("c", "x", {}, env={"K": "plain"})
    )
    assert made.env == {"K": "plain"} and made.mounts == () and not (tmp_path / "root").exists()


def test_the_secrets_service_is_admin_only() -> None:
    from node.security.tokens import Role, allowed, least_role

    for method in ("PutObject", "ListObjects", "RemoveObject"):
        full = f"/shoal.v1.Secrets/{method}"
        assert least_role(full) is Role.ADMIN
        assert allowed(Role.ADMIN, full)
        assert not allowed(Role.DEPLOYER, full) and not allowed(Role.VIEWER, full)


async def test_a_file_system_that_refuses_the_files_fails_the_start_not_the_agent(tmp_path: Path) -> None:
    """tmpfs full, a read-only /dev/shm (here: a file where the directory goes): an OSError
    escaped the agent's pass and ended the daemon, again at each restart. Now the start
    fails with what to look at, and is tried again with back-off like any start."""
    from node.agent.secretfiles import SecretFiles

    store = MemoryStore()
    w = writer(store)
    await w.objects.put("secret", "db_pw", b"hunter2", False, w)
    record, _ = await w.apply(SPEC, "app.yaml")
    task = make_task(record, 1, "n1")
    root = tmp_path / "root"
    root.write_bytes(b"in the way")
    files = SecretFiles(store, KEYS, root, sealer())
    with pytest.raises(EngineError, match="cannot write"):
        await files.prepare(task, record.spec, ContainerSpec("c", "x:1", {}))
    files.sweep(set())  # cannot list it: said, and the pass goes on
    assert root.read_bytes() == b"in the way"


async def test_an_apply_too_big_for_one_transaction_is_refused_saying_why() -> None:
    """64 secrets and 64 configs need more writes than etcd takes in one transaction: etcd
    refused it and the caller read an internal error. Now it says what to change."""
    store = MemoryStore()
    w = writer(store)
    for i in range(64):
        await w.objects.put("secret", f"s{i}", b"x", False, w)
        await w.objects.put("config", f"c{i}", b"x", False, w)
    secrets = ", ".join(f"{{source: s{i}}}" for i in range(64))
    configs = ", ".join(f"{{source: c{i}, target: /etc/c{i}}}" for i in range(64))
    before = store.revision
    with pytest.raises(InvalidArgument, match="operations in one etcd transaction"):
        await w.apply(f"name: big\nimage: x:1\nsecrets: [{secrets}]\nconfigs: [{configs}]\n", "big.yaml")
    assert store.revision == before


async def test_a_replaced_versions_first_start_gets_the_latest_value_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The secret updated between the spec's write and the task's first start (etcd keeps
    only the latest): the task starts with the new value, as the rolled version's does,
    and the two revisions are logged; it does not stay down until the rollout comes."""
    from node.agent.secretfiles import SecretFiles

    store = MemoryStore()
    w = writer(store)
    await w.objects.put("secret", "db_pw", b"hunter2", False, w)
    record, _ = await w.apply(SPEC, "app.yaml")
    await w.objects.put("secret", "db_pw", b"swordfish", True, w)
    files = SecretFiles(store, KEYS, tmp_path / "root", sealer())
    old = (record.spec.secrets or [])[0].revision
    rolled, _ = await w.read("app")
    new = (rolled.spec.secrets or [])[0].revision
    assert old != new
    with caplog.at_level(logging.WARNING, logger="node.agent.secretfiles"):
        made = await files.prepare(make_task(record, 1, "n1"), record.spec, ContainerSpec("c", "x:1", {}))
    assert await asyncio.to_thread(Path(made.mounts[0].source).read_bytes) == b"swordfish"
    assert f"names revision {old}, replaced since by {new}" in caplog.text


async def test_an_empty_secret_is_refused_and_changes_nothing() -> None:
    """Docker Swarm refuses a secret of 0 bytes; one was stored and mounted as an empty
    file (an empty file or variable given by mistake). An empty config is still taken."""
    store = MemoryStore()
    w = writer(store)
    with pytest.raises(InvalidArgument, match="secret 'db_pw' is empty"):
        await w.objects.put("secret", "db_pw", b"", False, w)
    assert await dump(store) == b""
    await w.objects.put("secret", "db_pw", b"hunter2", False, w)
    await w.apply(SPEC, "app.yaml")
    before = await dump(store)
    with pytest.raises(InvalidArgument, match="at least one byte"):
        await w.objects.put("secret", "db_pw", b"", True, w)
    assert await dump(store) == before
    record, _ = await w.objects.put("config", "empty", b"", False, w)
    assert record.size == 0


async def test_a_secrets_uid_gid_and_mode_are_those_of_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swarm's and Compose's long syntax (`uid: "103"`, `gid: "103"`, `mode: 0440`): the
    file was always the daemon's user's, so a container running as another user could
    not read it but with a mode open to all."""
    from node.agent import secretfiles
    from node.agent.secretfiles import SecretFiles

    store = MemoryStore()
    w = writer(store)
    await w.objects.put("secret", "db_pw", b"hunter2", False, w)
    text = 'name: app\nimage: x:1\nsecrets: [{source: db_pw, uid: "103", gid: 104, mode: 0440}]\n'
    record, _ = await w.apply(text, "app.yaml")
    [ref] = record.spec.secrets or []
    assert (ref.uid, ref.gid, ref.mode) == ("103", "104", "0440")
    files = SecretFiles(store, KEYS, tmp_path / "root", sealer())
    chowned: list[tuple[int, int, int]] = []

    def fchown(fd: int, uid: int, gid: int) -> None:  # as root does, without needing root here
        chowned.append((uid, gid, os.fstat(fd).st_ino))

    monkeypatch.setattr(secretfiles.os, "fchown", fchown)
    made = await files.prepare(make_task(record, 1, "n1"), record.spec, ContainerSpec("c", "x:1", {}))
    st = await asyncio.to_thread(os.stat, made.mounts[0].source)
    assert chowned == [(103, 104, st.st_ino)] and st.st_mode & 0o777 == 0o440

    def refused(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(secretfiles.os, "fchown", refused)
    with pytest.raises(EngineError, match="only a daemon running as root can"):
        await files.prepare(make_task(record, 2, "n1"), record.spec, ContainerSpec("c", "x:1", {}))
    plain, _ = await w.apply(SPEC.replace("name: app", "name: other"), "other.yaml")
    await files.prepare(make_task(plain, 1, "n1"), plain.spec, ContainerSpec("c", "x:1", {}))  # no chown


@pytest.mark.parametrize("value", ["-1", "'abc'", "2147483648", "true", "1.5", "'1 '"])
def test_a_secrets_uid_or_gid_must_be_a_numeric_id(value: str) -> None:
    for field in ("uid", "gid"):
        with pytest.raises(SpecError, match=f"secrets\\[0\\].{field}: must be a numeric user or group id"):
            parse_spec(f"name: a\nimage: x\nsecrets: [{{source: s, {field}: {value}}}]\n")
        with pytest.raises(SpecError, match=f"configs\\[0\\].{field}: must be a numeric user or group id"):
            parse_spec(f"name: a\nimage: x\nconfigs: [{{source: s, target: /etc/s, {field}: {value}}}]\n")


async def test_a_configs_uid_and_gid_own_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config takes `uid`/`gid` as a secret does (Swarm's config reference has them):
    nginx's worker (uid 101) reads a 0440 config it owns. Before, config files were
    always root's and the fields were refused."""
    from node.agent import secretfiles
    from node.agent.secretfiles import SecretFiles

    store = MemoryStore()
    w = writer(store)
    await w.objects.put("config", "site", b"server {}", False, w)
    item = '{source: site, target: /etc/site.conf, uid: 101, gid: "101", mode: 0440}'
    text = f"name: app\nimage: x:1\nconfigs: [{item}]\n"
    record, _ = await w.apply(text, "app.yaml")
    [ref] = record.spec.configs or []
    assert (ref.uid, ref.gid, ref.mode) == ("101", "101", "0440")
    chowned: list[tuple[int, int, int]] = []

    def fchown(fd: int, uid: int, gid: int) -> None:  # as root does, without needing root here
        chowned.append((uid, gid, os.fstat(fd).st_ino))

    monkeypatch.setattr(secretfiles.os, "fchown", fchown)
    files = SecretFiles(store, KEYS, tmp_path / "root", sealer())
    made = await files.prepare(make_task(record, 1, "n1"), record.spec, ContainerSpec("c", "x:1", {}))
    [mount] = made.mounts
    st = await asyncio.to_thread(os.stat, mount.source)
    assert mount.target == "/etc/site.conf"
    assert chowned == [(101, 101, st.st_ino)] and st.st_mode & 0o777 == 0o440


async def test_a_service_record_not_named_as_its_key_fails_no_object_call() -> None:
    """A service record whose `name` is not its key's (written around the API) was looked
    up by its name among the keys: KeyError, so every `config ls`, `create`, `update` and
    `rm` of the cluster failed INTERNAL. It is left out (logged), the others are counted."""
    store = MemoryStore()
    writer = ServiceWriter(store, KEYS, "n1")
    objects = writer.objects
    await objects.put("config", "site", b"v1", False, writer)
    await writer.apply("name: web\nimage: x\nconfigs: [{source: site, target: /etc/site}]\n", "a")
    await writer.apply("name: db\nimage: x\nconfigs: [{source: site, target: /etc/site}]\n", "b")
    kv = await store.get(KEYS.service("web"))
    assert kv is not None
    await store.put(KEYS.service("web"), json.dumps({**json.loads(kv.value), "name": "api"}).encode())
    records, users = await objects.all("config")
    assert [r.name for r in records] == ["site"] and users == {"site": ["db"]}
    record, rolled = await objects.put("config", "site", b"v2", True, writer)
    assert record.version == 2 and rolled == ["db"]
    await objects.put("config", "other", b"x", False, writer)
    await objects.remove("config", "other")
    assert await store.get(KEYS.object("config", "other")) is None
