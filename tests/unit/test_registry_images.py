"""Images from registries (issue 13, item 7): references, pull secrets scoped to their
registry host, the registry's answers (a fake HTTP client recording every request), the
pull policy, and the write path (apply pins the digest, refuses at once, writes nothing)."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from node.agent.containers import container_spec, run_image
from node.agent.pulls import Pulls
from node.agent.secretfiles import SecretFiles
from node.api.objects import check_object_name
from node.api.registry import ResolveError, Resolver, resolve_digest
from node.api.services import ServiceWriter
from node.api.stacks import StackWriter
from node.cli.output import image_detail
from node.compose.translate import ComposeError, translate
from node.dev.fakeruntime import FakeRuntime
from node.model.domain import ServiceRecord
from node.model.errors import FailedPrecondition, InvalidArgument
from node.model.images import (
    MANIFEST_TYPES,
    ImageRef,
    ImageRefError,
    credentials_for,
    login_secret_name,
    may_send_credentials,
    needs_pull,
    parse_challenge,
    parse_image,
    resolvable,
)
from node.model.keys import Keys
from node.model.spec import parse_spec
from node.runtime.base import ImageError
from node.security.sealing import Sealer
from node.store.memory import MemoryStore
from tests.factories import make_task
from tests.helpers import wait_until

KEYS = Keys()
REG = "127.0.0.1:5000"
DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


# -- references -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("127.0.0.1:5000/team/app:1", ImageRef("127.0.0.1:5000", "team/app", "1", "")),
        ("localhost/app", ImageRef("localhost", "app", "latest", "")),
        ("reg.internal/app:2.0", ImageRef("reg.internal", "app", "2.0", "")),
        ("shoal-demo/web:1", ImageRef("", "shoal-demo/web", "1", "")),
        ("busybox", ImageRef("", "busybox", "latest", "")),
        (f"{REG}/app@{DIGEST}", ImageRef(REG, "app", "", DIGEST)),
        (f"{REG}/app:1@{DIGEST}", ImageRef(REG, "app", "1", DIGEST)),
    ],
)
def test_references_are_read_as_docker_reads_them(image: str, expected: ImageRef) -> None:
    assert parse_image(image) == expected


@pytest.mark.parametrize("bad", ["Foo/Bar:1", f"{REG}/app@sha256:12", f"{REG}/app:b@d:tag", "app:"])
def test_unreadable_references_are_refused(bad: str) -> None:
    with pytest.raises(ImageRefError):
        parse_image(bad)


def test_only_images_naming_a_registry_are_resolved_and_pinned() -> None:
    assert resolvable(f"{REG}/app:1", None) and resolvable(f"{REG}/app:1", "always")
    assert not resolvable("shoal-demo/web:1", None)  # local-only: nothing to ask
    assert not resolvable(f"{REG}/app@{DIGEST}", None)  # pinned by hand
    assert not resolvable(f"{REG}/app:1", "never")  # each engine runs what it holds
    assert parse_image(f"{REG}/team/app:1").pinned(DIGEST) == f"{REG}/team/app@{DIGEST}"


def test_a_node_runs_the_pinned_digest_or_the_image_as_written() -> None:
    spec = parse_spec(f"name: a\nimage: {REG}/app:1\n")
    assert run_image(spec) == f"{REG}/app:1"
    pinned = spec.model_copy(update={"image_digest": DIGEST})
    assert run_image(pinned) == f"{REG}/app@{DIGEST}"
    assert container_spec(make_task("a", 1, "n1"), pinned, "c1", "127.0.0.1").image == f"{REG}/app@{DIGEST}"


# -- pull secrets -----------------------------------------------------------------------


def _config(auths: dict[str, Any]) -> bytes:
    return json.dumps({"auths": auths}).encode()


def test_a_docker_config_gives_the_credentials_of_its_host_and_of_no_other() -> None:
    secret = _config(
        {
            "https://other.example:443/v1/": {"auth": base64.b64encode(b"eve:stolen").decode()},
            REG: {"auth": base64.b64encode(b"alice:pw:with:colons").decode()},
            "reg.internal": {"username": "bob", "password": "b0b"},
        }
    )
    assert credentials_for(secret, REG) == ("alice", "pw:with:colons")
    assert credentials_for(secret, "reg.internal") == ("bob", "b0b")
    assert credentials_for(secret, "127.0.0.1:5001") is None  # another port is another registry
    assert credentials_for(secret, "unknown.host") is None


def test_a_user_password_line_is_for_the_image_registry() -> None:
    assert credentials_for(b"alice:secret\n", REG) == ("alice", "secret")


@pytest.mark.parametrize(
    "bad", [b"just-a-password", b'{"auths": 3}', b"{not json", _config({REG: {"auth": "!!"}}), b"\xff"]
)
def test_unreadable_pull_secrets_are_refused(bad: bytes) -> None:
    with pytest.raises(ImageRefError):
        credentials_for(bad, REG)


def test_challenges_are_parsed() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.test/token",service="reg",scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params["realm"] == "https://auth.test/token" and params["service"] == "reg"
    assert params["scope"] == "repository:a/b:pull,push"
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    assert parse_challenge("") == ("", {})


def test_credentials_go_to_the_registry_host_only() -> None:
    assert may_send_credentials(REG, f"http://{REG}/v2/app/manifests/1")
    assert may_send_credentials(REG, "https://127.0.0.1:9443/token")  # the same host, its token port
    assert not may_send_credentials(REG, "https://127.0.0.2/token")
    assert not may_send_credentials("reg.internal", "https://auth.elsewhere/token")


# -- the registry's answers -------------------------------------------------------------


def _response(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r.headers.update(headers or {})
    r._content = body
    r._content_consumed = True  # read already: iter_content gives it back in slices
    return r


@dataclass
class FakeHttp:
    """Answers in turn; records (method, url, headers) of every request."""

    answers: list[requests.Response]
    sent: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        assert kwargs["allow_redirects"] is False and kwargs["timeout"] > 0
        self.sent.append((method, url, dict(kwargs.get("headers") or {})))
        return self.answers.pop(0)


REF = ImageRef(REG, "team/app", "1", "")
MANIFEST = f"http://{REG}/v2/team/app/manifests/1"


def test_a_head_with_the_manifest_types_gives_the_digest() -> None:
    http = FakeHttp([_response(200, {"Docker-Content-Digest": DIGEST})])
    assert resolve_digest(http, REF, None) == DIGEST
    [(method, url, headers)] = http.sent
    assert (method, url) == ("HEAD", MANIFEST)
    assert headers["Accept"].split(", ") == list(MANIFEST_TYPES) and "Authorization" not in headers


def test_without_the_digest_header_the_manifest_bytes_are_hashed() -> None:
    body = b'{"schemaVersion": 2}'
    http = FakeHttp([_response(200), _response(200, body=body)])
    assert resolve_digest(http, REF, None) == "sha256:" + hashlib.sha256(body).hexdigest()
    assert [m for m, _, _ in http.sent] == ["HEAD", "GET"]


def test_basic_auth_is_sent_after_the_challenge() -> None:
    http = FakeHttp(
        [
            _response(401, {"WWW-Authenticate": 'Basic realm="Registry Realm"'}),
            _response(200, {"Docker-Content-Digest": DIGEST}),
        ]
    )
    assert resolve_digest(http, REF, ("alice", "pw")) == DIGEST
    assert http.sent[1][2]["Authorization"] == "Basic " + base64.b64encode(b"alice:pw").decode()


@pytest.mark.parametrize(
    ("realm", "sends"), [(f"http://{REG}/token", True), ("https://auth.test/token", False)]
)
def test_a_bearer_token_is_asked_with_credentials_only_on_the_registry_host(realm: str, sends: bool) -> None:
    http = FakeHttp(
        [
            _response(401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'}),
            _response(200, body=b'{"token": "t0k"}'),
            _response(200, {"Docker-Content-Digest": DIGEST}),
        ]
    )
    assert resolve_digest(http, REF, ("alice", "pw")) == DIGEST
    token_request, retried = http.sent[1], http.sent[2]
    assert token_request[1] == realm and ("Authorization" in token_request[2]) is sends
    assert retried[2]["Authorization"] == "Bearer t0k" and retried[1] == MANIFEST


@pytest.mark.parametrize(
    ("answers", "credentials", "reason"),
    [
        ([_response(404)], None, "has no team/app:1 (manifest unknown, HTTP 404)"),
        ([_response(401, {"WWW-Authenticate": 'Basic realm="r"'})], None, "needs credentials"),
        (
            [_response(401, {"WWW-Authenticate": 'Basic realm="r"'}), _response(401)],
            ("alice", "wrong"),
            "refused the credentials (HTTP 401)",
        ),
        ([_response(500)], None, "answered HTTP 500"),
        ([_response(200, {"Docker-Content-Digest": "md5:x"})], None, "digest shoal does not read"),
        ([_response(401, {"WWW-Authenticate": "Negotiate"})], None, "does not speak"),
    ],
)
def test_failures_say_the_registrys_reason(
    answers: list[requests.Response], credentials: tuple[str, str] | None, reason: str
) -> None:
    with pytest.raises(ResolveError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        resolve_digest(FakeHttp(answers), REF, credentials)


def test_an_unreachable_registry_is_a_clear_failure() -> None:
    class Down:
        def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
            raise requests.ConnectionError("connection refused")

    with pytest.raises(ResolveError, match=f"registry {REG} cannot be reached: connection refused"):
        resolve_digest(Down(), REF, None)


# -- the pull policy --------------------------------------------------------------------


def test_the_pull_policy() -> None:
    assert needs_pull("always", True) and needs_pull("always", False)
    assert needs_pull(None, False) and not needs_pull(None, True) and not needs_pull("missing", True)
    assert not needs_pull("never", False) and not needs_pull("never", True)
    with pytest.raises(ValueError, match="one of always, missing, never"):
        needs_pull("sometimes", True)


async def test_pulls_follow_the_policy() -> None:
    runtime, clock = FakeRuntime(), [0.0]
    pulls = Pulls(runtime, lambda: None, clock=lambda: clock[0], fresh=30.0)

    async def etcd_away() -> tuple[str, str]:
        raise AssertionError("credentials read for a start that pulls nothing")

    assert await pulls.ready("x:1", "missing", etcd_away)  # present: no pull, no secret read
    assert not [c for c in runtime.calls if c[0] == "pull"]
    assert await pulls.ready("x:1", "never")
    runtime.missing_images.add("y:1")
    with pytest.raises(ImageError, match="pull: never"):
        await pulls.ready("y:1", "never")
    assert not [c for c in runtime.calls if c[0] == "pull"]  # never pulls

    async def auth() -> tuple[str, str]:
        return ("alice", "pw")

    assert not await pulls.ready("x:1", "always", auth)  # present, pulled all the same
    runtime.release_pull("x:1")
    await pulls._pulls["x:1"].task  # type: ignore[misc]
    assert runtime.pull_auth["x:1"] == ("alice", "pw")
    assert await pulls.ready("x:1", "always")  # just pulled: shared by the replicas starting now
    clock[0] = 31.0
    assert not await pulls.ready("x:1", "always")  # a later start pulls again
    assert pulls.pulling() == ["x:1"]
    runtime.release_pull("x:1")
    await pulls._pulls["x:1"].task  # type: ignore[misc]
    assert [c for c in runtime.calls if c[0] == "pull"] == [("pull", "x:1")] * 2


# -- the write path ---------------------------------------------------------------------


class FixedHttp:
    """One registry: every manifest HEAD answered by `answer`; requests recorded."""

    def __init__(self, answer: requests.Response) -> None:
        self.answer = answer
        self.sent: list[str] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.sent.append(url)
        return self.answer


def writer(store: MemoryStore, http: FixedHttp) -> ServiceWriter:
    w = ServiceWriter(store, KEYS, "n1")
    w.objects.sealer = Sealer(lambda: b"the-ca-passphrase-of-this-cluster")
    w.resolver = Resolver(lambda: http)
    return w


async def test_apply_stores_the_digest_and_an_unmoved_tag_changes_nothing() -> None:
    store, http = MemoryStore(), FixedHttp(_response(200, {"Docker-Content-Digest": DIGEST}))
    w = writer(store, http)
    record, changed = await w.apply(f"name: app\nimage: {REG}/app:1\n", "app.yaml")
    assert changed and record.spec.image_digest == DIGEST and record.spec.image == f"{REG}/app:1"
    again, changed = await w.apply(f"name: app\nimage: {REG}/app:1\n", "app.yaml")
    assert not changed and again.version == 1
    http.answer = _response(200, {"Docker-Content-Digest": OTHER})  # the tag pushed again
    moved, changed = await w.apply(f"name: app\nimage: {REG}/app:1\n", "app.yaml")
    assert changed and moved.version == 2 and moved.spec.image_digest == OTHER
    back = await w.rollback("app")
    assert back.spec.image_digest == DIGEST  # a rollback runs its own version's digest
    assert len(http.sent) == 3  # the rollback asked no registry


async def test_local_images_are_not_pinned_and_a_user_digest_is_not_kept() -> None:
    store, http = MemoryStore(), FixedHttp(_response(500))
    w = writer(store, http)
    record, _ = await w.apply(f"name: web\nimage: shoal-demo/web:1\nimage_digest: {DIGEST}\n", "")
    assert record.spec.image_digest is None and not http.sent


async def test_a_tag_that_cannot_be_resolved_refuses_the_apply_and_writes_nothing() -> None:
    store, http = MemoryStore(), FixedHttp(_response(404))
    w = writer(store, http)
    with pytest.raises(FailedPrecondition, match=r"cannot be resolved: registry .* has no app:9"):
        await w.apply(f"name: app\nimage: {REG}/app:9\n", "")
    kvs, _ = await store.range(KEYS.prefix)
    assert kvs == []


async def test_a_pull_secret_is_checked_before_the_registry_is_asked() -> None:
    store, http = MemoryStore(), FixedHttp(_response(200, {"Docker-Content-Digest": DIGEST}))
    w = writer(store, http)
    spec = f"name: app\nimage: {REG}/app:1\nimage_pull_secret: regcred\n"
    with pytest.raises(FailedPrecondition, match="secret 'regcred' does not exist; create it first"):
        await w.apply(spec, "")
    await w.objects.put("secret", "regcred", b"no-colon-here", False, w)
    with pytest.raises(InvalidArgument, match=r"image_pull_secret \(secret 'regcred'\)"):
        await w.apply(spec, "")
    assert not http.sent
    await w.objects.put("secret", "regcred", b"alice:pw", True, w)
    record, _ = await w.apply(spec, "")
    assert record.spec.image_digest == DIGEST
    with pytest.raises(FailedPrecondition, match="used by service"):
        await w.objects.remove("secret", "regcred")  # in use as the pull secret


# -- Compose ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "pull"),
    [("always", "always"), ("if_not_present", "missing"), ("missing", "missing"), ("never", "never")],
)
def test_compose_pull_policy_maps_onto_pull(value: str, pull: str) -> None:
    result = translate(
        f"services:\n  app:\n    image: a\n    pull_policy: {value}\n", "c.yaml", "s", {}, _no_file
    )
    assert result.document["services"]["app"] == {"image": "a", "pull": pull} and not result.warnings


def test_compose_pull_policy_shoal_cannot_honour_is_refused_with_its_line() -> None:
    with pytest.raises(
        ComposeError, match=r"c.yaml:4:\d+: .*services.app.pull_policy: must be one of always"
    ):
        translate("services:\n  app:\n    image: a\n    pull_policy: daily\n", "c.yaml", "s", {}, _no_file)


def _no_file(path: str) -> str:
    raise FileNotFoundError(2, "No such file or directory")


def test_inspect_says_what_runs_and_whether_it_is_pinned() -> None:
    pinned = image_detail({"image": f"{REG}/app:1", "image_digest": DIGEST})
    assert pinned == {"runs": f"{REG}/app@{DIGEST}", "pinned": "yes: the tag's digest, resolved at deploy"}
    local = image_detail({"image": "shoal-demo/web:1"})
    assert local["runs"] == "shoal-demo/web:1"
    assert local["pinned"].startswith("no: the reference names no registry")
    assert image_detail({"image": f"{REG}/app:1", "pull": "never"})["pinned"].startswith("no: pull: never")
    assert image_detail({"image": f"{REG}/app@{DIGEST}"})["pinned"] == "by the reference's own digest"


async def test_stack_deploy_pins_every_service_or_writes_nothing() -> None:
    store, http = MemoryStore(), FixedHttp(_response(200, {"Docker-Content-Digest": DIGEST}))
    stacks = StackWriter(writer(store, http))
    text = f"name: shop\nservices:\n  web:\n    image: {REG}/web:1\n  cache:\n    image: shoal-demo/base:1\n"
    _, changes = await stacks.deploy(text, "shop.yaml")
    assert {c.action for c in changes} == {"created"}
    kvs, _ = await store.range(KEYS.services)
    digests = {r.name: r.spec.image_digest for r in (ServiceRecord.from_json(kv.value) for kv in kvs)}
    assert digests == {"shop_web": DIGEST, "shop_cache": None}
    http.answer = _response(404)
    before, _ = await store.range(KEYS.prefix)
    with pytest.raises(FailedPrecondition, match=r"service 'shop_web' not written: .* HTTP 404"):
        await stacks.deploy(text.replace("web:1", "web:2"), "shop.yaml")
    after, _ = await store.range(KEYS.prefix)
    assert after == before


# -- shoal registry login ---------------------------------------------------------------


def test_login_secret_names_are_secret_names() -> None:
    assert login_secret_name("127.0.0.1:5000") == "registry-127.0.0.1-5000"
    assert login_secret_name("reg.internal") == "registry-reg.internal"
    assert login_secret_name("[::1]:5000") == "registry-1--5000"
    assert check_object_name("secret", login_secret_name("[::1]:5000"))


async def test_the_login_secret_is_used_when_no_pull_secret_is_named() -> None:
    store = MemoryStore()
    http = FakeHttp(
        [
            _response(401, {"WWW-Authenticate": 'Basic realm="r"'}),
            _response(200, {"Docker-Content-Digest": DIGEST}),
        ]
    )
    w = writer(store, FixedHttp(_response(500)))
    w.resolver = Resolver(lambda: http)  # type: ignore[arg-type,return-value]
    config = _config({REG: {"username": "alice", "password": "pw"}, "127.0.0.9:1": {"username": "x"}})
    await w.objects.put("secret", login_secret_name(REG), config, False, w)
    record, _ = await w.apply(f"name: app\nimage: {REG}/app:1\n", "")
    assert record.spec.image_digest == DIGEST and record.spec.image_pull_secret is None
    assert http.sent[1][2]["Authorization"] == "Basic " + base64.b64encode(b"alice:pw").decode()

    files = SecretFiles(store, KEYS, Path("/nonexistent"), w.objects.sealer)
    assert await files.pull_auth(record.spec) == ("alice", "pw")
    assert await files.pull_auth(parse_spec("name: b\nimage: 127.0.0.9:1/app:1\n")) is None  # no login there
    assert await files.pull_auth(parse_spec("name: c\nimage: shoal-demo/web:1\n")) is None  # no registry


# -- a hostile registry: bounded in memory, time and threads -------------------------------


class Hostile:
    """A registry on 127.0.0.1 that answers HEAD 200 with no digest, then `mode`: "endless"
    streams a manifest body without end; "trickle" sends its headers a byte at a time."""

    def __init__(self, mode: str) -> None:
        import socket
        import threading

        self.mode = mode
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        self.server.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: Any) -> None:
        with conn:
            try:
                head = conn.recv(65536)
                if head.startswith(b"HEAD") and self.mode == "endless":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    head = conn.recv(65536)
                if self.mode == "endless":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    chunk = b"%x\r\n%s\r\n" % (65536, b"m" * 65536)
                    while not self.stop.is_set():
                        conn.sendall(chunk)
                else:
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 10_000:
                        if self.stop.wait(0.2):
                            return
                        conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.server.close()


def test_a_manifest_without_end_is_cut_at_the_bound_not_read_into_memory() -> None:
    """Read with `.content`, a registry sending without end grew the daemon by GBs."""
    hostile = Hostile("endless")
    try:
        ref = ImageRef(f"127.0.0.1:{hostile.port}", "team/app", "1", "")
        started = time.monotonic()
        with pytest.raises(ResolveError, match=r"more than 4 MiB|did not answer within"):
            resolve_digest(requests.Session(), ref, None, timeout=3.0)
        assert time.monotonic() - started < 10, "bounded by its deadline, not by the registry"
    finally:
        hostile.close()


async def test_registries_that_trickle_hold_threads_of_their_own_and_never_the_default_ones() -> None:
    """requests' timeout bounds each read, so headers sent a byte every 0.2 s hold a thread
    past it. Those threads were the loop's default executor, which the leader's passes use:
    a few such applies stalled the leader. Now the call answers at its timeout, at most
    LOOKUPS threads are held, the next lookup is refused at once, and to_thread still runs."""
    from node.api.registry import LOOKUPS, Resolver
    from node.model.errors import FailedPrecondition, NotFound

    hostile = Hostile("trickle")
    resolver = Resolver(timeout=0.5)
    spec = parse_spec(f"name: web\nimage: 127.0.0.1:{hostile.port}/team/app:1\n", "web.yaml")

    async def none(name: str) -> bytes:
        raise NotFound(f"secret '{name}' not found")  # no login for this registry

    try:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
        for _ in range(LOOKUPS):
            started = time.monotonic()
            with pytest.raises(FailedPrecondition, match=r"did not answer within 0\.5s"):
                await resolver.pin(spec, none)
            assert time.monotonic() - started < 5, "answered at its timeout, not the registry's pace"
        with pytest.raises(FailedPrecondition, match="image lookups are waiting on slow registries"):
            await resolver.pin(spec, none)
        assert await asyncio.wait_for(asyncio.to_thread(int, "7"), 1.0) == 7
    finally:
        hostile.close()
    # the abandoned lookups end (the registry went away) with no failure left unread: an
    # unread one was logged by asyncio at ERROR when collected, in whichever test ran then
    unread: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: unread.append(context))
    await wait_until(lambda: resolver._busy == 0, 10, message="lookups end when the registry closes")
    gc.collect()
    assert not unread, unread
