"""Each use of the join token, recorded in etcd: no silent replay, a bounded count.

A join token admits a host; before this, the same token could join any number of node
ids, and the same node id again and again. Now `Peer/Join` commits, in one etcd
transaction with the checks that make it safe:

- `nodes/<id>` absent: a running node's id is never granted (its certificate would
  let the caller speak for that node, and take its tasks);
- `joins/<key-id>/<id>` absent: a node id joins once per token (a replay is refused;
  re-joining a host that lost its `tls/` needs a rotated token). The one exception is
  the same request again: the use records the key of the CSR it granted (`key`), and
  a join for the same node id with the same key (the host asking the next member after
  its answer was lost) is granted again without counting a new use: a certificate for
  that key is only of use to whoever holds its private key, the host that made it;
- `joins/<key-id>` (the count) below `max_uses`;
- `security/join` unchanged: a rotation in between wins (a renewal of its certificate,
  `ClusterSecurity.renew_join_cert`, keeps the key id: the use is tried again on it).

`rotate-token` deletes `joins/` (the old key id admits no one any more), so the prefix
holds at most `max_uses + 1` keys. The check runs after the certificate is made and
before it is returned: a refused join leaves nothing behind, and a member that dies
between the commit and its answer (or an answer that arrives after the caller's
deadline) has not spent the node id's use: the host, still holding its key, asks
another member with the same CSR and gets its certificate. A host that starts again
makes a new key, and that is a new use of the node id: refused (rotate the token).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from node.model.errors import Conflict, FailedPrecondition
from node.model.keys import Keys
from node.security.cluster import JoinRecord
from node.store import Compare, Put, Store
from node.store.retry import compare_and_swap

DEFAULT_MAX_USES = 100  # hosts one join token admits; then `shoal cluster rotate-token`
_ATTEMPTS = 8

ROTATE = "rotate it (`shoal cluster rotate-token`, admin) and join with the new one"


async def record_join(
    store: Store,
    keys: Keys,
    key_id: str,
    join_mod: int,
    node: str,
    addresses: list[str],
    member: str,
    max_uses: int,
    key: str = "",
) -> int:
    """Record node id `node` joining with the join token `key_id` (whose `security/join`
    record has mod revision `join_mod`) for the CSR key `key` (`ca.key_id`); the use's
    number. The same node id and key again is the same use (its number, nothing counted).
    Raises FailedPrecondition (running node id, replay with another key, uses spent) or
    Conflict (rotated meanwhile)."""
    count_key, use_key = keys.join_uses(key_id), keys.join_use(key_id, node)

    async def attempt() -> int | None:
        running = await store.get(keys.node(node))
        if running is not None:
            raise FailedPrecondition(
                f"node id {node!r} is running (registered under nodes/); a join never takes a running "
                "node's id: give the new host another --node-id"
            )
        now = datetime.now(UTC).isoformat(timespec="seconds")
        used = await store.get(use_key)
        if used is not None:
            earlier = json.loads(used.value)
            if not key or earlier.get("key") != key:
                raise FailedPrecondition(
                    f"node id {node!r} already joined with this join token (at {earlier.get('at', '?')}); "
                    f"a token admits a node id once: to join it again, {ROTATE}"
                )
            # the same host asking again (its answer was lost): the same use, not a new one
            result = await store.txn(
                [
                    Compare(keys.join, "mod", "==", join_mod),
                    Compare(keys.node(node), "create", "==", 0),
                    Compare(use_key, "mod", "==", used.mod_revision),
                ],
                [Put(use_key, json.dumps(earlier | {"again": now}, sort_keys=True).encode())],
            )
            if result.succeeded:
                return int(earlier.get("use", 0))
            await fenced()
            return None
        counter = await store.get(count_key)
        count = int(counter.value) if counter is not None else 0
        if count >= max_uses:
            raise FailedPrecondition(
                f"this join token has admitted {count} hosts, its bound "
                f"(join_token_uses = {max_uses}); {ROTATE}"
            )
        record = {"node": node, "addresses": addresses, "member": member, "use": count + 1, "key": key}
        record["at"] = now
        result = await store.txn(
            [
                Compare(keys.join, "mod", "==", join_mod),
                Compare(keys.node(node), "create", "==", 0),
                Compare(use_key, "create", "==", 0),
                Compare(count_key, "mod", "==", counter.mod_revision)
                if counter is not None
                else Compare(count_key, "create", "==", 0),
            ],
            [
                Put(count_key, str(count + 1).encode()),
                Put(use_key, json.dumps(record, sort_keys=True).encode()),
            ],
        )
        if result.succeeded:
            return count + 1
        await fenced()
        return None

    async def fenced() -> None:
        """After a failed transaction: raise Conflict when the token was rotated (else try again)."""
        nonlocal join_mod
        join = await store.get(keys.join)
        if join is None or join.mod_revision != join_mod:
            if join is None or JoinRecord.from_json(join.value).key_id != key_id:
                raise Conflict("the join token was rotated while this host joined; join with the new token")
            join_mod = join.mod_revision  # the same token, its certificate renewed

    return await compare_and_swap(
        attempt, "too many hosts joining at once with this token; try again", _ATTEMPTS
    )
