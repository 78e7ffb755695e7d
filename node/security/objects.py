"""Secrets and configs as etcd holds them: `secrets/<name>`, `configs/<name>` (issue 13).

A record carries the value and what tells one write of it from another: `uid` (drawn
when the name is created, so a name removed and created again is another object) and
`version` (1, 2, ... per update). `revision` = "<uid>.<version>" is what a service's
spec records for each secret and config it uses (`SecretRef.revision`): a new write
gives a new revision, the services' specs change with it, and the normal rolling
update replaces their replicas.

A secret's `data` is sealed (`node.security.sealing`, associated data `secret/<name>`):
etcd never holds it in the clear. A config's `data` is its bytes in base64 (configs are
not secret; they are mounted read-only).

`stack` names the stack whose deploy created the object (decision 72): `stack rm` removes
it, a redeploy that no longer declares it prunes it. "" for `shoal secret create`'s, which
no stack operation touches. Written only when set, so a record without it reads and
writes as before (an older node ignores the key; its update drops it: the object then
stays when the stack goes, the safe side).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from node.security.sealing import Sealer, SealError, secret_ad

KINDS = ("secret", "config")
MAX_BYTES = 500 * 1024  # Docker Swarm's limit for a secret or config


@dataclass(frozen=True, repr=False)
class ObjectRecord:
    kind: str  # "secret" | "config"
    name: str
    uid: str
    version: int
    size: int  # bytes of the value
    created: str  # ISO 8601 UTC
    updated: str
    data: str  # secret: sealed text; config: base64
    stack: str = ""  # the stack that owns it (decision 72); "" when created on its own

    @property
    def revision(self) -> str:
        return f"{self.uid}.{self.version}"

    def __repr__(self) -> str:  # never the value, sealed or not
        return f"ObjectRecord({self.kind} {self.name} {self.revision}, {self.size} bytes)"

    def to_json(self) -> bytes:
        d = {
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "version": self.version,
            "size": self.size,
            "created": self.created,
            "updated": self.updated,
            "data": self.data,
        }
        if self.stack:
            d["stack"] = self.stack
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ObjectRecord:
        """The record; ValueError (saying what is wrong, never the data) when `raw` is not
        a JSON object with every field of its type (one written around the API)."""
        try:
            d = json.loads(raw)
        except ValueError:
            raise ValueError("the stored record is not JSON") from None
        if not isinstance(d, dict):
            raise ValueError("the stored record is not a JSON object")
        texts = ("kind", "name", "uid", "created", "updated", "data")
        wrong = [k for k in texts if not isinstance(d.get(k), str)]
        wrong += [k for k in ("version", "size") if type(d.get(k)) is not int]
        if not isinstance(d.get("stack", ""), str | None):
            wrong.append("stack")
        if wrong:
            raise ValueError(f"the stored record lacks {', '.join(wrong)} or has the wrong type there")
        return cls(
            d["kind"],
            d["name"],
            d["uid"],
            d["version"],
            d["size"],
            d["created"],
            d["updated"],
            d["data"],
            str(d.get("stack") or ""),
        )

    def value(self, sealer: Sealer | None) -> bytes:
        """The plain bytes: a secret is opened with `sealer` (SealError when it does not open)."""
        if self.kind == "config":
            return base64.b64decode(self.data)
        if sealer is None:
            raise SealError(f"secret {self.name}: this node has no cluster key to open it")
        return sealer.open(self.data, secret_ad(self.name))


def encode(kind: str, name: str, value: bytes, sealer: Sealer | None) -> str:
    """The `data` of a record holding `value`."""
    if kind == "config":
        return base64.b64encode(value).decode()
    if sealer is None:
        raise SealError("this node has no cluster key (CA passphrase): it cannot seal a secret")
    return sealer.seal(value, secret_ad(name))
