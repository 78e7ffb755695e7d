"""Upgrades (WebSocket and the like) of a client connection of the L7 engine.

Functions on a `node.proxy.http_conn._Client` (here, the `Upgrading` it is; kept apart
for the size of the modules, like `node.proxy.http_outcomes`). A request asking for an
upgrade is sent with its `Connection: upgrade` and `Upgrade` headers; llhttp stops
after its head, and the bytes after it are held (`held`, reading paused with `P_UPG`)
until the answer: a 101 makes the connection a tunnel (`upgraded`,
`node.proxy.http_tunnel`), any other answer makes them HTTP again (`not_upgraded`,
called by `_Client._next`).
"""

from __future__ import annotations

from typing import Protocol

from httptools import HttpRequestParser

from node.proxy.heads import Special, upgrade_value, with_upgrade
from node.proxy.http_tunnel import Tunnel
from node.proxy.http_types import P_UPG, P_WAIT, Client, Engine, Request, Upstream


class Upgrading(Client, Protocol):
    """What these functions use of a client connection."""

    proxy: Engine
    parser: HttpRequestParser
    cur: Request | None
    upgrading: Request | None  # the request that asked for an upgrade, until answered
    held: bytes  # read after its head
    paused: int
    lost: bool
    closing: bool

    def data_received(self, data: bytes) -> None: ...


def asks_upgrade(c: Upgrading, r: Request, special: Special) -> None:
    """`r` (no body) asked for an upgrade (llhttp's should_upgrade): if it says to what
    (an Upgrade header), forward it with `Connection: upgrade` and that Upgrade."""
    upgrade = upgrade_value(special)
    if upgrade is not None:
        r.upgrade = upgrade
        r.head = with_upgrade(r.head, upgrade)
        c.upgrading = r


def hold(c: Upgrading, rest: bytes) -> None:
    """llhttp stopped after the head of the request asking for an upgrade: keep what
    followed it, and read no more, until the answer says whether it is HTTP."""
    c.held = rest
    c.pause(P_UPG)


def not_upgraded(c: Upgrading, close: bool) -> None:
    """The upgrade asked for was answered otherwise than 101: what followed its head is
    HTTP again (on a new parser: llhttp stopped at the upgrade)."""
    held, c.held = c.held, b""
    if c.lost:
        return
    c.parser = HttpRequestParser(c)
    if close or c.proxy.closing or c.eof or c.closing:
        c.shut()
        return
    c.resume(P_UPG | P_WAIT)
    if held:
        c.data_received(held)


def upgraded(c: Upgrading, up: Upstream, to_client: bytes) -> None:
    """The replica answered 101 (its head and what followed it in `to_client`): `c` and
    `up` become a tunnel (`node.proxy.http_tunnel`); `c` stays tracked by the engine
    until the tunnel ends."""
    proxy = c.proxy
    c.up = up.client = up.req = None
    c.cur = c.upgrading = None
    held, c.held = c.held, b""
    if c.lost:  # cannot happen (connection_lost unlinks), but never leak `up`
        up.transport.abort()
        return
    del c.parser  # no more HTTP; it holds bound methods of c

    def ended() -> None:
        c.lost = True
        c.tunnel = None
        proxy.finished(c)

    proxy.flush()  # what is queued for either transport goes first
    tunnel = c.tunnel = Tunnel(up.backend, proxy.stats, ended)
    tunnel.open(c.transport, up.transport, to_client, held)
    c.paused = 0
    c.transport.resume_reading()
    if up.paused:
        up.paused = False
        up.transport.resume_reading()
    if up.draining:
        tunnel.drain(proxy.loop, proxy.drain_timeout)
    if c.eof and tunnel.client is not None:  # half-closed already: pass it on
        tunnel.client.eof_received()
