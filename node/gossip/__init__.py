"""SWIM membership with Lifeguard, modelled on HashiCorp memberlist; no grpc, docker or etcd.

Members probe each other (direct ping, then indirect ping-req through k relays),
suspect members that do not answer, declare them dead when the suspicion times out
unrefuted, and spread all of it piggybacked on the probes and acks. The daemon
connects it to the peer gRPC API (a `Transport`) and to its registry (`add`).

One module per concern:

| module          | concern                                                          |
|-----------------|------------------------------------------------------------------|
| `messages`      | the wire messages (mirror of proto/shoal/v1/peer.proto)          |
| `member`        | Member, MemberEvent, the incarnation precedence rule             |
| `suspicion`     | suspicion timeouts shrinking with confirmations (Lifeguard)      |
| `broadcast`     | the transmit-limited piggyback queue                             |
| `awareness`     | local health awareness (Lifeguard)                               |
| `order`         | round-robin probe order, relay sampling                          |
| `config`        | GossipConfig, presets `local` / `lan`, `detection_bound`         |
| `state`         | MemberTable: the pure state core                                 |
| `piggyback`     | what each message carries (buddy, corrections, queue, sync)      |
| `probe`         | the probe and reconnect loops (active failure detection)         |
| `memberlist`    | Memberlist: the async shell (server side, timers, join, leave)   |
| `transport`     | the Transport / PeerHandler protocols, ProbeFailed               |
| `memnet`        | MemoryNetwork: an in-memory lossy network for tests and sims     |
"""

from node.gossip.config import PRESETS, GossipConfig, detection_bound
from node.gossip.member import Member, MemberEvent
from node.gossip.memberlist import Memberlist
from node.gossip.memnet import MemoryNetwork
from node.gossip.messages import Ack, MemberState, Ping, PingReq, Update
from node.gossip.transport import PeerHandler, ProbeFailed, Transport

__all__ = [
    "PRESETS",
    "Ack",
    "GossipConfig",
    "Member",
    "MemberEvent",
    "MemberState",
    "Memberlist",
    "MemoryNetwork",
    "PeerHandler",
    "Ping",
    "PingReq",
    "ProbeFailed",
    "Transport",
    "Update",
    "detection_bound",
]
