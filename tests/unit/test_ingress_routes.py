"""The ingress route table (node.proxy.ingress_routes) and the spec's `ingress` rules, by table."""

from __future__ import annotations

from typing import Any

import pytest

from node.model.domain import ServiceRecord
from node.model.spec import SpecError, parse_spec
from node.proxy.ingress_routes import (
    Answer,
    Target,
    authority_of,
    build,
    conflict,
    covers,
    decide,
    forwarding,
    host_of,
    path_of,
)
from tests.factories import make_service


def svc(name: str, *rules: dict[str, Any], ports: tuple[int, ...] = (8080,)) -> ServiceRecord:
    return make_service(name, ports=[{"container": p} for p in ports], ingress=list(rules))


API = svc("api", {"host": "app.example.test", "path": "/api", "port": 8080})
WEB = svc(
    "web",
    {"host": "app.example.test", "port": 8080, "tls": {"redirect": True}},
    {"host": "app.example.test", "path": "/api/v2", "port": 9090},
    {"host": "www.example.test", "port": 8080, "tls": {"secret": "www-tls"}},
    ports=(8080, 9090),
)
TABLE = build([WEB, API])


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    [
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/api", "/api", True),
        ("/api", "/api/", True),
        ("/api", "/api/users", True),
        ("/api", "/apix", False),
        ("/api", "/ap", False),
        ("/api/v2", "/api/v2/x", True),
        ("/api/v2", "/api/v3", False),
    ],
)
def test_a_prefix_matches_segment_wise(prefix: str, path: str, expected: bool) -> None:
    assert covers(prefix, path) is expected


@pytest.mark.parametrize(
    ("host", "url", "https", "expected"),
    [
        # longest prefix wins; the rest of the host goes to its `/` rule
        (b"app.example.test", b"/api/users?x=1", True, Target("api", 8080)),
        (b"app.example.test", b"/api/v2/items", True, Target("web", 9090)),
        (b"app.example.test", b"/api/v2", True, Target("web", 9090)),
        (b"app.example.test", b"/apiary", True, Target("web", 8080, True)),
        (b"app.example.test", b"/", True, Target("web", 8080, True)),
        # the Host header: case, port and a trailing dot do not matter
        (b"APP.Example.Test:8443", b"/api", True, Target("api", 8080)),
        (b"app.example.test.", b"/api", True, Target("api", 8080)),
        # an absolute-form target naming the Host's host: its path is routed
        (b"app.example.test", b"http://App.Example.Test:443/api/x", True, Target("api", 8080)),
        # the redirect is of the rule that matched, and only on plain HTTP
        (b"app.example.test", b"/api/x", False, Target("api", 8080)),
        (b"www.example.test", b"/x", False, Target("web", 8080)),
    ],
)
def test_decide_routes_by_host_and_longest_prefix(
    host: bytes, url: bytes, https: bool, expected: Target
) -> None:
    assert decide(TABLE, host, url, https, 443) == expected


def test_unknown_host_missing_host_and_unknown_path_are_answered_clearly() -> None:
    unknown = decide(TABLE, b"nope.example.test", b"/", True, 443)
    assert unknown == Answer(
        404, b"shoal ingress: no service is routed for host 'nope.example.test' on this cluster\n"
    )
    assert decide(TABLE, None, b"/", True, 443) == Answer(
        400, b"shoal ingress: the request has no Host header: which site is it for?\n"
    )
    assert decide(TABLE, b"", b"/", True, 443).status == 400  # type: ignore[union-attr]
    only_api = build([API])
    missing = decide(only_api, b"app.example.test", b"/web", True, 443)
    assert missing == Answer(
        404, b"shoal ingress: no route for app.example.test/web (paths of app.example.test: /api)\n"
    )


@pytest.mark.parametrize(
    ("url", "https_port", "location"),
    [
        (b"/", 443, "https://app.example.test/"),
        (b"/page?q=1", 443, "https://app.example.test/page?q=1"),
        (b"/page?q=1", 8443, "https://app.example.test:8443/page?q=1"),
        (b"http://app.example.test/x?y", 443, "https://app.example.test/x"),
    ],
)
def test_a_redirect_rule_sends_plain_http_to_https(url: bytes, https_port: int, location: str) -> None:
    answer = decide(TABLE, b"app.example.test:80", url, False, https_port)
    assert isinstance(answer, Answer)
    assert (answer.status, answer.location) == (308, location)


def test_certificates_per_host_and_first_by_name_keeps_a_doubly_claimed_route() -> None:
    assert TABLE.certs == {"app.example.test": None, "www.example.test": "www-tls"}
    again = svc("zzz", {"host": "app.example.test", "path": "/api", "port": 8080})
    first = svc("aaa", {"host": "app.example.test", "path": "/api", "port": 8080})
    table = build([again, API, first])
    assert table.match("app.example.test", "/api") == Target("aaa", 8080)
    assert TABLE.targets() == {
        Target("api", 8080),
        Target("web", 9090),
        Target("web", 8080, True),
        Target("web", 8080),
    }
    # a host whose secret is set in one service's rule uses it, whatever the other rules say
    tls = svc("tls", {"host": "app.example.test", "path": "/tls", "port": 8080, "tls": {"secret": "app"}})
    assert build([tls, WEB, API]).certs["app.example.test"] == "app"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            svc("other", {"host": "app.example.test", "path": "/api", "port": 8080}),
            "ingress[0]: app.example.test/api is already routed to service 'api'; choose another host or "
            "path, or remove it from 'api'",
        ),
        (
            svc("other", {"host": "app.example.test", "path": "/api/", "port": 8080}),  # the same prefix
            "ingress[0]: app.example.test/api is already routed to service 'api'; choose another host or "
            "path, or remove it from 'api'",
        ),
        (
            svc("other", {"host": "www.example.test", "path": "/o", "port": 8080, "tls": {"secret": "x"}}),
            "ingress[0].tls.secret: host www.example.test already uses TLS secret 'www-tls' (service 'web'); "
            "one certificate per host: use 'www-tls' or no secret",
        ),
        (svc("other", {"host": "app.example.test", "path": "/other", "port": 8080}), None),
        (
            svc(
                "other",
                {"host": "www.example.test", "path": "/o", "port": 8080, "tls": {"secret": "www-tls"}},
            ),
            None,
        ),
        (svc("api", {"host": "app.example.test", "path": "/api", "port": 8080}), None),  # itself: an update
        (make_service("plain"), None),
    ],
)
def test_conflict_names_the_other_service(spec: ServiceRecord, problem: str | None) -> None:
    assert conflict(spec.spec, [API, WEB]) == problem


@pytest.mark.parametrize(
    ("value", "host"),
    [
        (b"a.test", "a.test"), (b"A.Test:80", "a.test"), (b" a.test. ", "a.test"), (b"[::1]:8080", "[::1]"),
        (b"a.test:", "a.test"),
        # anything after the host but a port: unusable (it was routed as `a.test` and
        # reached the backend as its Host, `a.test:@evil.test`)
        (b"a.test:@evil.test", ""), (b"a.test:80:81", ""), (b"a.test:123456", ""), (b"a.test:\xb2", ""),
        (b"[::1]x", ""), (b"[::1", ""), (b"[]", ""),
    ],
)  # fmt: skip
def test_host_of(value: bytes, host: str) -> None:
    assert host_of(value) == host


@pytest.mark.parametrize(
    ("url", "authority"),
    [(b"/p", None), (b"*", None), (b"http://h:8/p?q", b"h:8"), (b"https://h?q", b"h"), (b"http://h", b"h"),
     (b"1a://h/", None)],
)  # fmt: skip
def test_authority_of(url: bytes, authority: bytes | None) -> None:
    assert authority_of(url) == authority


def test_an_absolute_form_target_must_name_the_host_of_the_host_header() -> None:
    """The backend reads the target's host (RFC 9112 3.2.2), the entrance routed on Host's."""
    assert decide(TABLE, b"app.example.test", b"http://APP.example.test:80/x", True, 443) == Target(
        "web", 8080, redirect=True
    )
    wrong = decide(TABLE, b"app.example.test", b"http://evil.test/reset", False, 443)
    assert isinstance(wrong, Answer) and wrong.status == 400 and b"another host" in wrong.body
    bad = decide(TABLE, b"app.example.test:@evil.test", b"/", False, 443)
    assert isinstance(bad, Answer) and bad.status == 400 and b":port" in bad.body
    # HTTP/1.0 may send no Host: the target's authority is the host
    assert decide(TABLE, None, b"http://app.example.test/x", True, 443) == Target("web", 8080, redirect=True)


def test_a_connection_made_for_one_host_by_sni_serves_only_that_host() -> None:
    """SNI www.example.test gave www's certificate: Host app.example.test on that
    connection is a 421 (not app's service); the same host in any spelling is served."""
    wrong = decide(TABLE, b"app.example.test", b"/api", True, 443, sni="www.example.test")
    assert isinstance(wrong, Answer) and wrong.status == 421
    assert b"'www.example.test'" in wrong.body and b"new connection for 'app.example.test'" in wrong.body
    absolute = decide(TABLE, None, b"http://app.example.test/api", True, 443, sni="www.example.test")
    assert isinstance(absolute, Answer) and absolute.status == 421
    for host in (b"www.example.test", b"WWW.example.test.:8443"):
        assert decide(TABLE, host, b"/x", True, 443, sni="www.example.test") == Target("web", 8080)
    # without SNI (or a name served the default certificate): every host, as before
    assert decide(TABLE, b"app.example.test", b"/api", True, 443) == Target("api", 8080)
    # an unusable Host is still the 400 it was
    assert decide(TABLE, None, b"/", True, 443, sni="www.example.test").status == 400  # type: ignore[union-attr]


def test_a_redirect_on_a_node_without_the_tls_entrance_goes_to_the_default_port() -> None:
    answer = decide(TABLE, b"app.example.test", b"/x?y", False, 0)
    assert isinstance(answer, Answer) and answer.location == "https://app.example.test/x?y"


@pytest.mark.parametrize(
    ("name", "dropped"),
    [(b"forwarded", True), (b"x-real-ip", True), (b"x-forwarded-port", True), (b"x_forwarded_host", True),
     (b"x-forwarded-prefix", True), (b"x-forwardedx", False), (b"host", False), (b"x-request-id", False)],
)  # fmt: skip
def test_forwarding_headers_are_the_entrances_own(name: bytes, dropped: bool) -> None:
    assert forwarding(name) is dropped


@pytest.mark.parametrize(
    ("url", "path"),
    [(b"/a/b?c#d", "/a/b"), (b"http://h/x/y?z", "/x/y"), (b"http://h", "/"), (b"*", "/"), (b"/", "/")],
)
def test_path_of(url: bytes, path: str) -> None:
    assert path_of(url) == path


BASE = "name: web\nimage: x:1\nports: [{container: 8080}]\n"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("[{host: App.test, port: 8080}]", "ingress[0].host: must be a lowercase DNS name"),
        ("[{host: localhost, port: 8080}]", "ingress[0].host: must be a lowercase DNS name"),
        ("[{host: '*.a.test', port: 8080}]", "ingress[0].host: must be a lowercase DNS name"),
        ("[{host: a.test, port: 9}]", "ingress[0].port: port 9 is not a container port of this service"),
        ("[{host: a.test, path: api, port: 8080}]", "ingress[0].path: must be a URL path starting with '/'"),
        ("[{host: a.test, path: '/a?b', port: 8080}]", "ingress[0].path: must be a URL path"),
        ("[{host: a.test, path: /a/../b, port: 8080}]", "ingress[0].path: must be a plain path prefix"),
        (
            "[{host: a.test, port: 8080}, {host: a.test, path: /, port: 8080}]",
            "ingress[1]: a.test/ is already",
        ),
        (
            "[{host: a.test, port: 8080, tls: {secret: x}},"
            " {host: a.test, path: /y, port: 8080, tls: {secret: y}}]",
            "ingress[1].tls: host a.test has TLS secret 'x' in ingress[0]",
        ),
        (
            "[{host: a.test, port: 8080, tls: {secret: 'bad name'}}]",
            "ingress[0].tls.secret: must be a secret",
        ),
        ("[{host: a.test, port: 8080, tls: {redirect: yes please}}]", "ingress[0].tls.redirect"),
        ("[{host: a.test, port: 8080, weight: 2}]", "ingress[0].weight"),
        ("[{host: a.test, port: 8080, sticky: 1}]", "ingress[0].sticky"),
        ("[]", "ingress"),
    ],
)
def test_bad_ingress_rules_are_refused_naming_the_field(rules: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(BASE + "ingress: " + rules, "web.yaml")
    assert message in str(caught.value)


def test_a_rule_is_normalised_and_round_trips() -> None:
    spec = parse_spec(BASE + "ingress: [{host: a.test, path: /api/, port: 8080, tls: {redirect: true}}]")
    assert spec.ingress is not None
    rule = spec.ingress[0]
    assert (rule.host, rule.path, rule.port, rule.tls and rule.tls.redirect) == ("a.test", "/api", 8080, True)
    assert parse_spec(BASE).ingress is None
    sticky = svc("s", {"host": "s.test", "port": 8080, "sticky": True})
    assert decide(build([sticky]), b"s.test", b"/", False, 443) == Target("s", 8080, False, True)
