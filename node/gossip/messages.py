"""The gossip wire messages, as plain frozen dataclasses.

They mirror `proto/shoal/v1/peer.proto` field for field, so the gRPC layer converts
them one to one and everything else (the state core, the in-memory network, the
simulations) runs without protobuf:

| dataclass | proto message    |
|-----------|------------------|
| `Update`  | `MemberUpdate`   |
| `Ping`    | `PingRequest`    |
| `PingReq` | `PingReqRequest` |
| `Ack`     | `PingResponse`   |

One addition to the proto: `Update.source`, the member whose own failed probe raised a
suspicion (memberlist's `suspect.From`). Lifeguard shrinks a suspicion timeout only on
*independent* confirmations, and only the source tells a confirmation from a relay of
the same rumour. It travels as `source` (field 5) of `MemberUpdate`; an empty source
(an older peer) is merged normally but counts as no confirmation.

`Update.proof` (field 6) makes ALIVE and LEFT claims the subject's own: a refutation
(ALIVE at a higher incarnation), an address, a goodbye are facts only the member
itself may state, while SUSPECT and DEAD about others are any member's to send
(SWIM). The proof is opaque here: the state core gets it checked by an injected
verifier and relays it unchanged (`state.MemberTable`); the daemon's signs and
checks it with the node certificates (`node.security.gossip_proof`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MAX_INCARNATION = 2**64 - 1  # the wire's uint64: a member never goes past it


class MemberState(StrEnum):
    """A member's state in one member's view. Wire values are the proto's strings."""

    ALIVE = "alive"  # answers probes (directly or through a relay)
    SUSPECT = "suspect"  # a probe failed; it has until the suspicion timeout to refute
    DEAD = "dead"  # the suspicion timed out unrefuted; acted on (tasks move)
    LEFT = "left"  # it said goodbye (graceful leave); final for that incarnation


@dataclass(frozen=True, slots=True)
class Update:
    """One fact about one member: "`node` at `address` is `state` at `incarnation`"."""

    node: str
    address: str  # host:port of the member's peer API
    incarnation: int
    state: MemberState
    source: str = ""  # SUSPECT only: the member whose own probe failed (see module doc)
    proof: bytes = b""  # ALIVE and LEFT only: the subject's signature of this claim (module doc)


@dataclass(frozen=True, slots=True)
class Ping:
    """A direct probe. The receiver merges `updates` and answers with an `Ack`."""

    from_node: str
    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """An indirect probe: "ping `target_node` at `target_address` for me"."""

    from_node: str
    seq: int
    target_node: str
    target_address: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to a `Ping` or a `PingReq`.

    To a `Ping`: `node` and `incarnation` are the responder's own, `ack` is True.
    To a `PingReq`: `node` is the target; `ack` says whether the relay reached it
    (False is Lifeguard's "nack": the relay is fine, the target did not answer) and
    `incarnation` is the target's, from its ack to the relay (0 when not reached).
    """

    node: str
    seq: int
    incarnation: int
    ack: bool
    updates: tuple[Update, ...] = ()
