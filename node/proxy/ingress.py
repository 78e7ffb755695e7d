"""The node's shared HTTP(S) entrance (issue 17 item 3): one plain and one TLS listener
that route each request by its Host header and path prefix to a service's replicas.

Both listeners are the L7 engine (`HttpProxy`: keep-alive both ways, pooled backend
connections, retries, limits, upgrades, drain), given a `router`: for each request
head the router asks the pure route table (`node.proxy.ingress_routes.decide`) and
either names the balancer of the (service, container port) it goes to, or an answer
of the entrance's own (400 without Host, 404 for an unknown host or path, 308 to
https:// for a rule with `tls.redirect` on the plain listener). The head it forwards
carries `X-Forwarded-Host` (the Host the client sent; one the client sent is dropped),
`X-Forwarded-Proto` (http or https) and `X-Forwarded-For` (the client's address
appended, as in the mesh). A rule with `sticky: true` keeps a client on the replica
its cookie `shoal-sticky-<service>` names (`Sticky`: a digest of the backend, set on
the first response and again whenever that replica is gone or ejected).
On the TLS listener a connection whose handshake got a host's own certificate by its
SNI name serves that host only (`_TlsClient`: a request for another host is a 421, see
`decide`); HTTP/2 is not offered there (ALPN `http/1.1` only), so this is the one path.

`Ingress.sync` is called by the mesh (`node.proxy.mesh`) with the same service records
and routable endpoints its own listeners get: the table is rebuilt, a balancer is kept
per (service, container port) routed to, and a replica that left the set drains as in
the mesh. TLS certificates (`node.proxy.ingress_tls`) are refreshed at each sync. A
port that cannot be bound is logged and reported (`ingress.bind_failed`), tried again
at the next sync (the mesh syncs every `rebind_interval` seconds while one is unbound).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from node.model.domain import EndpointRecord, ServiceRecord
from node.proxy.balancer import Backend, Balancer
from node.proxy.heads import CRLF
from node.proxy.http import HttpProxy
from node.proxy.http_conn import _Client
from node.proxy.http_types import Routed
from node.proxy.ingress_routes import Answer, Table, Target, authority_of, build, decide, forwarding
from node.proxy.ingress_tls import IngressCerts, SniContexts
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)


class IngressRoutes:
    """What both listeners route by: the table, a balancer per (service, port), and which
    balancer each backend key belongs to (failures are reported to it)."""

    def __init__(self, https_port: int) -> None:
        self.https_port = https_port
        self.table = Table()
        self.balancers: dict[tuple[str, int], Balancer] = {}
        self.routed: dict[Target, Routed] = {}
        self.owner: dict[str, Balancer] = {}
        self.by_token: dict[bytes, Backend] = {}  # sticky cookie value -> its backend
        self.failing: set[str] = set()  # shared by both listeners: see HttpProxy.report_ok

    def update(self, table: Table, backends: Mapping[tuple[str, int], Iterable[Backend]]) -> list[Backend]:
        """Use `table` and the backends of its targets (`backends_for`); the backends
        that left (to drain)."""
        self.table = table
        targets = table.targets()
        wanted = {(t.service, t.port) for t in targets}
        removed: list[Backend] = []
        for key in [k for k in self.balancers if k not in wanted]:
            removed += self.balancers.pop(key).set_endpoints(())
        owner: dict[str, Balancer] = {}
        by_token: dict[bytes, Backend] = {}
        for service, port in wanted:
            balancer = self.balancers.setdefault((service, port), Balancer())
            removed += balancer.set_endpoints(backends.get((service, port), ()))
            owner |= dict.fromkeys((b.key for b in balancer.backends), balancer)
            by_token |= {token(b.key): b for b in balancer.backends}
        self.owner, self.by_token = owner, by_token
        self.routed = {t: Routed(self.balancers[(t.service, t.port)], t.service) for t in targets}
        return removed


def backends_for(table: Table, endpoints: Iterable[EndpointRecord]) -> dict[tuple[str, int], list[Backend]]:
    """The replicas of each (service, container port) `table` routes to."""
    wanted = {(t.service, t.port) for t in table.targets()}
    out: dict[tuple[str, int], list[Backend]] = {key: [] for key in wanted}
    for e in endpoints:
        for service, port in wanted:
            if e.service == service and (host_port := e.host_port(port)):
                out[(service, port)].append(Backend(f"{e.task_id}:{port}", e.address, host_port, e.node))
    return out


def token(key: str) -> bytes:
    """The sticky cookie's value for a backend: a digest, so the cookie names no task."""
    return hashlib.blake2s(key.encode(), digest_size=8).hexdigest().encode()


class Sticky(Routed):
    """One request of a sticky route: the backend its cookie names while that one is in
    the set, not ejected and not tried yet for this request; else the next pick, and a
    cookie naming it goes with the response."""

    __slots__ = ("attrs", "name", "prefer", "routes")

    def __init__(self, base: Routed, service: str, routes: IngressRoutes, prefer: bytes, https: bool) -> None:
        super().__init__(base.balancer, service)
        self.routes, self.prefer = routes, prefer
        self.name = b"shoal-sticky-" + service.encode()
        self.attrs = b"; Path=/; HttpOnly; SameSite=Lax" + (b"; Secure" if https else b"")

    def pick(self, now: float, tried: Collection[str]) -> Backend | None:
        balancer = self.balancer
        assert balancer is not None
        b = self.routes.by_token.get(self.prefer) if self.prefer else None
        mine = b is not None and b.key not in tried and self.routes.owner.get(b.key) is balancer
        if mine and b is not None and not balancer.is_ejected(b, now):
            self.set_cookie = b""
            return b
        b = balancer.pick(now, tried)
        if b is not None:
            self.set_cookie = self.name + b"=" + token(b.key) + self.attrs
        return b


def cookie(values: list[bytes], name: bytes) -> bytes:
    """The value of cookie `name` in the Cookie header values (b"" without one)."""
    for value in values:
        for pair in value.split(b";"):
            key, _, v = pair.strip().partition(b"=")
            if key == name:
                return v.strip()
    return b""


class _TlsClient(_Client):
    """A connection to the TLS listener: the host its handshake was given the certificate
    of (`SniContexts.host_of_connection`), which the router reads for each request."""

    __slots__ = ("certs", "sni")

    def __init__(self, ingress: IngressProxy, certs: SniContexts) -> None:
        super().__init__(ingress)
        self.certs = certs
        self.sni: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio calls this once the handshake is done: the SNI callback has run
        self.sni = self.certs.host_of_connection(transport.get_extra_info("ssl_object"))
        super().connection_made(transport)


class IngressProxy(HttpProxy):
    """One listener of the entrance (`https`: behind TLS, its certificates `certs`)."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: IngressRoutes,
        https: bool,
        certs: SniContexts | None = None,
        **engine: Any,
    ) -> None:
        super().__init__(
            host, port, Balancer(), service="ingress", scheme="https" if https else "http", **engine
        )
        self.routes, self.https, self.certs = routes, https, certs
        self.failing = routes.failing
        self.router = self.route

    def _accept(self) -> _Client:
        return _TlsClient(self, self.certs) if self.certs is not None else _Client(self)

    def route(self, head: list[bytes], url: bytes, conn: object) -> Routed:
        host: bytes | None = None
        hosts = 0
        forwarded = False
        cookies: list[bytes] = []
        for i in range(1, len(head), 4):  # name, ": ", value, CRLF
            name = head[i].lower()
            if name == b"host":
                host, hosts = head[i + 2], hosts + 1
            elif name == b"cookie":
                cookies.append(head[i + 2])
            elif forwarding(name):
                forwarded = True
        if hosts > 1:  # RFC 9112 3.2; a backend might read the other one
            return Routed(
                None, status=400, body=b"shoal ingress: the request has more than one Host header\n"
            )
        if forwarded:  # the client's own are not passed on: only the entrance says where from
            kept = head[:1]
            for i in range(1, len(head), 4):
                if not forwarding(head[i].lower()):
                    kept += head[i : i + 4]
            head[:] = kept
        routes = self.routes
        sni = conn.sni if isinstance(conn, _TlsClient) else None
        to = decide(routes.table, host, url, self.https, routes.https_port, sni)
        if isinstance(to, Answer):
            extra = b"Location: %s\r\n" % to.location.encode("latin-1") if to.location else b""
            return Routed(None, status=to.status, body=to.body, extra=extra)
        if host is None:  # an HTTP/1.0 request with an absolute-form target: its host
            host = authority_of(url) or b""
            head += (b"Host: ", host, CRLF)
        head += (b"X-Forwarded-Host: ", host.strip(), CRLF)
        if to.sticky:
            prefer = cookie(cookies, b"shoal-sticky-" + to.service.encode())
            return Sticky(routes.routed[to], to.service, routes, prefer, self.https)
        return routes.routed[to]

    def report_failure(self, backend: Backend, now: float) -> None:
        balancer = self.routes.owner.get(backend.key)
        self.failing.add(backend.key)
        if balancer is not None and balancer.report(backend, False, now):
            self.stats.ejections += 1

    def report_ok(self, backend: Backend, now: float) -> None:
        balancer = self.routes.owner.get(backend.key)
        if backend.key in self.failing and balancer is not None and not balancer.is_ejected(backend, now):
            self.failing.discard(backend.key)
            balancer.report(backend, True, now)


class Ingress:
    """The entrance of one node: `http_port` and/or `https_port` (0: that one off) on `address`."""

    def __init__(
        self,
        address: str,
        http_port: int,
        https_port: int,
        certs: SniContexts | None,
        events: EventLog | None = None,
        reuse_port: bool = False,  # a proxy worker's (decision 80): SO_REUSEPORT beside its siblings
        **engine: Any,  # HttpProxy's settings: timeouts, retry, limits, cap, tunnel_idle
    ) -> None:
        self.address = address
        self.http_port, self.https_port = http_port, https_port
        self.routes = IngressRoutes(https_port)
        self.certs = certs
        self.events = events
        self.proxies: list[IngressProxy] = []
        if http_port:
            self.proxies.append(IngressProxy(address, http_port, self.routes, False, **engine))
        if https_port:
            if certs is None:
                raise ValueError("an HTTPS entrance needs its certificates")
            tls = IngressProxy(address, https_port, self.routes, True, certs, **engine)
            tls.ssl_context = certs.server
            self.proxies.append(tls)
        for proxy in self.proxies:
            proxy.reuse_port = reuse_port
        self.started: set[IngressProxy] = set()
        # with proxy workers (decision 80) they listen, not this: the ports every worker
        # serves after the last table they all took (`node.proxy.workers`); None: here
        self.elsewhere: set[int] | None = None
        self.bind_errors: dict[int, str] = {}
        self.tls_problems: dict[str, str] = {}

    @property
    def unbound(self) -> bool:
        return len(self.listening()) < len(self.proxies)

    def listening(self) -> list[int]:
        if self.elsewhere is not None:
            return sorted(self.elsewhere)
        return sorted(p.listen_port for p in self.started)

    async def sync(self, records: Iterable[ServiceRecord], endpoints: list[EndpointRecord]) -> None:
        """The entrance in the daemon (`proxy_workers = 0`): table, certificates, listeners."""
        table = build(records)
        await self.refresh_certs(table)
        await self.apply(table, backends_for(table, endpoints))

    async def refresh_certs(self, table: Table) -> None:
        """Read and issue the certificates `table` names (in the daemon: `IngressCerts`)."""
        if isinstance(self.certs, IngressCerts):
            self._report_tls(await self.certs.refresh(table.certs))

    async def apply(self, table: Table, backends: Mapping[tuple[str, int], Iterable[Backend]]) -> None:
        """Route by `table` to `backends`, and listen on the ports not bound yet."""
        removed = self.routes.update(table, backends)
        if removed:
            for proxy in self.started:
                proxy.drain(removed)
        for proxy in self.proxies:
            if proxy not in self.started:
                await self._start(proxy)

    def _report_tls(self, problems: dict[str, str]) -> None:
        for host, problem in problems.items():
            self._tell(self.tls_problems.get(host), problem, "ingress.tls_failed", f"ingress: {problem}")
        self.tls_problems = problems

    def report_binds(self, errors: dict[int, str]) -> None:
        """The entrance's bind errors now, by port (proxy workers': decision 80); each new
        one logged and an `ingress.bind_failed` event."""
        for port, error in errors.items():
            self._tell(self.bind_errors.get(port), error, "ingress.bind_failed")
        self.bind_errors = errors

    def _tell(self, before: str | None, problem: str, event: str, logged: str = "") -> None:
        """A problem that is new (not `before`, what was reported last for the same thing):
        logged, and an `event`."""
        if problem != before:
            log.warning("%s", logged or problem)
            if self.events is not None:
                self.events.emit(event, problem)

    async def _start(self, proxy: IngressProxy) -> None:
        port = proxy.listen_port
        try:
            await proxy.start()
        except OSError as exc:
            error = f"ingress cannot listen on {self.address}:{port}: {exc.strerror or exc}"
            self._tell(self.bind_errors.get(port), error, "ingress.bind_failed")
            self.bind_errors[port] = error
            return
        self.bind_errors.pop(port, None)
        self.started.add(proxy)
        log.info("ingress: %s listening on %s:%d", "https" if proxy.https else "http", self.address, port)

    async def close(self) -> None:
        started, self.started = list(self.started), set()
        await asyncio.gather(*(proxy.close() for proxy in started))

    def describe(self) -> dict[str, object]:
        """The table and each route's backends (for logs, tests and debugging)."""
        routes = self.routes
        return {
            "listening": self.listening(),
            "errors": dict(self.bind_errors),
            "tls_problems": dict(self.tls_problems),
            "hosts": {
                host: [
                    {
                        "path": path,
                        "service": t.service,
                        "port": t.port,
                        "backends": [b.key for b in routes.balancers[(t.service, t.port)].backends],
                    }
                    for path, t in paths
                ]
                for host, paths in routes.table.hosts.items()
            },
        }
