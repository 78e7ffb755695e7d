"""The `ingress` part of a service spec (issue 17 item 3): host names and path prefixes
the node's shared HTTP(S) entrance routes to one of the service's container ports.

    ingress:
      - host: app.example.test
        path: /api             # a prefix, segment-wise: /api, /api/..., not /apix; default /
        port: 8080             # a container port of `ports`
        tls: {secret: app-tls, redirect: true}

`tls.secret` names a shoal secret holding the host's certificate chain and key (PEM,
one after the other); without one the node serves a certificate issued for the host by
the cluster CA (for development and internal use: browsers do not trust it).
A host with a secret in one rule uses it for all (two different secrets for one
host are refused). `tls.redirect` answers a plain HTTP request for the rule with a 308 to HTTPS.
`sticky: true` keeps a client on one replica with a cookie (`shoal-sticky-<service>`).

Host names are lowercase DNS names (no wildcard, no port). A rule's (host, path) is
unique in the spec; across services the API refuses a pair another service routes
(`node.proxy.ingress_routes.conflict` before the write, and the claim key
`ingress/<host>/<path>` in the write's transaction: `node.store.ingress_claims`).

`proxy_protocol: [5432]` (issue 17, with the ingress): the mesh and the service's VIP
begin every connection to those tcp container ports with a PROXY protocol v2 header
carrying the client's address (`node.proxy.proxy_v2`), for backends that want it.

Pure: imports no grpc, docker or etcd.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from node.model.spec_lifecycle import OBJECT_PATTERN

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
MAX_RULES = 64
MAX_PATH = 1024
_LABEL = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/")


def _fail(message: str, at: tuple[Any, ...] = ()) -> PydanticCustomError:
    return PydanticCustomError("spec", "{msg}", {"msg": message, "at": at})


def _host(v: str) -> str:
    labels = v.split(".")
    if len(v) > 253 or len(labels) < 2 or not all(re.fullmatch(_LABEL, label) for label in labels):
        raise _fail(
            f"must be a lowercase DNS name with at least one dot, like app.example.test (no port, "
            f"no wildcard), got {v!r}"
        )
    return v


def _path(v: str) -> str:
    if not v.startswith("/") or len(v) > MAX_PATH or not set(v) <= _PATH_CHARS:
        raise _fail(
            f"must be a URL path starting with '/', at most {MAX_PATH} characters, without query, "
            f"fragment or spaces, got {v!r}"
        )
    if "//" in v or "/./" in v or "/../" in v or v.endswith(("/.", "/..")):
        raise _fail(f"must be a plain path prefix (no empty, '.' or '..' segment), got {v!r}")
    return v.rstrip("/") or "/"  # /api/ and /api are the same prefix


def _secret(v: str) -> str:
    if not re.fullmatch(OBJECT_PATTERN, v) or len(v) > 63:
        raise _fail(f"must be a secret name (`shoal secret ls`), got {v!r}")
    return v


class IngressTLS(BaseModel):
    """TLS for a rule's host: the certificate, and whether plain HTTP is redirected."""

    model_config = _STRICT
    secret: Annotated[str, AfterValidator(_secret)] | None = None  # chain + key PEM; None: the cluster CA's
    redirect: bool | None = None  # True: plain HTTP requests get 308 to https://


class IngressRule(BaseModel):
    """One (host, path prefix) the node's entrance sends to `port` of the service."""

    model_config = _STRICT
    host: Annotated[str, AfterValidator(_host)]
    path: Annotated[str, AfterValidator(_path)] = "/"
    port: Annotated[int, Field(ge=1, le=65535)]
    tls: IngressTLS | None = None
    sticky: bool | None = None  # True: a cookie keeps a client on the replica it first reached


Ingress = Annotated[list[IngressRule], Field(min_length=1, max_length=MAX_RULES)]
ProxyProtocolPorts = Annotated[
    list[Annotated[int, Field(ge=1, le=65535)]], Field(min_length=1, max_length=64)
]


def route_taken(index: int, rule: IngressRule, owner: str) -> str:
    """Why rule `index` cannot be had: service `owner` routes its (host, path) already."""
    return (
        f"ingress[{index}]: {rule.host}{rule.path} is already routed to service '{owner}'; "
        f"choose another host or path, or remove it from '{owner}'"
    )


def ingress_fits(spec: Any) -> Any:
    """`ServiceSpec`'s rule for `ingress`: each rule's port is a container port of `ports`,
    each (host, path) once, and one host's rules agree on its TLS secret; each port of
    `proxy_protocol` is a `tcp` port of `ports`."""
    rules: list[IngressRule] = spec.ingress or []
    containers = {p.container for p in spec.ports}
    tcp = {p.container for p in spec.ports if p.protocol == "tcp"}
    kernel = {p.container: j for j, p in enumerate(spec.ports) if p.fast_path == "kernel"}
    for i, port in enumerate(spec.proxy_protocol or []):
        if port not in tcp:
            have = ", ".join(str(c) for c in sorted(tcp)) or "none"
            raise _fail(
                f"port {port} is not a tcp container port of this service (tcp ports: {have}); "
                "the PROXY protocol header goes ahead of tcp connections only",
                ("proxy_protocol", i),
            )
        if port in kernel:
            raise _fail(
                f"the kernel fast path forwards packets and cannot put a PROXY header ahead of port {port} "
                "(in proxy_protocol): remove fast_path from it, or the port from proxy_protocol",
                ("ports", kernel[port], "fast_path"),
            )
    seen: dict[tuple[str, str], int] = {}
    secrets: dict[str, tuple[str, int]] = {}
    for i, rule in enumerate(rules):
        if rule.port not in containers:
            have = ", ".join(str(c) for c in sorted(containers)) or "none"
            raise _fail(
                f"port {rule.port} is not a container port of this service (ports: {have}); "
                "add it to ports (published is not needed)",
                ("ingress", i, "port"),
            )
        key = (rule.host, rule.path)
        if key in seen:
            raise _fail(f"{rule.host}{rule.path} is already routed by ingress[{seen[key]}]", ("ingress", i))
        seen[key] = i
        secret = rule.tls.secret if rule.tls else None
        if secret is None:
            continue
        known = secrets.setdefault(rule.host, (secret, i))
        if known[0] != secret:
            raise _fail(
                f"host {rule.host} has TLS secret {known[0]!r} in ingress[{known[1]}]: one certificate "
                "per host, give the host's rules the same tls.secret (or none)",
                ("ingress", i, "tls"),
            )
    return spec
