"""Image references, registry credentials and the pull policy (issue 13, images from registries).

Why: a tag (`app:1`) may be pushed again, so two nodes pulling it minutes apart can run
different images. At deploy the API resolves the tag to a digest (`node.api.registry`)
and stores it with the service version (`ServiceSpec.image_digest`); every node then
runs `<registry>/<repository>@<digest>`, and a rollback runs its own version's digest.
This module holds the rules that need no network:

- `parse_image`: Docker's reading of a reference. The first part of the name is a
  registry host only when it has a '.' or a ':' or is `localhost`; otherwise the
  reference has no registry part (a local-only image like `shoal-demo/web:1`, or the
  engine's default registry): such an image is not resolved and not pinned.
- `credentials_for(secret, host)`: the user and password a pull secret holds for one
  registry host, and only for it. A secret is a Docker config JSON (`{"auths": {host:
  {"auth": base64(user:password)}}}` or `username`/`password`), whose entries for other
  hosts are never used, or a line `user:password`, which applies to the image's own
  registry host only.
- `parse_challenge`: a `WWW-Authenticate` header (Basic or Bearer with realm, service, scope).
- `needs_pull(policy, present)`: the pull policy (`always | missing | never`).
- `login_secret_name(host)`: the secret `shoal registry login HOST` writes, used when a
  service names no `image_pull_secret`.

Pure: imports no grpc, docker or etcd.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

PULL_POLICIES = ("always", "missing", "never")
DEFAULT_PULL = "missing"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
MANIFEST_TYPES = (  # what a HEAD of /v2/<name>/manifests/<tag> accepts: index first, as Docker does
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


class ImageRefError(ValueError):
    """A reference or a pull secret that cannot be read; the message says why."""


@dataclass(frozen=True)
class ImageRef:
    registry: str  # "host[:port]", or "" when the reference names none
    repository: str  # the path in the registry, e.g. "team/app"
    tag: str  # "" when pinned by digest only
    digest: str  # "" unless the reference has "@sha256:..."

    @property
    def name(self) -> str:
        """The reference without tag or digest, as the engine names the repository."""
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    def pinned(self, digest: str) -> str:
        """`<registry>/<repository>@<digest>`: what every node runs once resolved."""
        return f"{self.name}@{digest}"


def parse_image(image: str) -> ImageRef:
    """ "127.0.0.1:5000/team/app:1" -> ImageRef("127.0.0.1:5000", "team/app", "1", "")."""
    rest, digest = image, ""
    if "@" in image:
        rest, digest = image.split("@", 1)
        if not DIGEST_RE.fullmatch(digest):
            raise ImageRefError(f"image {image}: the digest must be sha256: and 64 hex digits")
    registry = ""
    first, slash, path = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, rest = first, path
    tag: str | None = None
    last_slash = rest.rfind("/")
    if ":" in rest[last_slash + 1 :]:
        rest, tag = rest.rsplit(":", 1)
    if not rest or not re.fullmatch(r"[a-z0-9]+(?:[._/-]+[a-z0-9]+)*", rest):
        raise ImageRefError(f"image {image}: {rest!r} is not a repository name (lowercase, digits, . _ - /)")
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise ImageRefError(f"image {image}: {tag!r} is not a tag")
    return ImageRef(registry, rest, tag or ("" if digest else "latest"), digest)


def login_secret_name(host: str) -> str:
    """The secret `shoal registry login HOST` keeps: "registry-" and the host, each
    character a secret name cannot hold as '-' ("127.0.0.1:5000" -> "registry-127.0.0.1-5000").
    It holds a Docker config JSON naming HOST, so a name two hosts share reveals nothing."""
    return "registry-" + re.sub(r"[^A-Za-z0-9_.-]", "-", host)[:54].strip("-_.")


def is_loopback(host: str) -> bool:
    """A registry on 127.0.0.0/8, [::1] or localhost: Docker talks plain HTTP to it."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1 : host.find("]")]
    return name == "localhost" or name == "::1" or name.startswith("127.")


def registry_url(host: str) -> str:
    return f"{'http' if is_loopback(host) else 'https'}://{host}"


def _host_of(key: str) -> str:
    """A Docker config `auths` key ("host", "https://host/v1/") as the bare host[:port]."""
    return urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]


def credentials_for(secret: bytes, host: str) -> tuple[str, str] | None:
    """The (user, password) that `secret` holds for `host`; None when it holds none for it.

    Raises ImageRefError when the secret is neither a Docker config JSON nor `user:password`.
    """
    try:
        text = secret.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ImageRefError("the pull secret is not UTF-8 text") from None
    if not text.startswith("{"):
        user, colon, password = text.partition(":")
        if not colon or not user or "\n" in text:
            raise ImageRefError("the pull secret must be a Docker config JSON or one line user:password")
        return user, password
    try:
        auths = json.loads(text).get("auths")
    except (ValueError, AttributeError):
        raise ImageRefError('the pull secret is not valid JSON (expected {"auths": {HOST: ...}})') from None
    if not isinstance(auths, dict):
        raise ImageRefError('the pull secret has no "auths" mapping (a Docker config JSON)')
    for key, entry in auths.items():
        if _host_of(str(key)) != host or not isinstance(entry, dict):
            continue
        if entry.get("username"):
            return str(entry["username"]), str(entry.get("password", ""))
        try:
            user, colon, password = base64.b64decode(str(entry.get("auth", ""))).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ImageRefError(f"the pull secret's auth for {host} is not base64 of user:password") from None
        if colon and user:
            return user, password
        raise ImageRefError(f"the pull secret's auth for {host} is not base64 of user:password")
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="https://a/token",service="r",scope="repository:x:pull"' ->
    ("bearer", {"realm": ..., "service": ..., "scope": ...}); ("", {}) when empty."""
    scheme, _, params = header.strip().partition(" ")
    found = {k.lower(): quoted or bare for k, quoted, bare in _CHALLENGE_PARAM.findall(params)}
    return scheme.lower(), found


def may_send_credentials(registry: str, url: str) -> bool:
    """Credentials for `registry` go to that host alone: the registry itself, or a token
    service its challenge names on the same host (any port). A token service on another
    host is asked without them (an anonymous token: public images only)."""
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry[1 : registry.find("]")]
    return (urlsplit(url).hostname or "") == host.lower()


def needs_pull(policy: str | None, present: bool) -> bool:
    """Does a node pull before starting a container? `always`: yes; `missing` (the
    default): when its engine lacks the image; `never`: no (a missing image is an error
    the caller reports)."""
    policy = policy or DEFAULT_PULL
    if policy not in PULL_POLICIES:
        raise ValueError(f"pull policy {policy!r}: one of {', '.join(PULL_POLICIES)}")
    return policy == "always" or (policy == "missing" and not present)


def resolvable(image: str, policy: str | None) -> bool:
    """Is `image` resolved to a digest at deploy? When it names a registry, is not
    already pinned, and may be pulled (`pull: never` runs what each engine holds)."""
    ref = parse_image(image)
    return bool(ref.registry) and not ref.digest and policy != "never"
