"""The ingress route table: (host, path prefix) -> a service's container port.

Pure: from the service records etcd holds (their `ingress` rules, `node.model.spec_ingress`)
- `build(services)`: the `Table` every node's entrance routes by;
- `conflict(spec, services)`: why the API refuses a spec (a (host, path) another service
  routes, or another TLS secret for one of its hosts), or None;
- `decide(table, host, url, https, https_port, sni)`: what the entrance does with one
  request: forward it to a `Target`, or answer it itself (`Answer`: 400, 404, 421, or
  the 308 of a rule with `tls.redirect` on plain HTTP).

Rules:
- the host is the request's Host header, lowercased, without its port or a trailing dot;
  a Host with anything but a `:port` after the host, or two Host headers, is a 400; an
  absolute-form request target (`GET http://h/p`) must name the same host as the Host
  header (RFC 9112 3.2: a client sends the same), else 400, and is forwarded in origin
  form (`/p`), so the backend reads no other host than the one routed on;
- a prefix matches segment-wise: `/api` matches `/api`, `/api/` and `/api/x`, not
  `/apix`; `/` matches every path; the longest matching prefix of the host wins;
- over TLS, a connection whose handshake got a host's own certificate by its SNI name
  (`sni`) serves that host only: a request for another host is a 421 Misdirected Request
  (RFC 9110 15.5.20, as nginx and Envoy answer), so a client cannot be given one host's
  certificate and reach another host's service; it opens a new connection for that host.
  Without SNI, or with a name served the default certificate, every host is served;
- the path is matched as sent (not percent-decoded, query and fragment left out);
- should two records claim one (host, path) (written around the API, or by a node of an
  older version during a rolling upgrade: `node.store.ingress_claims`), the service first
  by name keeps it; so every node routes alike.

No sockets, no asyncio, no etcd: the entrance (`node.proxy.ingress`) feeds it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from node.model.domain import ServiceRecord
from node.model.spec import ServiceSpec
from node.model.spec_ingress import route_taken


@dataclass(frozen=True, slots=True)
class Target:
    """Where matching requests go: `port` (a container port) of `service`'s replicas."""

    service: str
    port: int
    redirect: bool = False  # plain HTTP gets a 308 to https://
    sticky: bool = False  # a cookie keeps a client on one replica


@dataclass(frozen=True, slots=True)
class Answer:
    """A request the entrance answers itself."""

    status: int
    body: bytes
    location: str = ""  # of a redirect


@dataclass(frozen=True)
class Table:
    hosts: Mapping[str, tuple[tuple[str, Target], ...]] = field(default_factory=dict)  # longest path first
    certs: Mapping[str, str | None] = field(default_factory=dict)  # host -> TLS secret (None: cluster CA's)

    def targets(self) -> set[Target]:
        return {t for routes in self.hosts.values() for _, t in routes}

    def match(self, host: str, path: str) -> Target | None:
        for prefix, target in self.hosts.get(host, ()):
            if covers(prefix, path):
                return target
        return None


def covers(prefix: str, path: str) -> bool:
    """`prefix` matches `path` segment-wise."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def build(services: Iterable[ServiceRecord]) -> Table:
    """The table of every record's rules; a (host, path) claimed twice goes to the first by name."""
    routes: dict[str, dict[str, Target]] = {}
    certs: dict[str, str | None] = {}
    for record in sorted(services, key=lambda r: r.name):
        for rule in record.spec.ingress or ():
            paths = routes.setdefault(rule.host, {})
            if rule.path in paths:
                continue
            tls = rule.tls
            paths[rule.path] = Target(record.name, rule.port, bool(tls and tls.redirect), bool(rule.sticky))
            if tls is not None and tls.secret and certs.get(rule.host) is None:
                certs[rule.host] = tls.secret
            certs.setdefault(rule.host, None)
    hosts = {h: tuple(sorted(p.items(), key=lambda item: -len(item[0]))) for h, p in routes.items()}
    return Table(hosts, certs)


def conflict(spec: ServiceSpec, services: Iterable[ServiceRecord]) -> str | None:
    """Why `spec` cannot be applied next to `services` (other services' records), or None."""
    mine = spec.ingress or []
    if not mine:
        return None
    for record in sorted(services, key=lambda r: r.name):
        if record.name == spec.name:
            continue
        for other in record.spec.ingress or ():
            for i, rule in enumerate(mine):
                if rule.host != other.host:
                    continue
                if rule.path == other.path:
                    return route_taken(i, rule, record.name)
                theirs = other.tls.secret if other.tls else None
                ours = rule.tls.secret if rule.tls else None
                if ours and theirs and ours != theirs:
                    return (
                        f"ingress[{i}].tls.secret: host {rule.host} already uses TLS secret '{theirs}' "
                        f"(service '{record.name}'); one certificate per host: use '{theirs}' or no secret"
                    )
    return None


_PORT = re.compile(r"(:[0-9]{0,5})?")
_FORWARDING = frozenset((b"forwarded", b"x-real-ip"))


def host_of(value: bytes) -> str:
    """A Host header's host: lowercase, without port or trailing dot ("" when unusable,
    such as anything after the host but a `:port`: `h:@evil` reached the backend as its
    Host, routed for `h`)."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):  # an IPv6 literal
        inside, close, rest = text[1:].partition("]")
        host = f"[{inside}]" if close and inside else ""
    else:
        host, colon, port = text.partition(":")
        host, rest = host.rstrip("."), colon + port
    return host if _PORT.fullmatch(rest) else ""


def authority_of(url: bytes) -> bytes | None:
    """The authority of an absolute-form request target (`http://h:8080/p` -> `h:8080`);
    None for the other forms (`/p`, `*`)."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or not scheme.isalpha():
        return None
    return re.split(rb"[/?#]", rest, maxsplit=1)[0]


def forwarding(name: bytes) -> bool:
    """Is header `name` (lowercase) one only the entrance may set: `Forwarded`,
    `X-Real-IP`, any `X-Forwarded-*`, in any spelling with `_` too (CGI and WSGI servers
    read `X_Forwarded_Host` as `X-Forwarded-Host`, ahead of the entrance's own)?"""
    return name in _FORWARDING or name[:12].replace(b"_", b"-") == b"x-forwarded-"  # per header: no decode


def path_of(url: bytes) -> str:
    """The path of a request target: origin form as is, absolute form's path, no query."""
    text = url.decode("latin-1")
    if not text.startswith("/"):
        scheme, sep, rest = text.partition("://")
        text = "/" + rest.partition("/")[2] if sep and scheme.isalpha() else "/"
    return text.partition("?")[0].partition("#")[0] or "/"


def decide(
    table: Table, host: bytes | None, url: bytes, https: bool, https_port: int, sni: str | None = None
) -> Target | Answer:
    """What the entrance does with a request for `host` (its Host header) and `url`, read
    on a connection made for `sni` (the host whose own certificate its TLS handshake got
    by SNI; None: any host)."""
    authority = authority_of(url)
    if authority is not None:  # RFC 9112 3.2: the client sends the same host in both
        if host is None:
            host = authority
        elif host_of(authority) != host_of(host):
            return Answer(400, b"shoal ingress: the request target names another host than the Host header\n")
    if host is None:
        return Answer(400, b"shoal ingress: the request has no Host header: which site is it for?\n")
    if not (name := host_of(host)):
        return Answer(400, b"shoal ingress: the Host header is not a host name with an optional :port\n")
    if sni is not None and name != sni:
        body = (
            f"shoal ingress: this TLS connection was made for host '{sni}' (its SNI name) and serves "
            f"only that host: open a new connection for '{name}'\n"
        )
        return Answer(421, body.encode())
    routes = table.hosts.get(name)
    if routes is None:
        return Answer(
            404, f"shoal ingress: no service is routed for host '{name}' on this cluster\n".encode()
        )
    path = path_of(url)
    target = table.match(name, path)
    if target is None:
        known = ", ".join(sorted(prefix for prefix, _ in routes))
        body = f"shoal ingress: no route for {name}{path} (paths of {name}: {known})\n"
        return Answer(404, body.encode())
    if target.redirect and not https:
        # a node without the TLS entrance (0) sends to the default port: the site's own
        # HTTPS entrance may be another node's or a load balancer's, never port 0
        port = "" if https_port in (443, 0) else f":{https_port}"
        tail = url.decode("latin-1") if url.startswith(b"/") else path
        location = f"https://{name}{port}{tail}"
        return Answer(308, f"shoal ingress: use {location}\n".encode(), location)
    return target
