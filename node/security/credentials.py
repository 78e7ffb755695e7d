"""The daemon's `CredentialStore`: client tokens and the join key, from etcd, kept local.

The auth check runs before every call, so it must not cost an etcd round trip: two
mirrors (`node.store.cache.PrefixCache`: list, then watch) keep `tokens/` and
`security/` in memory, and a lookup is a dict read. A token created or revoked on
any node reaches every node's mirror within the watch's delay (milliseconds); the
node that made the change waits for its own mirror to catch up (`caught_up`) before
it answers, so a caller never sees its own revocation not taken yet.

Until the first listing arrives a lookup waits (at most `ready_timeout`) and then
fails, which makes the call UNAVAILABLE, never open. While etcd is unreachable the
mirrors keep their last view, so calls that need no etcd keep being authorised.
"""

from __future__ import annotations

import asyncio

from node.model.keys import Keys
from node.security.cluster import JoinRecord
from node.security.tokens import TOKEN_ID, StoredToken
from node.store import KV, Store
from node.store.cache import PrefixCache
from node.store.mirrors import mirror


class CredentialsNotLoaded(ConnectionError):
    """The mirrors have not listed etcd yet."""


class EtcdCredentials:
    def __init__(self, store: Store, keys: Keys, ready_timeout: float = 5.0) -> None:
        self.keys = keys
        self.ready_timeout = ready_timeout
        self.tokens = mirror(store, keys.tokens, "tokens")
        self.security = mirror(store, keys.security, "security")
        self._parsed: dict[tuple[str, int], StoredToken | JoinRecord] = {}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.tokens.run(), name="credentials-tokens")
            tg.create_task(self.security.run(), name="credentials-security")

    async def _ready(self, cache: PrefixCache) -> None:
        if cache.ready.is_set():
            return
        try:
            async with asyncio.timeout(self.ready_timeout):
                await cache.ready.wait()
        except TimeoutError:
            raise CredentialsNotLoaded(f"{cache.name} not loaded from etcd yet") from None

    def _parse(self, kv: KV, kind: type[StoredToken] | type[JoinRecord]) -> StoredToken | JoinRecord:
        memo = (kv.key, kv.mod_revision)
        found = self._parsed.get(memo)
        if found is None:
            if len(self._parsed) > 10_000:
                self._parsed.clear()
            found = self._parsed[memo] = kind.from_json(kv.value)
        return found

    async def token(self, token_id: str) -> StoredToken | None:
        if not TOKEN_ID.fullmatch(token_id):
            return None
        await self._ready(self.tokens)
        kv = self.tokens.items.get(self.keys.token(token_id))
        if kv is None:
            return None
        record = self._parse(kv, StoredToken)
        assert isinstance(record, StoredToken)
        return record

    async def join_key_id(self) -> str | None:
        await self._ready(self.security)
        kv = self.security.items.get(self.keys.join)
        if kv is None:
            return None
        record = self._parse(kv, JoinRecord)
        assert isinstance(record, JoinRecord)
        return record.key_id

    async def caught_up(self, key: str, revision: int, timeout: float = 5.0) -> bool:
        """Wait until the mirror holding `key` has seen etcd `revision` (a write this node made)."""
        cache = self.tokens if key.startswith(self.keys.tokens) else self.security
        changed = cache.listener(asyncio.Event())
        try:
            async with asyncio.timeout(timeout):
                while cache.revision < revision:
                    await changed.wait()
                    changed.clear()
            return True
        except TimeoutError:
            return False
        finally:
            cache.remove_listener(changed)
