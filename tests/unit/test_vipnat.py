"""The kernel path's table (node.proxy.vipnat, decision 74): which VIP ports get a DNAT
rule, and the nft text, including what hostile values in etcd or the engine become."""

from __future__ import annotations

import pytest

from node.model.domain import EndpointRecord
from node.proxy.vipnat import Rule, VipPort, choose, removal, script, table_name

WEB = VipPort("app_web", "10.213.0.16", 8080)


def ep(
    task: str, address: str, node: str = "n1", service: str = "app_web", port: int = 8080
) -> EndpointRecord:
    return EndpointRecord(task, service, node, "127.0.0.1", 32000, port, {str(port): 32000}, address)


LOCAL = {"t1": "172.17.0.5", "t2": "172.17.0.4", "t3": "172.17.0.9"}
CLIENTS = ["172.17.0.20", "172.17.0.21"]


@pytest.mark.parametrize(
    ("vp", "endpoints", "local", "sources", "expected"),
    [
        # every replica local: a rule to all of them, in address order, for the allowed clients
        (WEB, [ep("t1", "172.17.0.5"), ep("t2", "172.17.0.4")], LOCAL, CLIENTS,
         Rule("app_web", "10.213.0.16", 8080, ("172.17.0.4", "172.17.0.5"), frozenset(CLIENTS))),
        # other services' replicas are not this VIP's
        (WEB, [ep("t1", "172.17.0.5"), ep("t3", "172.17.0.9", service="db")], LOCAL, CLIENTS,
         Rule("app_web", "10.213.0.16", 8080, ("172.17.0.5",), frozenset(CLIENTS))),
        # http ports too (per connection, as IPVS)
        (VipPort("app_web", "10.213.0.16", 8080, "http"), [ep("t1", "172.17.0.5")], LOCAL, CLIENTS,
         Rule("app_web", "10.213.0.16", 8080, ("172.17.0.5",), frozenset(CLIENTS))),
        # one replica on another host: the whole VIP port stays with the listener (the mesh)
        (WEB, [ep("t1", "172.17.0.5"), ep("t7", "172.17.0.5", node="n2")], LOCAL, CLIENTS,
         "replica t7 is not reachable here by container address (on n2)"),
        # the engine's container has another address than the endpoint says (replaced since)
        (WEB, [ep("t1", "172.17.0.99")], LOCAL, CLIENTS,
         "replica t1 is not reachable here by container address (on n1)"),
        # an agent that predates container addresses
        (WEB, [ep("t1", "")], LOCAL, CLIENTS,
         "replica t1 is not reachable here by container address (on n1)"),
        (VipPort("g", "10.213.0.17", 50051, "grpc"), [], LOCAL, CLIENTS,
         "grpc port: balanced per stream by the mesh"),
        (VipPort("p", "10.213.0.17", 9000, "tcp", proxy_v2=True), [], LOCAL, CLIENTS,
         "proxy_protocol port: the header is written by the mesh"),
        (WEB, [], LOCAL, CLIENTS, "no routable replica"),
        # a replica that does not publish this port is not a target for it
        (WEB, [ep("t1", "172.17.0.5", port=9090)], LOCAL, CLIENTS, "no routable replica"),
        (WEB, [ep("t1", "172.17.0.5")], LOCAL, [], "no container may reach it"),
        # the service's own replicas are no sources: DNAT back to oneself needs a hairpin
        (WEB, [ep("t1", "172.17.0.5"), ep("t2", "172.17.0.4")], LOCAL, ["172.17.0.5", "172.17.0.20"],
         Rule("app_web", "10.213.0.16", 8080, ("172.17.0.4", "172.17.0.5"), frozenset({"172.17.0.20"}))),
        (WEB, [ep("t1", "172.17.0.5")], LOCAL, ["172.17.0.5"], "no container may reach it"),
        # hostile values never reach the text: a source that is no address is dropped...
        (WEB, [ep("t1", "172.17.0.5")], LOCAL, ["1.2.3.4 } ; flush ruleset"], "no container may reach it"),
        (WEB, [ep("t1", "172.17.0.5")], LOCAL, ["bad", "172.17.0.20"],
         Rule("app_web", "10.213.0.16", 8080, ("172.17.0.5",), frozenset({"172.17.0.20"}))),
        # ... and a target or VIP that is none keeps the listener
        (WEB, [ep("t1", "x; flush ruleset")], {"t1": "x; flush ruleset"}, CLIENTS,
         "replica t1 is not reachable here by container address (on n1)"),
        (VipPort("app_web", "10.213.0.16 ; drop", 8080), [ep("t1", "172.17.0.5")], LOCAL, CLIENTS,
         "not a VIP port: 10.213.0.16 ; drop:8080"),
        (VipPort("app_web", "10.213.0.16", 70000), [ep("t1", "172.17.0.5")], LOCAL, CLIENTS,
         "not a VIP port: 10.213.0.16:70000"),
    ],
)  # fmt: skip
def test_choose(
    vp: VipPort,
    endpoints: list[EndpointRecord],
    local: dict[str, str],
    sources: list[str],
    expected: Rule | str,
) -> None:
    assert choose(vp, endpoints, local, sources) == expected


@pytest.mark.parametrize(
    ("cluster", "node", "expected"),
    [
        ("shoal", "node-1", "shoal_vip_shoal_node_1"),
        ("t-3f2a", "127.0.0.2", "shoal_vip_t_3f2a_127_0_0_2"),
        ("c", 'x"; flush ruleset', "shoal_vip_c_x___flush_ruleset"),
    ],
)
def test_table_name_is_per_cluster_and_node_and_safe(cluster: str, node: str, expected: str) -> None:
    assert table_name(cluster, node) == expected


def test_a_long_table_name_is_cut_with_a_hash_that_tells_nodes_apart() -> None:
    a, b = table_name("c" * 40, "node-" + "a" * 40), table_name("c" * 40, "node-" + "a" * 39 + "b")
    assert len(a) == len(b) == 64 and a != b and a.startswith("shoal_vip_ccc")


def test_script_replaces_the_whole_table_in_one_transaction() -> None:
    web = Rule("app_web", "10.213.0.16", 8080, ("172.17.0.4", "172.17.0.5"), frozenset(CLIENTS))
    api = Rule("app_api", "10.213.0.17", 80, ("172.17.0.9",), frozenset(CLIENTS))
    db = Rule("db", "10.213.0.2", 5432, ("172.17.0.7",), frozenset({"172.17.0.21"}))
    text = script("shoal_vip_t_n1", [web, api, db])
    assert text == (
        "table ip shoal_vip_t_n1 {}\n"
        "delete table ip shoal_vip_t_n1\n"
        "table ip shoal_vip_t_n1 {\n"
        "\tset src_0 {\n\t\ttype ipv4_addr\n\t\telements = { 172.17.0.21 }\n\t}\n"
        "\tset src_1 {\n\t\ttype ipv4_addr\n\t\telements = { 172.17.0.20, 172.17.0.21 }\n\t}\n"
        "\tchain prerouting {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        "\t\tip daddr 10.213.0.2 tcp dport 5432 ip saddr @src_0 "
        'counter dnat to numgen inc mod 1 map { 0 : 172.17.0.7 . 5432 } comment "db"\n'
        "\t\tip daddr 10.213.0.16 tcp dport 8080 ip saddr @src_1 "
        "counter dnat to numgen inc mod 2 map { 0 : 172.17.0.4 . 8080, 1 : 172.17.0.5 . 8080 } "
        'comment "app_web"\n'
        "\t\tip daddr 10.213.0.17 tcp dport 80 ip saddr @src_1 "
        'counter dnat to numgen inc mod 1 map { 0 : 172.17.0.9 . 80 } comment "app_api"\n'
        "\t}\n}\n"
    )


def test_no_rules_is_an_empty_chain_and_removal_is_idempotent() -> None:
    text = script("shoal_vip_t_n1", [])
    assert "set " not in text and "dnat" not in text and "chain prerouting" in text
    assert removal("shoal_vip_t_n1") == "table ip shoal_vip_t_n1 {}\ndelete table ip shoal_vip_t_n1\n"


@pytest.mark.parametrize("table", ["", "t; flush ruleset", "a b"])
def test_an_unsafe_table_name_is_refused(table: str) -> None:
    with pytest.raises(ValueError, match="not a safe nft table name"):
        script(table, [])
    with pytest.raises(ValueError, match="not a safe nft table name"):
        removal(table)
