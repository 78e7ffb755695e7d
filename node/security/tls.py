"""The TLS material of a gRPC server and of a channel: `ServerTls` and `ClientTls`.

`ServerTls` serves the node's certificate and *requires* a client certificate of the
cluster CA (no certificate, another CA's, an expired one: the handshake fails, no
handler runs); it re-reads the node's certificate on each new connection, so
`ServerTls.update` renews it without a restart. `ClientTls` gives a channel the CA to
verify the server with (node certificates carry IP SANs, so dialling `127.0.0.2:7070`
needs no `grpc.ssl_target_name_override`), its own certificate, and optionally the
bearer token sent with every call. gRPC cannot change a channel's certificate, so
after a renewal callers open new channels.

These are data and the credentials made from them; the channels and servers are made
by `node.wire.rpc` (which re-exports both names). grpc and cryptography are imported when a
credential is made or checked, not with this module, so the CLI can build a `ClientTls`
from a context without loading either.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc


class ServerTls:
    """A server's side of mutual TLS: its key and certificate chain, and the CA that every
    client certificate must chain to (required). `update` swaps the key and certificate
    (a renewal); connections opened afterwards get the new ones, open ones are kept."""

    def __init__(self, ca_pem: bytes, key_pem: bytes, cert_pem: bytes) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._config = (ca_pem, key_pem, cert_pem)
        self.update(key_pem, cert_pem)

    def update(self, key_pem: bytes, cert_pem: bytes, ca_pem: bytes | None = None) -> None:
        """Serve this key and certificate (and trust this CA) from the next connection on.

        Raises `ca.CertError` when the key does not belong to the certificate, rather
        than failing every later handshake."""
        from node.security import ca  # here: clients (the CLI) need no cryptography import

        cert = ca.load_cert(cert_pem)
        if ca.key_id(ca.load_private_key(key_pem)) != ca.key_id(cert.public_key()):  # type: ignore[arg-type]
            raise ca.CertError("the private key does not belong to the certificate")
        with self._lock:
            self._config = (ca_pem or self._config[0], key_pem, cert_pem)
            self._generation += 1

    def _current(self) -> tuple[int, grpc.ServerCertificateConfiguration]:
        import grpc

        with self._lock:
            root, key, chain = self._config
            return self._generation, grpc.ssl_server_certificate_configuration([(key, chain)], root)

    def credentials(self) -> grpc.ServerCredentials:
        import grpc

        served, initial = self._current()

        def fetch() -> Any:  # per handshake, from a gRPC thread; None: unchanged
            nonlocal served
            generation, config = self._current()
            if generation == served:
                return None  # unchanged: gRPC keeps what it has
            served = generation
            return config

        return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=True)


@dataclass(frozen=True, repr=False)
class ClientTls:
    """A channel's side of mutual TLS: the CA to verify the server with, this side's key and
    certificate, and the bearer token to send with every call (client API), if any."""

    ca_pem: bytes
    key_pem: bytes
    cert_pem: bytes
    token: str | None = None

    def __repr__(self) -> str:  # never show the key or the token
        return f"ClientTls(token={'<set>' if self.token else None})"

    def credentials(self) -> grpc.ChannelCredentials:
        import grpc

        tls = grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)
        if not self.token:
            return tls
        return grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(self.token))
