"""The certificates of the node's HTTPS entrance, one per host, picked by SNI.

`IngressCerts.server` is the listening `SSLContext`; its SNI callback switches a
handshake to the context of the host the client names. A host's certificate is
- the chain and key (PEM, in one secret) of the secret its rules name (`tls.secret`),
  opened with the cluster key as the agent opens secrets, and loaded again when the
  secret's revision changes (checked at each `refresh`);
- else one the cluster CA issues for the host (`node.security.site_cert`), again when
  two thirds of its lifetime have passed.
A handshake for a name with no route (or no SNI) gets the default certificate, issued
by the cluster CA for the node's address, so the client can be answered 404.
`host_of_connection` tells the entrance which host a connection's handshake was switched
to (the SNI name, when it has a certificate of its own): that connection serves that
host only (421 for another, `node.proxy.ingress_routes.decide`).

A secret that cannot be read (missing, not a PEM chain and key) leaves its host with
the certificate it had (none at first: the handshake then gets the default one), and
is reported (`problems`, logged and an `ingress.tls_failed` event by the caller);
`refresh` never raises for one host's trouble.

PEMs reach OpenSSL through a file in `workdir` (0700, the file 0600) that lives only
while it loads: Python's ssl module loads a certificate chain from files only. One left
by a process killed in that moment is removed at the next start.

With proxy workers (decision 76) the entrance runs in them (decision 80): the daemon
reads and issues as above, and sends each worker the PEMs it holds (`pems`,
`default_pem`) with the route table, over the worker's socket (0600, in the data
directory: root's, like the secrets' key); a worker's `SniContexts.use` loads what
changed.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import weakref
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from node.model.keys import Keys
from node.security.ca import CertError, ClusterCA
from node.security.objects import ObjectRecord
from node.security.sealing import Sealer, SealError
from node.security.site_cert import issue_site
from node.store import Store, StoreError

log = logging.getLogger(__name__)


class EncryptedKey(ssl.SSLError):
    """A key that asks for a passphrase. Without a password callback OpenSSL asks for it
    on the daemon's terminal, if it has one, and the daemon's loop waits there."""

    reason = "the private key is encrypted: store it without a passphrase (`openssl pkey -in key.pem`)"

    def __str__(self) -> str:
        return self.reason


def _no_passphrase() -> bytes:
    raise EncryptedKey()


def _context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class SniContexts:
    """Server contexts by SNI host, built from PEMs (a chain and its key): the part of
    the certificates a proxy worker holds (`use`), given them by the daemon, which reads
    them (`IngressCerts`, below) and sends them over the worker's socket."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server = _context()
        self.server.sni_callback = self._sni
        self.contexts: dict[str, ssl.SSLContext] = {}
        self.pems: dict[str, bytes] = {}  # host -> the chain and key its context holds
        self.default_pem = b""  # what `server` holds (the certificate for names without a route)
        # handshake -> the host whose own certificate it was given (by its SNI name)
        self.switched: weakref.WeakKeyDictionary[ssl.SSLObject, str] = weakref.WeakKeyDictionary()
        self._sweep_files()

    def _sweep_files(self) -> None:
        """Remove PEM files a process killed while loading one left behind (keys in them)."""
        for path in self.workdir.glob(".cert-*") if self.workdir.is_dir() else ():
            path.unlink(missing_ok=True)

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name:
            host = name.lower().rstrip(".")
            ctx = self.contexts.get(host)
            if ctx is not None:
                sslobj.context = ctx
                self.switched[sslobj] = host

    def host_of_connection(self, sslobj: ssl.SSLObject | None) -> str | None:
        """The host whose own certificate the handshake of `sslobj` got, by its SNI name;
        None without SNI or for a name served the default certificate."""
        return self.switched.get(sslobj) if sslobj is not None else None

    def _load(self, pem: bytes, key: bytes = b"", ctx: ssl.SSLContext | None = None) -> ssl.SSLContext:
        """`ctx` (a new server context) with the chain and key in `pem` (+ `key`) loaded.
        ssl.SSLError when they are unusable."""
        ctx = ctx or _context()
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=self.workdir, prefix=".cert-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem + b"\n" + key)
            ctx.load_cert_chain(path, password=_no_passphrase)
            return ctx
        finally:
            os.unlink(path)

    def use(self, pems: Mapping[str, bytes], default: bytes) -> dict[str, str]:
        """Hold exactly `pems` (host -> chain and key) and `default`, loading only what
        changed; the ones that could not be loaded, by host ("" the default), which keep
        what they had."""
        problems: dict[str, str] = {}
        if default and default != self.default_pem:
            try:
                self._load(default, ctx=self.server)
                self.default_pem = default
            except (ssl.SSLError, OSError) as exc:
                problems[""] = f"the default certificate: {exc}"
        for host in [h for h in self.contexts if h not in pems]:
            del self.contexts[host]
            self.pems.pop(host, None)
        for host, pem in pems.items():
            if self.pems.get(host) == pem:
                continue
            try:
                self.contexts[host] = self._load(pem)
                self.pems[host] = pem
            except (ssl.SSLError, OSError) as exc:
                problems[host] = f"host {host}: {exc}"
        return problems


class IngressCerts(SniContexts):
    def __init__(
        self,
        store: Store,
        keys: Keys,
        sealer: Sealer | None,
        ca: Callable[[], Awaitable[ClusterCA]] | None,
        workdir: Path,
        address: str,
    ) -> None:
        super().__init__(workdir)
        self.store, self.keys, self.sealer, self.ca = store, keys, sealer, ca
        self.address = address
        self.loaded: dict[str, str] = {}  # host -> what its context holds: "secret <name> <revision>" | "ca"
        self.renew: dict[str, datetime] = {}  # host -> when its CA-issued certificate is renewed
        self.problems: dict[str, str] = {}  # host -> why its certificate could not be loaded
        self.has_default = False
        self.default_renew: datetime | None = None  # when the default certificate is issued again

    async def _issue(self, host: str, now: datetime) -> ssl.SSLContext:
        if self.ca is None:
            raise CertError(
                "this node cannot sign certificates (no cluster CA key): give the host a tls.secret"
            )
        key, chain, renew = issue_site(await self.ca(), host, now)
        self.renew[host] = renew
        ctx = self._load(chain, key)
        self.pems[host] = chain + b"\n" + key
        return ctx

    async def refresh(self, hosts: Mapping[str, str | None], now: datetime | None = None) -> dict[str, str]:
        """Bring the contexts in line with `hosts` (host -> secret name, None: the CA's);
        the problems of this round by host."""
        now = now or datetime.now(UTC)
        problems: dict[str, str] = {}
        due = not self.has_default or (self.default_renew is not None and now >= self.default_renew)
        if due and self.ca is not None:  # renewed like the hosts' (it expired after 30 days up)
            try:
                key, chain, renew = issue_site(await self.ca(), self.address, now)
                self._load(chain, key, self.server)
                self.default_pem = chain + b"\n" + key
                self.has_default, self.default_renew = True, renew
            except (CertError, StoreError, ssl.SSLError, OSError) as exc:
                problems[""] = f"the default certificate (node address {self.address}): {exc}"
        for host in [h for h in self.contexts if h not in hosts]:
            del self.contexts[host]
            self.pems.pop(host, None)
            self.loaded.pop(host, None)
            self.renew.pop(host, None)
        for host, secret in hosts.items():
            try:
                await self._refresh_host(host, secret, now)
            except (CertError, SealError, StoreError, ssl.SSLError, OSError, ValueError) as exc:
                what = f"secret '{secret}'" if secret else "the cluster CA's certificate"
                problems[host] = f"host {host}: {what} cannot be used: {exc}"
        self.problems = problems
        return problems

    async def _refresh_host(self, host: str, secret: str | None, now: datetime) -> None:
        if secret is None:
            if self.loaded.get(host) == "ca" and now < self.renew.get(host, now):
                return
            self.contexts[host] = await self._issue(host, now)
            self.loaded[host] = "ca"
            return
        kv = await self.store.get(self.keys.object("secret", secret))
        if kv is None:
            raise CertError(
                f"it does not exist (`shoal secret create {secret} <file>` with the chain and key PEM)"
            )
        record = ObjectRecord.from_json(kv.value)
        mark = f"secret {secret} {record.revision}"
        if self.loaded.get(host) == mark:
            return
        data = record.value(self.sealer)
        try:
            self.contexts[host] = self._load(data)
            self.pems[host] = data
        except ssl.SSLError as exc:
            raise CertError(
                f"it must hold a PEM certificate chain and its private key ({exc.reason})"
            ) from None
        self.renew.pop(host, None)
        self.loaded[host] = mark
