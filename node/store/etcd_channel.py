"""The gRPC channel from `EtcdStore` to etcd's members: its options, its TLS name, its
target, and that target kept up to date.

- Options (`OPTIONS`): reconnect back-off capped at 1 s, an HTTP/2 ping that finds a
  hung member while a call is open on its connection (never on an idle one: etcd drops
  such a connection for "too many pings"), and room for a large watch response; each set once.
- Endpoints may be host names or IPv6 addresses: the target is ours
  (`node.store.endpoints`), not etcd3aio's `ipv4:` one, which gRPC refuses for both.
- TLS (`EtcdTls`): several endpoints share one channel, which checks every member's
  certificate for one name (gRPC has no name per address): `server_name`, else the
  first endpoint's host (right for one certificate that holds every member's name, as
  `etcd_pki` makes). Certificates of one member each fit no one name: `wrong_name`
  finds such a member (the store's `ping` asks at start-up), `name_hint` says what to set.
- Host names among several endpoints are looked up here (gRPC takes one name per target)
  on `connect`, then again every `RESOLVE_EVERY` seconds, and at most every
  `RESOLVE_AFTER_FAILURE` seconds while calls fail (`look_again`): when the addresses
  changed, a new channel serves the next calls and `on_new` tells the store, so a
  member that moved is found. The old channel is closed with this one, not at once
  (that would cancel the watch streams on it under their tasks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from etcd3aio import Etcd3Client
from etcd3aio._protobuf import MaintenanceStub, StatusRequest
from etcd3aio.connections import ConnectionManager

from node.store.endpoints import grpc_target, host_names, split

log = logging.getLogger(__name__)

MAX_RECEIVE = 256 * 2**20  # bytes: the largest message taken from etcd
KEEPALIVE_MS = 6000  # HTTP/2 ping interval towards each member (etcd's floor is 5 s)
KEEPALIVE_TIMEOUT_MS = 2000  # an unanswered ping this long marks the member's connection dead
RESOLVE_EVERY = 30.0  # s: host names among several endpoints looked up again this often
RESOLVE_AFTER_FAILURE = 1.0  # s: and this often at most while calls to etcd fail
WRONG_NAME = "Hostname Verification Check failed"  # gRPC: the certificate lacks the checked name

# gRPC's default reconnect back-off grows to 120 s: after a long etcd outage a daemon
# would stay cut off for up to two minutes once etcd is back. Cap it at 1 s.
OPTIONS: list[tuple[str, str | int | bool]] = [  # etcd3aio takes no channel options
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A member that hangs (SIGSTOP, a stalled disk, a host cut without a reset) keeps its
    # TCP connection: only an unanswered HTTP/2 ping shows it. etcd refuses pings more
    # often than every 5 s (--grpc-keepalive-min-time): ping every 6 s, give up after
    # 2 s, and the round-robin channel stops sending calls there.
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Only while a call is open on the connection (a watch, a call under way): etcd takes
    # a ping on a connection without one as a strike, at any interval, and answers the
    # third with GOAWAY "too_many_pings", closing the connection (decision 98). etcd3aio
    # sets this to true: every idle member of the round robin was dropped every ~20 s.
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),  # keep pinging a long-quiet watch too
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # gRPC's default 4 MiB is less than one watch response of a watcher catching up
    # (etcd batches up to 1,000 revisions); ranges are paged (`RANGE_PAGE`) anyway.
    ("grpc.max_receive_message_length", MAX_RECEIVE),
]


@dataclass(frozen=True, repr=False)
class EtcdTls:
    """TLS to etcd: the CA that signed etcd's certificate, and this client's certificate
    and key when etcd requires client certificates (`--client-cert-auth`)."""

    ca: bytes  # PEM
    cert: bytes | None = None  # PEM
    key: bytes | None = None  # PEM
    server_name: str | None = None  # the name etcd's certificate is checked for, if not the address

    def __repr__(self) -> str:
        return f"EtcdTls(client_cert={self.cert is not None}, server_name={self.server_name!r})"


class EtcdChannel:
    def __init__(
        self, endpoints: Sequence[str], timeout: float, tls: EtcdTls | None, on_new: Callable[[], None]
    ) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._on_new = on_new
        self.checked_name = tls.server_name if tls is not None else None
        if tls is not None and tls.server_name is None and len(endpoints) > 1:
            # gRPC checks an ipv4:/ipv6: target with several addresses for their whole list
            # ("a:p,b:p"), which no certificate holds: every call failed with "unavailable".
            self.checked_name = split(endpoints[0])[0]
        if tls is None:
            self.client = Etcd3Client(list(endpoints), rpc_max_attempts=2)
        else:
            self.client = Etcd3Client(
                list(endpoints),
                rpc_max_attempts=2,
                tls_server_name=self.checked_name,
                ca_cert=tls.ca,
                cert_key=tls.key,
                cert_chain=tls.cert,
            )
        mine = {name for name, _ in OPTIONS}  # replaced, not appended: which duplicate wins is unsaid
        manager = self.client._manager
        manager.grpc_options = [opt for opt in manager.grpc_options if opt[0] not in mine] + OPTIONS
        manager.target = grpc_target(self.endpoints)  # host names looked up in `connect`
        self._names = host_names(self.endpoints)
        self._addresses: dict[str, list[str]] = {}  # host name -> its addresses, last looked up
        self._resolved_at = 0.0  # monotonic s of the last look-up
        self._resolving: asyncio.Task[None] | None = None
        self._retired: list[grpc.aio.Channel] = []  # channels to old addresses, closed with this
        self.connected = False

    async def connect(self) -> None:
        if not self.connected:
            self.client._manager.target = grpc_target(self.endpoints, await self._resolve())
            await self.client.connect()
            self.connected = True

    async def close(self) -> None:
        if self._resolving is not None:
            self._resolving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._resolving
            self._resolving = None
        for channel in self._retired:
            await channel.close()
        self._retired.clear()
        if self.connected:
            await self.client.close()
            self.connected = False

    async def _resolve(self) -> dict[str, list[str]]:
        """The addresses of the endpoints' host names, when there are several endpoints
        (gRPC looks up a single one itself); a name that does not resolve keeps the
        addresses it had (none at first: it is left out)."""
        loop, out = asyncio.get_running_loop(), {}
        self._resolved_at = time.monotonic()
        for host, port in self._names:
            try:
                async with asyncio.timeout(self.timeout):
                    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, TimeoutError) as exc:
                kept = self._addresses.get(host, [])
                log.warning(
                    "etcd endpoint %s:%d: the name does not resolve (%s); %s",
                    host, port, exc, f"kept at {', '.join(kept)}" if kept else "left out",
                )  # fmt: skip
                if kept:
                    out[host] = kept
                continue
            out[host] = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self._addresses = out
        return out

    def look_again(self, failed: bool) -> None:
        """Look the endpoints' host names up again (in the background) when it is due:
        `RESOLVE_EVERY` seconds after the last look-up, `RESOLVE_AFTER_FAILURE` when a
        call just failed. gRPC never looks up the addresses of an `ipv4:`/`ipv6:` target
        again, so without this a member that moved was lost until the daemon restarted."""
        busy = self._resolving is not None and not self._resolving.done()
        if not self._names or not self.connected or busy:
            return
        if time.monotonic() - self._resolved_at < (RESOLVE_AFTER_FAILURE if failed else RESOLVE_EVERY):
            return
        self._resolving = asyncio.get_running_loop().create_task(self._retarget(), name="etcd-resolve")

    async def _retarget(self) -> None:
        """A new channel when the host names' addresses changed. Calls under way finish on
        the old one (a watch stream on it resumes on the new one when it drops)."""
        joined = ",".join(self.endpoints)
        try:
            target = grpc_target(self.endpoints, await self._resolve())
        except ValueError as exc:  # an address gRPC would not take: keep the channel
            log.warning("etcd endpoints %s: not looked up again: %s", joined, exc)
            return
        manager = self.client._manager
        if target == manager.target or not self.connected:
            return
        log.warning("etcd endpoints %s: now at %s (were %s)", joined, target, manager.target)
        if self.client._channel is not None:
            self._retired.append(self.client._channel)
        manager.target = target
        await self.client.connect()
        self._on_new()

    def member_channel(self, endpoint: str) -> grpc.aio.Channel:
        """A channel to one member only (the client's own balances over all of them)."""
        manager = ConnectionManager([endpoint])
        manager.grpc_options = list(self.client._manager.grpc_options)
        manager.target = grpc_target([endpoint])
        conn = self.client._conn_args
        return manager.get_channel(
            ca_cert=conn.get("ca_cert"),
            cert_key=conn.get("cert_key"),
            cert_chain=conn.get("cert_chain"),
            tls_server_name=self.client._tls_server_name,
        )

    async def wrong_name(self, endpoint: str, timeout: float) -> bool:
        """Does the member at `endpoint` answer with a certificate that lacks the checked name?"""
        channel = self.member_channel(endpoint)
        try:
            await MaintenanceStub(channel).Status(StatusRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return WRONG_NAME in (exc.details() or "")
        finally:
            await channel.close()
        return False

    def name_hint(self, members: Sequence[str]) -> str:
        return (
            f"etcd at {', '.join(members)}: its certificate does not hold {self.checked_name!r}, the one "
            "name every member's certificate is checked for (several endpoints share one channel); "
            "set etcd_server_name to a name that every member's certificate holds (a SAN), "
            "or give the members such certificates"
        )
