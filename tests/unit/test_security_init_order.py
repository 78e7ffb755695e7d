"""Security set-up in the right order. `cluster init` and a join write the CA passphrase
before what makes it matter: a kill between the steps can leave a passphrase with nothing
to open, never a CA (in etcd) or a node certificate (on disk) whose passphrase is nowhere.
`CreateToken` reads what its answer needs before it stores the token."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.daemon.identity import IdentityError, NodeIdentity
from node.model.config import NodeConfig
from node.model.errors import FailedPrecondition
from node.model.keys import Keys
from node.security.cluster import ClusterSecurity
from node.security.files import NodeFiles
from node.security.provision import init_host
from node.store import Compare, Put, StoreUnavailable
from node.store.base import Op, TxnResult
from node.store.memory import MemoryStore

KEYS = Keys()


class DiesAtTheTxn(MemoryStore):
    """The process dies as the init's transaction goes to etcd (here: the call raises)."""

    def __init__(self, applied: bool) -> None:
        super().__init__()
        self.applied = applied

    async def txn(self, compares: list[Compare], ops: list[Op], else_ops: list[Op] = []) -> TxnResult:  # noqa: B006
        if any(isinstance(op, Put) and op.key == KEYS.ca_cert for op in ops):
            if self.applied:
                await super().txn(compares, ops, else_ops)
            raise StoreUnavailable("killed here")
        return await super().txn(compares, ops, else_ops)


@pytest.mark.parametrize("applied", [False, True], ids=["before-applied", "after-applied"])
async def test_init_has_the_passphrase_on_disk_before_the_ca_is_in_etcd(
    tmp_path: Path, applied: bool
) -> None:
    store = DiesAtTheTxn(applied)
    files = NodeFiles.of(tmp_path)
    security = ClusterSecurity(store, KEYS, "c1")
    with pytest.raises(StoreUnavailable):
        await init_host(security, files, "n1", ["127.0.0.1"], [], "127.0.0.1:1")
    assert files.ca_passphrase.exists() and files.exists(), "written before the transaction"
    if applied:  # the CA is in etcd: the passphrase on disk opens it
        passphrase = files.ca_passphrase.read_bytes().strip()
        assert (await security.load_ca(passphrase)).cert_pem == files.ca_cert.read_bytes()


async def test_an_init_refused_removes_the_files_it_wrote(tmp_path: Path) -> None:
    store = MemoryStore()
    await ClusterSecurity(store, KEYS, "c1").initialise()  # another host initialised it
    files = NodeFiles.of(tmp_path)
    with pytest.raises(FailedPrecondition, match="already initialised"):
        await init_host(ClusterSecurity(store, KEYS, "c1"), files, "n1", ["127.0.0.1"], [], "127.0.0.1:1")
    assert not files.exists() and not files.ca_passphrase.exists()


async def test_a_node_with_a_certificate_and_no_passphrase_refuses_to_start_saying_what_to_do(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    security = ClusterSecurity(store, KEYS, "c1")
    files = NodeFiles.of(tmp_path)
    await init_host(security, files, "n1", ["127.0.0.1"], [], "127.0.0.1:1")
    files.ca_passphrase.unlink()  # a join of an older shoal cut off between its two writes
    identity = NodeIdentity(NodeConfig(data_dir=tmp_path, node_id="n1", cluster="c1"), store, KEYS)
    assert identity.load()
    with pytest.raises(IdentityError, match=r"no CA passphrase .* join again"):
        await identity.ensure()


async def test_create_token_stores_nothing_when_etcd_fails_before_its_answer() -> None:
    """The CA certificate the answer carries was read after the token was stored: etcd
    failing there left an admin token whose secret no one received. Read first now."""
    from node.api.admin import Signer
    from node.api.servicer import ShoalServicer
    from node.pb import api_pb2
    from node.security.ca import Lifetimes

    class CaAway(MemoryStore):
        fail = False

        async def get(self, key: str) -> object:  # type: ignore[override]
            if self.fail and key == KEYS.ca_cert:
                raise StoreUnavailable("etcd unreachable")
            return await super().get(key)

    class Context:
        async def abort(self, code: object, details: str) -> None:
            raise RuntimeError(code, details)

    store = CaAway()
    security = ClusterSecurity(store, KEYS, "c1", Lifetimes())
    _, secrets, _ = await security.initialise()
    servicer = ShoalServicer(store, KEYS, "n1")
    servicer.signer = Signer(security, lambda: secrets.ca_passphrase, Lifetimes(), None)
    before = len(await security.tokens())
    store.fail = True
    with pytest.raises(RuntimeError, match="UNAVAILABLE"):
        await servicer.CreateToken(api_pb2.CreateTokenRequest(role="admin"), Context())  # type: ignore[arg-type]
    store.fail = False
    assert len(await security.tokens()) == before, "no token stored without its answer"
