"""Resolving an image's tag to a digest at deploy, at the registry itself (issue 13).

`pin(spec)` is called by `apply` and `stack deploy` before anything is written: when the
image names a registry (`node.model.images.resolvable`), the registry is asked, over the
distribution HTTP API, `HEAD /v2/<repository>/manifests/<tag>` with the manifest types
Docker accepts (index first), and its `Docker-Content-Digest` answer becomes the spec's
`image_digest`; every node then runs `<registry>/<repository>@<digest>`. An image that
cannot be resolved (no such tag, credentials refused, registry unreachable) refuses the
write at once with the registry's reason (`FailedPrecondition`), nothing written.

Why the registry and not the local engine (`docker pull`, then `RepoDigests`): the
answer is one HEAD request (milliseconds, no layer downloaded on the API node, which may
never run the service), needs no engine on the API node, and the credentials stay in
this process (decision 50 has the measurements).

Authentication: a 401 names Basic or Bearer (`WWW-Authenticate`). Basic sends the pull
secret's user and password; Bearer asks the named token service for a pull token, with
the credentials only when that service is on the registry's own host
(`may_send_credentials`). Credentials go to no other host; no redirect is followed.
All the requests of one resolve share `TIMEOUT` (3.5 s): the CLI's call has 5 s.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, cast

import requests

from node.model.errors import FailedPrecondition, InvalidArgument, NotFound
from node.model.images import (
    DIGEST_RE,
    MANIFEST_TYPES,
    ImageRef,
    ImageRefError,
    credentials_for,
    login_secret_name,
    may_send_credentials,
    parse_challenge,
    parse_image,
    registry_url,
    resolvable,
)
from node.model.spec import ServiceSpec
from node.security.sealing import SealError

TIMEOUT = 3.5  # s for every request of one resolve together: inside the client's 5 s deadline
MAX_BODY = 4 * 1024 * 1024  # bytes of a manifest or token answer read at most
LOOKUPS = 4  # resolves at once, on threads of their own (never the loop's default executor)
Credentials = tuple[str, str] | None


class Http(Protocol):
    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response: ...


class ResolveError(Exception):
    """Why a tag could not be resolved (the registry's reason)."""


def _basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()


def resolve_digest(http: Http, ref: ImageRef, credentials: Credentials, timeout: float = TIMEOUT) -> str:
    """The digest the registry gives for `ref`'s tag; ResolveError saying why not.
    `timeout` bounds all its requests together (each gets what is left)."""
    left = _budget(timeout, f"registry {ref.registry}")
    url = f"{registry_url(ref.registry)}/v2/{ref.repository}/manifests/{ref.tag}"
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    where = f"registry {ref.registry}"

    def ask(method: str, extra: dict[str, str]) -> requests.Response:
        try:
            return http.request(
                method, url, headers={**headers, **extra}, timeout=left(), allow_redirects=False, stream=True
            )
        except requests.RequestException as exc:
            raise ResolveError(f"{where} cannot be reached: {exc}") from None

    resp = ask("HEAD", {})
    if resp.status_code == 401:
        auth = _authorization(http, ref, resp.headers.get("WWW-Authenticate", ""), credentials, left())
        resp = ask("HEAD", {"Authorization": auth})
        if resp.status_code == 401:
            refused = "refused the credentials" if credentials else "needs credentials (image_pull_secret)"
            raise ResolveError(f"{where} {refused} (HTTP 401)")
    if resp.status_code == 404:
        raise ResolveError(f"{where} has no {ref.repository}:{ref.tag} (manifest unknown, HTTP 404)")
    if resp.status_code == 403:
        raise ResolveError(f"{where} denied access to {ref.repository} (HTTP 403)")
    if resp.status_code != 200:
        raise ResolveError(f"{where} answered HTTP {resp.status_code} for {ref.repository}:{ref.tag}")
    digest = resp.headers.get("Docker-Content-Digest", "")
    if not digest:  # a registry that does not say: the digest of the manifest's own bytes
        auth_header = resp.request.headers.get("Authorization") if resp.request is not None else None
        got = ask("GET", {"Authorization": str(auth_header)} if auth_header else {})
        if got.status_code != 200:
            raise ResolveError(f"{where} answered HTTP {got.status_code} to the manifest's GET")
        digest = "sha256:" + hashlib.sha256(_body(got, where, left)).hexdigest()
    if not DIGEST_RE.fullmatch(digest):
        raise ResolveError(f"{where} gave a digest shoal does not read: {digest[:80]!r}")
    return digest


def _budget(timeout: float, who: str) -> Callable[[], float]:
    """Seconds left of `timeout` from now, each time it is called; ResolveError once none."""
    deadline = time.monotonic() + timeout

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ResolveError(f"{who} did not answer within {timeout:g}s")
        return remaining

    return left


def _body(resp: requests.Response, where: str, left: Callable[[], float]) -> bytes:
    """The answer's body, at most MAX_BODY bytes, read before the deadline (`left` raises
    past it): a registry that sends without end is cut, not read into memory."""
    out = bytearray()
    try:
        for chunk in resp.iter_content(65536):
            out += chunk
            if len(out) > MAX_BODY:
                raise ResolveError(f"{where} sent more than {MAX_BODY // 2**20} MiB for one manifest")
            left()
    except requests.RequestException as exc:
        raise ResolveError(f"{where} cut its answer: {exc}") from None
    finally:
        resp.close()
    return bytes(out)


def _authorization(
    http: Http, ref: ImageRef, challenge: str, credentials: Credentials, timeout: float
) -> str:
    scheme, params = parse_challenge(challenge)
    where = f"registry {ref.registry}"
    if scheme == "basic":
        if credentials is None:
            raise ResolveError(f"{where} needs credentials (image_pull_secret) (HTTP 401)")
        return _basic(credentials)
    if scheme != "bearer" or not params.get("realm"):
        raise ResolveError(f"{where} asks for an authentication shoal does not speak: {challenge[:80]!r}")
    realm = params["realm"]
    query = {"service": params.get("service", ""), "scope": f"repository:{ref.repository}:pull"}
    extra = (
        {"Authorization": _basic(credentials)}
        if credentials and may_send_credentials(ref.registry, realm)
        else {}
    )
    left = _budget(timeout, f"{where}'s token service")
    try:
        resp = http.request(
            "GET", realm, params=query, headers=extra, timeout=timeout, allow_redirects=False, stream=True
        )
    except requests.RequestException as exc:
        raise ResolveError(f"{where}'s token service cannot be reached: {exc}") from None
    if resp.status_code != 200:
        resp.close()
        raise ResolveError(f"{where}'s token service answered HTTP {resp.status_code}")
    try:
        body = json.loads(_body(resp, f"{where}'s token service", left))
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
    except ValueError:
        token = None
    if not isinstance(token, str) or not token:
        raise ResolveError(f"{where}'s token service gave no token")
    return f"Bearer {token}"


def _session() -> Http:
    return cast(Http, requests.Session())


def secret_opener(objects: Any) -> Callable[[str], Any]:
    """`open_secret` over a writer's `node.api.objects.Objects`: a secret's plain bytes."""

    async def open_secret(name: str) -> bytes:
        record = await objects.get("secret", name)
        try:
            return bytes(record.value(objects.sealer))
        except (SealError, ValueError) as exc:
            raise FailedPrecondition(f"image_pull_secret: secret '{name}' cannot be opened: {exc}") from None

    return open_secret


class Resolver:
    """What `apply` and `stack deploy` call. `secret` opens a pull secret by name (the
    writer's objects); `http` is a requests session (tests give a fake one)."""

    def __init__(self, http_factory: Callable[[], Http] | None = None, timeout: float = TIMEOUT) -> None:
        self.http_factory = http_factory or _session
        self.timeout = timeout
        # threads of its own: a registry that trickles its headers holds a thread past any
        # timeout requests can set (they bound each read, not the whole), and must never hold
        # those of the loop's default executor, which the leader's passes use
        self._pool = ThreadPoolExecutor(LOOKUPS, thread_name_prefix="shoal-registry")
        self._busy = 0

    async def pin(self, spec: ServiceSpec, open_secret: Callable[[str], Any]) -> ServiceSpec:
        """`spec` with `image_digest` set to the digest of its tag now (None when the image
        is not resolved: no registry part, already pinned, or `pull: never`)."""
        try:
            ref = parse_image(spec.image)
            wanted = resolvable(spec.image, spec.pull)
        except ImageRefError as exc:
            raise InvalidArgument(f"image: {exc}") from None
        if not wanted:
            return spec.model_copy(update={"image_digest": None}) if spec.image_digest else spec
        credentials = await self._credentials(spec, ref, open_secret)
        if self._busy >= LOOKUPS:
            raise FailedPrecondition(
                f"service '{spec.name}' not written: {LOOKUPS} image lookups are waiting on slow "
                f"registries; try again (or give the image by digest, or pull: never)"
            )
        self._busy += 1
        future = asyncio.get_running_loop().run_in_executor(self._pool, self._resolve, ref, credentials)
        future.add_done_callback(self._done)
        try:
            digest = await asyncio.wait_for(asyncio.shield(future), self.timeout + 0.5)
        except TimeoutError:
            raise FailedPrecondition(
                f"service '{spec.name}' not written: image {spec.image} cannot be resolved: "
                f"registry {ref.registry} did not answer within {self.timeout:g}s"
            ) from None
        except ResolveError as exc:
            raise FailedPrecondition(
                f"service '{spec.name}' not written: image {spec.image} cannot be resolved: {exc}"
            ) from None
        return spec.model_copy(update={"image_digest": digest})

    def _done(self, future: asyncio.Future[str]) -> None:
        self._busy -= 1
        if not future.cancelled():
            # a lookup answered at its deadline has no reader left (shield drops its
            # callback when the wait gives up): its failure is read here, or asyncio logs
            # "Future exception was never retrieved" when the future is collected
            future.exception()

    def _resolve(self, ref: ImageRef, credentials: Credentials) -> str:
        http = self.http_factory()
        try:
            return resolve_digest(http, ref, credentials, self.timeout)
        finally:
            close = getattr(http, "close", None)
            if close is not None:
                close()

    async def _credentials(
        self, spec: ServiceSpec, ref: ImageRef, open_secret: Callable[[str], Any]
    ) -> Credentials:
        """From `image_pull_secret`, else from `shoal registry login`'s secret for the
        registry when there is one, else none."""
        if spec.image_pull_secret:
            name, value = spec.image_pull_secret, await self._secret(spec, open_secret)
        else:
            name = login_secret_name(ref.registry)
            try:
                value = bytes(await open_secret(name))
            except NotFound:
                return None
        try:
            return credentials_for(value, ref.registry)
        except ImageRefError as exc:
            what = "image_pull_secret" if spec.image_pull_secret else "the registry login"
            raise InvalidArgument(f"{what} (secret '{name}'): {exc}") from None

    @staticmethod
    async def _secret(spec: ServiceSpec, open_secret: Callable[[str], Any]) -> bytes:
        name = str(spec.image_pull_secret)
        try:
            return bytes(await open_secret(name))
        except NotFound:
            raise FailedPrecondition(
                f"service '{spec.name}' not written: image_pull_secret: secret '{name}' does not exist; "
                f"create it first (`shoal secret create {name} -f FILE`)"
            ) from None
