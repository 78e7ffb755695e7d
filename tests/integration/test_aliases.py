"""Network aliases and user labels (decision 73) on a real 2-node `shoal dev` cluster, from
a Compose file: `db` holds the aliases `database` and `db-primary` on `backnet`. From
`api` (on backnet) the aliases resolve to db's own VIP and are served by both replicas,
as the name is; from `front` (frontnet only) they are NXDOMAIN and the VIP resets. A
second service asking for `database` on that network is refused naming `db`, and nothing
is written. `docker inspect` shows the Compose labels on db's containers beside shoal's
own, and `service inspect` the service's `deploy.labels`. Waits poll with a deadline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner

from node.cli.main import cli
from node.dev.devcluster import DevCluster
from node.runtime.base import LABELS
from tests.helpers import wait_until_sync
from tests.integration.test_networks import one, sh

pytestmark = pytest.mark.integration

SHOP = """\
name: shop
services:
  db:
    image: shoal-demo/web:1
    expose: ["8080"]
    networks:
      backnet:
        aliases: [database, db-primary]
    labels:
      com.example.team: data
      com.example.tier: "1"
    deploy:
      replicas: 2
      labels: {owner: team-a}
  api:
    image: shoal-demo/base:1
    command: ["sleep", "100000"]
    networks: [frontnet, backnet]
  front:
    image: shoal-demo/base:1
    command: ["sleep", "100000"]
    networks: [frontnet]
networks:
  frontnet: {}
  backnet: {}
"""

THIEF = """\
name: thief
image: shoal-demo/web:1
ports: [{container: 8080}]
networks: [{name: shop_backnet, aliases: [cache, database]}]
"""


def address(out: str) -> str:
    return out.rsplit("Address:", 1)[-1].split()[0]


def test_an_alias_resolves_and_connects_on_its_network_only(
    make_cluster: Callable[..., DevCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(2)
    runner = CliRunner(env={"SHOAL_CONTEXT_FILE": str(cluster.context_file)})

    def shoal(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, ["--addr", cluster.addr, *args])
        return result.exit_code, result.output

    (tmp_path / "shop.yaml").write_text(SHOP)
    code, out = shoal("stack", "deploy", "-c", str(tmp_path / "shop.yaml"), "shop")
    assert code == 0, out
    assert "labels" not in out and "aliases" not in out, out  # honoured, not ignored with a warning
    api, front = (wait_until_sync(lambda s=s: one(cluster, s), 60) for s in ("shop_api", "shop_front"))

    def get(container: docker.models.containers.Container, target: str) -> str:
        return sh(container, f"timeout 5 wget -qO- http://{target}:8080/ 2>&1 || echo FAILED")[1].strip()

    wait_until_sync(
        lambda: get(api, "database").startswith("web v1") or None, 60, 0.5, "api reaches database"
    )
    code, out = sh(api, "nslookup db")
    vip = address(out)
    assert code == 0 and vip.startswith(cluster.vip_range.rsplit(".", 1)[0] + "."), out
    for name in ("database", "db-primary", "shop.database", "database.shop.shoal"):
        code, out = sh(api, f"nslookup {name}")
        assert code == 0 and address(out) == vip, (name, out)
    # balanced as the name is: both replicas (on either node) answer through the alias
    seen = set()

    def both() -> bool | None:
        seen.add(get(api, "db-primary"))
        return len({s for s in seen if s.startswith("web v1 on ")}) == 2 or None

    wait_until_sync(both, 60, 0.1, "both replicas answer through the alias")

    # front (frontnet only): the alias is no name there, and the VIP resets it
    for name in ("database", "db-primary", "shop.database", "database.shop.shoal"):
        code, out = sh(front, f"nslookup {name}")
        assert code != 0 and vip not in out, (name, out)
    refused = get(front, vip)
    assert refused.endswith("FAILED") and "reset by peer" in refused, refused

    # another service asking for the alias on shop_backnet: refused naming db, nothing written
    (tmp_path / "thief.yaml").write_text(THIEF)
    code, out = shoal("service", "apply", "-f", str(tmp_path / "thief.yaml"), "--detach")
    assert code != 0, out
    assert "alias 'database' on network 'shop_backnet' is already held by service 'shop_db'" in out, out
    code, out = shoal("service", "inspect", "thief")
    assert code != 0 and "not found" in out, out
    code, out = sh(api, "nslookup database")
    assert code == 0 and address(out) == vip, out
    code, out = sh(api, "nslookup cache")  # the free alias of the refused apply was not claimed either
    assert code != 0, out

    # `shoal resolve` knows the alias too: db's replicas, and whose alias it is on which network
    code, out = shoal("resolve", "database", "-o", "json")
    assert code == 0, out
    answer = json.loads(out)
    assert (answer["name"], answer["alias"], answer["alias_networks"]) == (
        "shop_db",
        "database",
        ["shop_backnet"],
    )
    assert len(answer["endpoints"]) == 2, answer
    code, out = shoal("resolve", "cache")
    assert code != 0 and "service 'cache' not found, nor a network alias" in out, out

    # the Compose labels are on db's containers, beside shoal's own; deploy.labels on the service
    client = docker.from_env()
    try:
        filters = {"label": [f"{LABELS.CLUSTER}={cluster.cluster}", f"{LABELS.SERVICE}=shop_db"]}
        containers = client.containers.list(filters=filters)
        assert len(containers) == 2
        for c in containers:
            labels = c.attrs["Config"]["Labels"]
            assert labels["com.example.team"] == "data" and labels["com.example.tier"] == "1", labels
            assert labels[LABELS.SERVICE] == "shop_db" and "owner" not in labels, labels
        by_label = client.containers.list(
            filters={"label": ["com.example.team=data", f"{LABELS.CLUSTER}={cluster.cluster}"]}
        )
        assert {c.id for c in by_label} == {c.id for c in containers}
    finally:
        client.close()
    code, out = shoal("service", "inspect", "shop_db", "-o", "json")
    assert code == 0, out
    detail = json.loads(out)
    assert detail["labels"] == {"owner": "team-a"}
    assert detail["spec"]["labels"] == {"com.example.team": "data", "com.example.tier": "1"}
    assert detail["spec"]["networks"] == [{"name": "backnet", "aliases": ["database", "db-primary"]}]
