"""The web dashboard against a real dev cluster (issue 14, item 6): 401 without a login,
a viewer token works, no secret in any answer, and headless Chromium sees the nodes and
services, sees a scale without reloading, CPU and memory per task, the cluster's traffic
of a service in its charts (requests sent through another node's proxy show on node 1's
page), a log tail, and leaves a screenshot."""

from __future__ import annotations

import contextlib
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.dev.devcluster import DevCluster, free_port_on_all
from node.security.files import NodeFiles
from tests.helpers import wait_until_sync
from tests.integration.browser import Browser

SECRET = "dash-hunter2-not-shown"
HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
CHATTY = """\
name: chatty
image: shoal-demo/base:1
command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo \\"chatty line $i\\"; sleep 0.5; done"]
"""


def service(published: int) -> str:
    return f"""\
name: web
image: shoal-demo/web:1
replicas: 2
ports:
  - {{container: 8080, published: {published}, protocol: http}}
secret_env: {{DB_PASSWORD: {SECRET}}}
"""


def _get(cluster: DevCluster, path: str, token: str = "") -> tuple[int, bytes]:
    trust = ssl.create_default_context(cafile=str(NodeFiles.of(cluster.members[0].data_dir).ca_cert))
    trust.check_hostname = False  # the certificate names the node's address; checked by the CA only
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"https://127.0.0.1:{cluster.dashboard_port}{path}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=10, context=trust
        ) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_dashboard(make_cluster: Callable[..., DevCluster], tmp_path: Path) -> None:
    cluster = make_cluster(3)
    admin = cluster.client()
    published = free_port_on_all(HOSTS)
    admin.apply(service(published))
    admin.apply(CHATTY)
    viewer = admin.create_token("viewer", "dashboard test").token
    wait_until_sync(
        lambda: sum(t.state == "running" for t in admin.list_tasks("web")) == 2 or None,
        60,
        0.2,
        "web running 2 replicas",
    )

    # no login: 401, for the page and every view
    views = ("/api/overview", "/api/services", "/api/logs?service=web", "/api/usage", "/api/traffic")
    for path in ("/", *views):
        status, _ = _get(cluster, path)
        assert status == 401, path
    status, _ = _get(cluster, "/api/overview", "shoal_aaaaaaaaaa_" + "a" * 52)
    assert status == 401

    # a viewer token works; no answer holds the secret's value
    answers: dict[str, Any] = {}
    for path in (
        "/api/overview",
        "/api/services",
        "/api/tasks",
        "/api/events?limit=200",
        "/api/logs?service=web",
        "/api/usage",
        "/api/traffic",
    ):
        status, body = _get(cluster, path, viewer)
        assert status == 200, (path, body[:300])
        assert SECRET.encode() not in body, path
        answers[path] = json.loads(body)
    overview = answers["/api/overview"]
    assert sorted(n["id"] for n in overview["nodes"]) == ["n1", "n2", "n3"]
    assert overview["leader"] in {"n1", "n2", "n3"} and overview["viewer"]["role"] == "viewer"
    assert sorted(s["name"] for s in overview["services"]) == ["chatty", "web"]
    status, page = _get(cluster, "/", viewer)
    assert status == 200 and SECRET.encode() not in page

    # the page in headless Chromium: login through the URL fragment, then live updates
    browser = Browser(tmp_path / "chromium")
    try:
        browser.open(f"https://127.0.0.1:{cluster.dashboard_port}/#token={viewer}")
        nodes_js = "[...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.node).join(',')"
        try:
            wait_until_sync(lambda: browser.evaluate(nodes_js) == "n1,n2,n3" or None, 30, 0.2, "nodes shown")
        except (AssertionError, TimeoutError) as e:  # say what the page says: its status, the login form
            seen = browser.evaluate(
                "JSON.stringify({url: location.href, ready: document.readyState, nodes: " + nodes_js + ","
                " status: (document.getElementById('status') || {}).textContent,"
                " login: (document.getElementById('login-error') || {}).textContent})"
            )
            raise AssertionError(f"{e}; the page: {seen}") from None
        replicas_js = "(document.querySelector('tr[data-service=\"web\"] .replicas') || {}).textContent"
        wait_until_sync(lambda: browser.evaluate(replicas_js) == "2/2" or None, 30, 0.2, "web 2/2 shown")
        assert browser.evaluate("document.querySelectorAll('#nodes .leader').length") == 3
        assert "leader" in browser.evaluate("document.querySelector('#nodes').innerText")
        assert SECRET not in browser.evaluate("document.documentElement.outerHTML")
        updates = int(browser.evaluate("document.body.dataset.updates"))
        started = time.monotonic()
        admin.scale("web", 3)
        wait_until_sync(lambda: browser.evaluate(replicas_js) == "3/3" or None, 60, 0.2, "web 3/3 shown")
        print(f"dashboard: the scale to 3 showed after {time.monotonic() - started:.1f}s without a reload")
        assert int(browser.evaluate("document.body.dataset.updates")) > updates  # polled, not reloaded
        tasks_js = (
            "[...document.querySelectorAll('#tasks tbody tr[data-task]')]"
            ".filter(r => r.innerText.startsWith('web.')).length"
        )
        wait_until_sync(lambda: browser.evaluate(tasks_js) == 3 or None, 30, 0.2, "3 tasks shown")
        # usage per task: CPU and memory (use / limit) of every web task, sampled on its node
        usage_js = (
            "[...document.querySelectorAll('#tasks tbody tr[data-task]')]"
            ".filter(r => r.innerText.startsWith('web.'))"
            ".filter(r => /%$/.test(r.querySelector('.cpu').textContent)"
            " && / MiB \\/ .* MiB$/.test(r.querySelector('.memory').textContent)).length"
        )
        wait_until_sync(lambda: browser.evaluate(usage_js) == 3 or None, 60, 0.5, "usage of 3 web tasks")
        # requests through node 2's proxy (not node 1's, whose page this is) show in web's
        # charts: the page draws the cluster's traffic (bounded: 40 requests)
        assert _get(cluster, "/api/traffic", viewer)[0] == 200
        for _ in range(40):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.2:{published}/", timeout=2).close()
        chart_js = (
            "[...document.querySelectorAll('tr[data-service=\"web\"] polyline.{}')]"
            ".some(l => l.getAttribute('points').split(' ').some(p => parseFloat(p.split(',')[1]) < 30))"
        )
        wait_until_sync(
            lambda: browser.evaluate(chart_js.format("rate")) or None, 30, 0.2, "n2's requests in web's chart"
        )
        assert browser.evaluate(chart_js.format("latency"))  # a mean latency above 0 was drawn
        _, traffic = _get(cluster, "/api/traffic", viewer)
        counted = json.loads(traffic)
        assert counted["nodes"] == ["n1", "n2", "n3"] and counted["notices"] == []
        assert sum(p["rate"] for p in counted["services"]["web"]) > 0
        # the log tail of a chosen service
        browser.evaluate(
            "const s = document.getElementById('log-service'); s.value = 'chatty';"
            "s.dispatchEvent(new Event('change'))"
        )
        logs_js = "document.getElementById('logs').textContent"
        wait_until_sync(lambda: "chatty line" in (browser.evaluate(logs_js) or "") or None, 30, 0.2, "logs")
        shot = browser.screenshot(tmp_path / "dashboard.png")
    finally:
        browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    print(f"dashboard screenshot: {shot}")
