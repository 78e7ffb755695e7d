"""Signed gossip claims: a node's ALIVE and LEFT about itself, signed with its node key.

mTLS tells who *sends* a gossip message (`node.api.gossip_transport.check_sender`),
not who made the facts it carries. SUSPECT and DEAD about others are any member's to
send (SWIM), but a refutation (ALIVE at a higher incarnation), an address and a
goodbye (LEFT) are claims only their subject may make: unchecked, one member with a
valid certificate could keep a dead node alive for ever or move its address. So each
node signs its own ALIVE and LEFT claims, and every member checks those about others
before it merges them (`node.gossip.state`, through an injected `verify`).

The proof travels with the claim (`MemberUpdate.proof`) and is self-contained:

    proof   = len(signature) (1 byte) | signature | the signer's node certificate (DER)
    signed  = "shoal gossip claim v1" NUL cluster NUL state NUL node NUL incarnation NUL address

ECDSA with SHA-256, by the key of the node certificate (`node.security.ca`). Carrying
the certificate (a proof is about 590 bytes) costs bytes but no look-up: a
member checks a claim heard third-hand about a node it never talked to, with the
cluster CA alone (chain, validity now, a node identity whose name is the claim's node).
Certificates checked are cached by their digest and claims by (node, incarnation,
state, address, proof), so a claim relayed many times is checked once (measured on a
shared 2-CPU test machine: 0.9 ms a signature, 1.2 ms with the certificate's chain).

A claim without a proof (an older node, or one relayed through an older node, which
drops the field) is accepted only about a node that is registered and was never seen
signing (`check`): a rolling upgrade keeps working, and once a node is known to sign,
its unsigned claims are forgeries. Refused claims are counted in `dropped` by reason
and logged once per (node, incarnation). Until `use` gives it the CA (no TLS: tests)
nothing is checked and nothing is signed.

A node renewing its certificate signs with the new key from then on; the daemon then
re-announces its ALIVE (`Memberlist.reannounce`), so its current claim carries the new
certificate long before the old one expires.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node.security import ca

log = logging.getLogger(__name__)

MAX_PROOF = 4096  # bytes: a signature and a node certificate fit in a quarter of it
CACHE_LIMIT = 10_000  # entries in each cache before it is cleared
_DOMAIN = b"shoal gossip claim v1"


def signed_bytes(cluster: str, node: str, incarnation: int, address: str, state: str) -> bytes:
    """What a proof signs. Node and cluster names cannot hold a NUL; the address comes last."""
    fields = (cluster, state, node, str(incarnation), address)
    return b"\0".join([_DOMAIN, *(f.encode() for f in fields)])


def split_proof(proof: bytes) -> tuple[bytes, bytes]:
    """(signature, certificate DER); ValueError when it is not in the proof format."""
    if not proof or len(proof) > MAX_PROOF:
        raise ValueError(f"a proof has 1 to {MAX_PROOF} bytes, not {len(proof)}")
    length = proof[0]
    if not 0 < length < len(proof) - 1:
        raise ValueError("the proof's signature length does not fit it")
    return proof[1 : 1 + length], proof[1 + length :]


class GossipProofs:
    """This node's signer and every member's checker of gossip claims (module doc)."""

    def __init__(self, registered: Callable[[str], bool]) -> None:
        self.registered = registered  # is the node in the etcd registry (on a live lease)?
        self.dropped: Counter[str] = Counter()  # refused claims, by reason
        self._ca: x509.Certificate | None = None
        self._cluster = ""
        self._name = ""
        self._key: ca.PrivateKey | None = None
        self._cert_der = b""
        self._signed: tuple[tuple[int, str, str], bytes] | None = None  # our last proof
        self._certs: dict[bytes, tuple[str, ec.EllipticCurvePublicKey, x509.Certificate]] = {}
        self._claims: dict[str, tuple[int, str, str, bytes]] = {}  # last claim checked, by node
        self._signers: set[str] = set()  # nodes seen signing: their unsigned claims are refused
        self._logged: set[tuple[str, int]] = set()

    def use(self, ca_pem: bytes, key_pem: bytes, cert_pem: bytes) -> None:
        """Sign with this key and certificate and check with this CA (start, renewal)."""
        ca_cert, cert, key = ca.load_cert(ca_pem), ca.load_cert(cert_pem), ca.load_private_key(key_pem)
        identity = ca.verify(ca_cert, cert, ca.identity_of(cert).cluster)
        if ca.key_id(key) != ca.key_id(cert.public_key()):  # type: ignore[arg-type]
            raise ca.CertError("the private key does not belong to the certificate")
        if self._ca is None or ca.fingerprint(self._ca) != ca.fingerprint(ca_cert):
            self._certs.clear()
            self._claims.clear()
        self._ca, self._cluster, self._name = ca_cert, identity.cluster, identity.name
        self._key, self._cert_der = key, cert.public_bytes(serialization.Encoding.DER)
        self._signed = None

    # -- signing -----------------------------------------------------------------------

    def sign(self, node: str, incarnation: int, address: str, state: str) -> bytes:
        """The proof of this node's own claim; b"" before `use`, or about another node."""
        if self._key is None or node != self._name:
            return b""
        claim = (incarnation, state, address)
        if self._signed is not None and self._signed[0] == claim:
            return self._signed[1]
        data = signed_bytes(self._cluster, node, incarnation, address, state)
        signature = self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        proof = bytes([len(signature)]) + signature + self._cert_der
        self._signed = (claim, proof)
        return proof

    # -- checking ----------------------------------------------------------------------

    def check(self, node: str, incarnation: int, address: str, state: str, proof: bytes) -> bool:
        """Whether this ALIVE or LEFT claim about `node` may be merged (module doc)."""
        if self._ca is None:
            return True  # no TLS: nothing to check with (tests, simulations)
        if not proof:
            if node in self._signers:
                return self._drop(node, incarnation, "unsigned, from a node that signs its claims")
            if not self.registered(node):
                return self._drop(node, incarnation, "unsigned, about a node not registered")
            return True  # an older node (mixed versions): see the module doc
        claim = (incarnation, state, address, proof)
        if self._claims.get(node) == claim:
            return True
        try:
            signature, der = split_proof(proof)
            public = self._public_key(node, der)
            public.verify(
                signature,
                signed_bytes(self._cluster, node, incarnation, address, state),
                ec.ECDSA(hashes.SHA256()),
            )
        except ca.CertError as exc:
            return self._drop(node, incarnation, f"certificate: {exc}")
        except (ValueError, InvalidSignature) as exc:
            return self._drop(node, incarnation, f"bad signature or proof: {exc or 'invalid signature'}")
        if len(self._claims) >= CACHE_LIMIT:
            self._claims.clear()
        self._claims[node] = claim
        self._signers.add(node)
        return True

    def _public_key(self, node: str, der: bytes) -> ec.EllipticCurvePublicKey:
        """The key of a node certificate of this cluster's CA naming `node`, valid now."""
        assert self._ca is not None
        digest = hashlib.sha256(der).digest()
        found = self._certs.get(digest)
        if found is None:
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError:
                raise ca.CertError("not a DER certificate") from None
            identity = ca.verify(self._ca, cert, self._cluster)
            public = cert.public_key()
            if identity.kind is not ca.Kind.NODE or not isinstance(public, ec.EllipticCurvePublicKey):
                raise ca.CertError(f"{identity} is not a node certificate")
            if len(self._certs) >= CACHE_LIMIT:
                self._certs.clear()
            found = self._certs[digest] = (identity.name, public, cert)
        name, public, cert = found
        if name != node:
            raise ca.CertError(f"the certificate is node {name!r}'s, not {node[:80]!r}'s")
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ca.CertError("the certificate is not valid now")
        return public

    def _drop(self, node: str, incarnation: int, reason: str) -> bool:
        self.dropped[reason.split(":")[0]] += 1
        if (node, incarnation) not in self._logged:
            if len(self._logged) >= CACHE_LIMIT:
                self._logged.clear()
            self._logged.add((node, incarnation))
            log.warning(
                "gossip: a claim about %r at incarnation %d dropped: %s", node[:80], incarnation, reason
            )
        return False
