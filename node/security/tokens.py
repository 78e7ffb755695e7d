"""Join tokens, client tokens, and what each client role may call.

**Join token** (Swarm's format, our prefix): `SHOAL-1-<ca>-<secret>`, where `<ca>` is
the sha256 of the CA certificate's DER and `<secret>` 20 random bytes, both lowercase
base32 without padding. The joining node checks the CA it is given against `<ca>`
(pinning: a node never trusts a CA the token does not name), and derives from the
secret the private key of the join certificate (`private_key`), which is how it
proves it holds the token without ever sending it. Rotating the token makes a new
secret, hence a new key; the old key's certificate is then refused.

**Client token**: `shoal_<id>_<secret>`, a 10-character id (shown in lists, used to
revoke, the only part that may be logged) and a 32-byte secret. Only a hash is stored
(`StoredToken`): sha256 over the id and secret. A slow KDF buys nothing here: the
secret is 256 random bits, not a password. Comparison is `hmac.compare_digest`.

**Roles**: `viewer` reads, `deployer` also changes services, `admin` does everything
(tokens, nodes, the cluster). `allowed(role, method)` fails closed: a method of the
client API that is not in the table below is admin-only, so a new RPC is never opened
to viewers by accident.

Pure: no grpc or etcd here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

JOIN_PREFIX = "SHOAL-1-"
CLIENT_PREFIX = "shoal_"
_B32 = "[a-z2-7]"
_JOIN = re.compile(rf"SHOAL-1-({_B32}{{52}})-({_B32}{{32}})")
_CLIENT = re.compile(rf"shoal_({_B32}{{10}})_({_B32}{{52}})")
TOKEN_ID = re.compile(rf"{_B32}{{10}}")
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class TokenError(ValueError):
    """A token is malformed, or does not fit this cluster; the message says which."""


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


# ---------------------------------------------------------------- join tokens


@dataclass(frozen=True, repr=False)
class JoinToken:
    ca_fingerprint: str  # sha256 of the CA certificate's DER, lowercase hex
    secret: str  # base32

    def __post_init__(self) -> None:
        if not re.fullmatch("[0-9a-f]{64}", self.ca_fingerprint):
            raise TokenError("a CA fingerprint is 64 lowercase hex digits (sha256)")

    @classmethod
    def new(cls, ca_fingerprint: str) -> Self:
        return cls(ca_fingerprint, _b32(secrets.token_bytes(20)))

    @classmethod
    def parse(cls, text: str) -> Self:
        """Read a join token; errors say what is wrong without echoing the secret."""
        text = text.strip()
        if not text:
            raise TokenError("the join token is empty; print it on a member with `shoal cluster join-token`")
        if text.startswith(CLIENT_PREFIX):
            raise TokenError("this is a client token (shoal_…), not a join token (SHOAL-1-…)")
        if not text.upper().startswith("SHOAL-"):
            raise TokenError("not a join token: it should start with SHOAL-1-")
        if not text.upper().startswith(JOIN_PREFIX):
            raise TokenError("this join token is of a format this version does not know (expected SHOAL-1-)")
        match = _JOIN.fullmatch(JOIN_PREFIX + text[len(JOIN_PREFIX) :].lower())
        if match is None:
            raise TokenError(
                "the join token is malformed (expected SHOAL-1-<52 characters>-<32 characters>); "
                "was it copied whole?"
            )
        return cls(_unb32(match.group(1)).hex(), match.group(2))

    def __str__(self) -> str:
        return f"{JOIN_PREFIX}{_b32(bytes.fromhex(self.ca_fingerprint))}-{self.secret}"

    def __repr__(self) -> str:
        return f"JoinToken(ca={self.ca_fingerprint[:12]}…, secret=<hidden>)"

    def check_ca(self, ca_fingerprint: str) -> None:
        """Raise unless the cluster's CA is the one this token pins."""
        if not hmac.compare_digest(ca_fingerprint, self.ca_fingerprint):
            raise TokenError(
                f"the cluster's CA (sha256 {ca_fingerprint[:16]}…) is not the one this join token pins "
                f"(sha256 {self.ca_fingerprint[:16]}…): the token is for another cluster, or this host "
                "is talking to the wrong etcd; get the token from a member with `shoal cluster join-token`"
            )

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The join certificate's key, derived from the secret (HKDF-SHA256, bound to the
        CA): everyone holding the token derives the same key, no one else can."""
        okm = HKDF(
            algorithm=hashes.SHA256(),
            length=48,  # 384 bits reduced mod a 256-bit order: negligible bias
            salt=bytes.fromhex(self.ca_fingerprint),
            info=b"shoal join key v1",
        ).derive(_unb32(self.secret))
        scalar = int.from_bytes(okm, "big") % (_P256_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP256R1())


# ---------------------------------------------------------------- client tokens


class Role(StrEnum):
    ADMIN = "admin"
    DEPLOYER = "deployer"
    VIEWER = "viewer"


def parse_role(text: str) -> Role:
    try:
        return Role(text.strip().lower())
    except ValueError:
        raise TokenError(f"unknown role {text!r}: use one of {', '.join(r.value for r in Role)}") from None


@dataclass(frozen=True, repr=False)
class ClientToken:
    id: str
    secret: str

    @classmethod
    def new(cls) -> Self:
        return cls(_b32(secrets.token_bytes(10))[:10], _b32(secrets.token_bytes(32)))

    @classmethod
    def parse(cls, text: str) -> Self:
        """Read a bearer token; errors never echo it (it may be a secret pasted wrong)."""
        text = text.strip()
        if not text:
            raise TokenError("the token is empty")
        if text.upper().startswith("SHOAL-"):
            raise TokenError("this is a join token (SHOAL-1-…), not a client token (shoal_…)")
        match = _CLIENT.fullmatch(text)
        if match is None:
            raise TokenError("the token is malformed (expected shoal_<id>_<secret>); was it copied whole?")
        return cls(match.group(1), match.group(2))

    def __str__(self) -> str:
        return f"{CLIENT_PREFIX}{self.id}_{self.secret}"

    def __repr__(self) -> str:
        return f"ClientToken(id={self.id}, secret=<hidden>)"

    @property
    def hash(self) -> str:
        digest = hashlib.sha256(f"shoal-token-v1\0{self.id}\0{self.secret}".encode()).hexdigest()
        return f"sha256:{digest}"


def _iso(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StoredToken:
    """What the cluster keeps of a client token (in etcd, `tokens/<id>`): never the secret."""

    id: str
    role: str
    hash: str  # "sha256:<hex>"
    created: str  # ISO 8601, UTC
    description: str = ""  # who or what it is for, shown in `shoal token ls`
    expires: str = ""  # ISO 8601, UTC; empty: never
    revoked: str = ""  # ISO 8601, UTC; empty: in force. Kept so a caller learns why it fails.

    @classmethod
    def issue(
        cls, role: Role, description: str = "", expires: datetime | None = None, now: datetime | None = None
    ) -> tuple[ClientToken, Self]:
        """A new token (show it once, to whoever asked) and the record to store."""
        token = ClientToken.new()
        record = cls(
            token.id, role.value, token.hash, _iso(now), description, _iso(expires) if expires else ""
        )
        return token, record

    def matches(self, token: ClientToken) -> bool:
        return token.id == self.id and hmac.compare_digest(token.hash.encode(), self.hash.encode())

    def problem(self, now: datetime | None = None) -> str | None:
        """Why this record does not authorise anything now, or None when it does."""
        if self.revoked:
            return f"token {self.id} was revoked at {self.revoked}"
        if self.expires and datetime.fromisoformat(self.expires) <= (now or datetime.now(UTC)):
            return f"token {self.id} expired at {self.expires}"
        try:
            Role(self.role)
        except ValueError:
            return f"token {self.id} has an unknown role {self.role!r}"
        return None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        data: dict[str, Any] = json.loads(raw)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# ---------------------------------------------------------------- roles

CLIENT_SERVICE = "shoal.v1.Shoal"

# Method names of `shoal.v1.Shoal`. Anything not listed is admin-only (fail closed).
# SetNodeAvailability and LabelNode (drain, pause, activate, labels) change where every
# service runs, so they stay admin-only (Swarm: `node update` needs a manager).
VIEWER_METHODS = frozenset(
    {
        "GetService",
        "ListServices",
        "ListStacks",
        "ServiceHistory",
        "ListTasks",
        "ListNodes",
        "Resolve",
        "WatchResolve",
        "StreamEvents",
        "WatchMembers",
        "WhoAmI",  # no RPC: the dashboard's name for "any viewer" (node.dashboard.server)
        "ServiceLogs",
        "TaskUsage",  # issue 14: usage per task
        "UsageReport",  # issue 15: metered usage and its cost
    }
)
# Exec runs any command in a task's container: no more than a deployer can already do by
# deploying any image, so deployer or admin (issue 14), never viewer.
DEPLOYER_METHODS = VIEWER_METHODS | {
    "ApplyService",
    "ScaleService",
    "DeleteService",
    "RollbackService",
    "Exec",
}
DEPLOYER_METHODS |= {"DeployStack", "RemoveStack"}
# DeployStackWithObjects (decision 72) writes secret values, as Secrets/PutObject does: it
# stays admin-only by being in no table. RemoveStack (a deployer's) also deletes the secrets
# and configs the stack itself created: they live and go with the stack.

# The other client services, by (gRPC service, method) -> the lowest role that may call it;
# a method of theirs that is not listed is admin-only. `shoal.v1.Jobs` (issue 18): reads
# only (a job is written through ApplyService, a deployer's); viewers read them.
JOBS_SERVICE = "shoal.v1.Jobs"
SERVICE_METHODS: dict[tuple[str, str], Role] = {
    (JOBS_SERVICE, "ListJobs"): Role.VIEWER,
    (JOBS_SERVICE, "GetJob"): Role.VIEWER,
    (JOBS_SERVICE, "ListRuns"): Role.VIEWER,
}
_RANK = {Role.VIEWER: 0, Role.DEPLOYER: 1, Role.ADMIN: 2}


def split_method(method: str) -> tuple[str, str]:
    """`/shoal.v1.Shoal/GetService` -> (`shoal.v1.Shoal`, `GetService`); ("", "") if malformed."""
    parts = method.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        return "", ""
    return parts[1], parts[2]


def _role_of(service: str, name: str) -> Role:
    """The table, read at call time: `shoal.v1.Shoal` by its two sets (which later lines of
    this module may extend), every other service by `SERVICE_METHODS`."""
    if service == CLIENT_SERVICE:
        if name in VIEWER_METHODS:
            return Role.VIEWER
        return Role.DEPLOYER if name in DEPLOYER_METHODS else Role.ADMIN
    return SERVICE_METHODS.get((service, name), Role.ADMIN)


def least_role(method: str) -> Role:
    """The lowest role that may call `method` (a full gRPC method path)."""
    return _role_of(*split_method(method))


def allowed(role: Role, method: str) -> bool:
    """May a token of `role` call `method`? Admin: anything; others: what the table gives
    their role or a lower one (fail closed: a method in no table is admin-only)."""
    return role is Role.ADMIN or _RANK[role] >= _RANK[least_role(method)]
