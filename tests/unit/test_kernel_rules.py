"""The kernel fast path's pure core (decision 75): which ports and replicas go in the
nftables table, and the table's text, by case tables."""

from __future__ import annotations

import ipaddress

import pytest

from node.model.domain import EndpointRecord, template_hash
from node.model.spec import SpecError, parse_spec
from node.proxy import kernel_rules as k
from node.proxy.routes import Route, kernel_ports, listeners
from tests.factories import make_service

TCP = Route("raw", 18080, 8080, "tcp")


def ep(
    task: str, node: str, address: str, port: int = 8080, service: str = "raw", container: str = ""
) -> EndpointRecord:
    return EndpointRecord(task, service, node, address, port, 8080, {"8080": port}, container)


@pytest.mark.parametrize(
    ("wanted", "kernel", "endpoints", "expected"),
    [
        pytest.param(  # local replicas in task order; the remote one is the userland's
            {18080: TCP},
            {18080: "raw"},
            [ep("a", "n1", "172.17.0.2"), ep("b", "n2", "127.0.0.2", 32768), ep("c", "n1", "172.17.0.3")],
            [k.KernelPort("raw", 18080, (("172.17.0.2", 8080), ("172.17.0.3", 8080)))],
            id="local-only",
        ),
        pytest.param(
            {18080: TCP}, {18080: "raw"}, [ep("b", "n2", "127.0.0.2")], [], id="remote-only: no rule"
        ),
        pytest.param({18080: TCP}, {}, [ep("a", "n1", "172.17.0.2")], [], id="not asked"),
        pytest.param(
            {18080: Route("raw", 18080, 8080, "http")},
            {18080: "raw"},
            [ep("a", "n1", "172.17.0.2")],
            [],
            id="http route",
        ),
        pytest.param(
            {18080: Route("raw", 18080, 8080, "tcp", proxy_v2=True)},
            {18080: "raw"},
            [ep("a", "n1", "172.17.0.2")],
            [],
            id="PROXY v2 port",
        ),
        pytest.param(
            {18080: Route("other", 18080, 8080, "tcp")},
            {18080: "raw"},
            [ep("a", "n1", "172.17.0.2", service="other")],
            [],
            id="the port is another service's",
        ),
        pytest.param({}, {18080: "raw"}, [ep("a", "n1", "172.17.0.2")], [], id="not published"),
        pytest.param(
            {18080: TCP},
            {18080: "raw"},
            [
                ep("a", "n1", "1.2.3.4 } ; flush ruleset"),
                ep("b", "n1", "::1"),
                ep("c", "n1", "172.17.0.9", 0),
            ],
            [],
            id="hostile records left out",
        ),
        pytest.param(  # the mesh rewrote them (node.proxy.direct): container addresses
            {18080: TCP},
            {18080: "raw"},
            [
                ep("a", "n1", "172.17.0.2", container="172.17.0.2"),
                ep("b", "n1", "10.0.0.5", 32768, "raw", "x"),
            ],
            [
                k.KernelPort(
                    "raw", 18080, (("172.17.0.2", 8080), ("10.0.0.5", 32768)), frozenset({"172.17.0.2"})
                )
            ],
            id="container targets told from published ones",
        ),
        pytest.param(  # DNAT to 0.0.0.0 reaches nothing: the listener connects there instead
            {18080: TCP},
            {18080: "raw"},
            [ep("a", "n1", "0.0.0.0", 32768), ep("b", "n1", "172.17.0.3", container="172.17.0.3")],
            [],
            id="a local replica published on 0.0.0.0: the port is the listener's",
        ),
        pytest.param(
            {18080: TCP},
            {18080: "raw"},
            [ep("a", "n2", "0.0.0.0", 32768), ep("b", "n1", "172.17.0.3", container="172.17.0.3")],
            [k.KernelPort("raw", 18080, (("172.17.0.3", 8080),), frozenset({"172.17.0.3"}))],
            id="another node's 0.0.0.0 is not ours",
        ),
    ],
)
def test_plan(
    wanted: dict[int, Route], kernel: dict[int, str], endpoints: list[EndpointRecord], expected: object
) -> None:
    assert k.plan(wanted, kernel, endpoints, "n1") == expected


def test_kernel_ports_from_the_specs() -> None:
    fast = make_service("raw", ports=[{"container": 8080, "published": 18080, "fast_path": "kernel"}])
    slow = make_service("web", ports=[{"container": 80, "published": 18081}])
    assert kernel_ports([fast, slow]) == {18080: "raw"}
    assert set(listeners([fast, slow])) == {18080, 18081}  # the userland listener stays


@pytest.mark.parametrize(
    ("cluster", "node", "expected"),
    [
        ("dev", "n1", "shoal_ports_dev_n1"),
        ("t1a2b3c4d", "n-2", "shoal_ports_t1a2b3c4d_n-2"),
        ("A b", "x;y_z", "shoal_ports_a-b_x-y-z"),
    ],
)
def test_table_names_are_per_cluster_and_node(cluster: str, node: str, expected: str) -> None:
    assert k.table_name(cluster, node) == expected
    assert k.is_table_of(expected, cluster)


@pytest.mark.parametrize(
    "table", ["shoal_ports_dev2_n1", "shoal_ports_dev_n1_x", "shoal_vip_dev_n1", "shoal_ports_dev_", "nat"]
)
def test_a_cluster_owns_only_its_own_tables(table: str) -> None:
    assert not k.is_table_of(table, "dev")  # what `shoal dev` removes at its stop


TWO = k.KernelPort("raw", 18080, (("172.17.0.2", 8080), ("172.17.0.3", 8080)))
ONE = k.KernelPort("db", 15432, (("172.17.0.4", 5432),))


def test_the_whole_table_on_a_loopback_node() -> None:
    assert k.ruleset("shoal_t_n1", "127.0.0.1", [TWO, ONE], ["docker0"]) == (
        "table ip shoal_t_n1\n"
        "flush table ip shoal_t_n1\n"
        "table ip shoal_t_n1 {\n"
        "  counter conn_18080 {\n"
        "  }\n"
        "  counter conn_15432 {\n"
        "  }\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        '    ip daddr 127.0.0.1 tcp dport 18080 counter name "conn_18080" dnat to numgen inc mod 2 map'
        ' { 0 : 172.17.0.2 . 8080, 1 : 172.17.0.3 . 8080 } comment "raw"\n'
        '    ip daddr 127.0.0.1 tcp dport 15432 counter name "conn_15432"'
        ' dnat to 172.17.0.4:5432 comment "db"\n'
        "  }\n"
        "  chain output {\n"
        "    type nat hook output priority -100; policy accept;\n"
        '    ip daddr 127.0.0.1 tcp dport 18080 counter name "conn_18080" dnat to numgen inc mod 2 map'
        ' { 0 : 172.17.0.2 . 8080, 1 : 172.17.0.3 . 8080 } comment "raw"\n'
        '    ip daddr 127.0.0.1 tcp dport 15432 counter name "conn_15432"'
        ' dnat to 172.17.0.4:5432 comment "db"\n'
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        "    ip saddr 127.0.0.0/8 ct status dnat ct original ip daddr 127.0.0.1 meta l4proto tcp"
        " ct original proto-dst { 18080, 15432 } masquerade\n"
        "  }\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        '    iifname { "docker0" } ip daddr 127.0.0.0/8 ct state != { established, related } drop\n'
        "  }\n"
        "}\n"
    )


@pytest.mark.parametrize(
    ("address", "localnet", "present", "absent"),
    [
        (
            "10.0.0.5",
            ["docker0"],
            ["ip daddr 10.0.0.5 tcp dport 18080"],
            ["postrouting", "input", "127.0.0.0/8"],
        ),
        (
            "0.0.0.0",
            [],
            ["fib daddr type local tcp dport 18080", "masquerade"],
            ["ct original ip daddr", "iifname"],
        ),
        ("127.0.0.3", ["br-1", 'x" ; drop', "docker0"], ['iifname { "br-1", "docker0" }'], ['x"']),
    ],
)
def test_the_table_by_address(
    address: str, localnet: list[str], present: list[str], absent: list[str]
) -> None:
    text = k.ruleset("shoal_t_n1", address, [TWO], localnet)
    assert text.startswith("table ip shoal_t_n1\nflush table ip shoal_t_n1\n")  # one transaction
    for part in present:
        assert part in text
    for part in absent:
        assert part not in text


VIPS = [ipaddress.IPv4Network("10.213.0.0/16"), ipaddress.IPv4Network("10.99.1.0/24")]


def test_a_node_on_every_address_leaves_the_vip_ranges_alone() -> None:
    """`fib daddr type local` also matched the VIP range (routed local to the host): a
    VIP port equal to a fast-path port was DNATed to the fast path's replicas."""
    text = k.ruleset("shoal_t_n1", "0.0.0.0", [TWO], vips=VIPS)
    dst = "fib daddr type local ip daddr != { 10.213.0.0/16, 10.99.1.0/24 } tcp dport 18080 counter"
    assert text.count(dst) == 2  # prerouting and output
    assert "!=" not in k.ruleset("shoal_t_n1", "10.0.0.5", [TWO], vips=VIPS)  # one address: no VIP


def test_clients_on_the_replicas_bridges_are_left_to_the_listener() -> None:
    """A container on the replicas' bridge DNATed to a replica there gets the reply over
    the bridge (untranslated without br_netfilter), or needs hairpin when it is the
    replica picked; prerouting skips those interfaces, the host's own clients (output) not."""
    text = k.ruleset("shoal_t_n1", "10.0.0.5", [TWO, ONE], bridges=["br-1", 'x" ; drop', "docker0"])
    pre, out = text.split("chain output")
    assert pre.count('iifname != { "br-1", "docker0" } ip daddr 10.0.0.5 tcp dport') == 2
    assert "iifname" not in out and 'x"' not in text
    assert "iifname" not in k.ruleset("shoal_t_n1", "10.0.0.5", [TWO])


def test_no_port_removes_the_table() -> None:
    assert k.ruleset("shoal_t_n1", "127.0.0.1", []) == "table ip shoal_t_n1\ndelete table ip shoal_t_n1\n"


def test_interfaces_are_the_longest_on_link_prefix() -> None:
    net = ipaddress.IPv4Network
    on_link = [
        (net("172.16.0.0/12"), "wide0"),
        (net("172.17.0.0/16"), "docker0"),
        (net("10.9.0.0/24"), "br-x"),
    ]
    ports = [TWO, k.KernelPort("x", 1, (("10.9.0.7", 80), ("192.168.1.1", 80)))]
    assert k.interfaces(ports, on_link) == ["br-x", "docker0"]
    mixed = k.KernelPort("x", 1, (("10.9.0.7", 80), ("172.17.0.5", 80)), frozenset({"172.17.0.5"}))
    assert k.interfaces([mixed], on_link, containers_only=True) == ["docker0"]  # 10.9.0.7: a host's


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1", True), ("127.3.0.9", True), ("0.0.0.0", True), ("10.0.0.1", False), ("::1", False)],
)
def test_loopback_clients(address: str, loopback: bool) -> None:
    assert k.loopback_clients(address) is loopback


# -- the spec ---------------------------------------------------------------------------

BASE = "name: db\nimage: x:1\nports:\n  - {container: 80, published: 18080"


@pytest.mark.parametrize(
    ("port", "extra", "message"),
    [
        (
            ", protocol: http, fast_path: kernel}",
            "",
            "<spec>:4:55: ports[0].fast_path: the kernel fast path carries tcp ports only",
        ),
        (
            ", protocol: grpc, fast_path: kernel}",
            "",
            "ports[0].fast_path: the kernel fast path carries tcp ports only",
        ),
        (", fast_path: fast}", "", "<spec>:4:39: ports[0].fast_path: must be 'kernel'"),
        (
            ", fast_path: kernel}",
            "proxy_protocol: [80]\n",
            "ports[0].fast_path: the kernel fast path forwards packets",
        ),
    ],
)
def test_the_spec_refuses_what_the_kernel_cannot_do(port: str, extra: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(BASE + port + "\n" + extra)
    assert message in str(err.value)


def test_a_kernel_port_needs_published() -> None:
    with pytest.raises(
        SpecError, match=r"ports\[0\]\.fast_path: the kernel fast path works on a published port"
    ):
        parse_spec("name: db\nimage: x:1\nports: [{container: 80, fast_path: kernel}]\n")


def test_turning_the_kernel_path_on_replaces_no_replica() -> None:
    on = parse_spec(BASE + ", fast_path: kernel}\n")
    off = parse_spec(BASE + "}\n")
    other = parse_spec(BASE.replace("18080", "18081") + "}\n")
    assert on.ports[0].fast_path == "kernel" and off.ports[0].fast_path is None
    assert template_hash(on) == template_hash(off) != template_hash(other)


def test_the_counters_read_back_from_nft_json() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"counter": {"family": "ip", "name": "conn_18080", "table": "t", "packets": 30, "bytes": 1800}},
            {"counter": {"family": "ip", "name": "conn_15432", "table": "t", "packets": 0, "bytes": 0}},
            {"counter": {"family": "ip", "name": "other", "packets": 7}},  # not ours
            {"counter": {"family": "ip", "name": "conn_1", "packets": "7"}},  # not a number
            {"counter": "conn_18080"},  # a rule's reference, not an object
            "junk",
        ]
    }
    assert k.counts(listing) == {18080: 30, 15432: 0}
    assert k.counts({}) == {} and k.counts([]) == {} and k.counts({"nftables": "x"}) == {}


def test_a_counter_is_named_per_port_and_shared_by_both_hooks() -> None:
    text = k.ruleset("shoal_t_n1", "10.0.0.5", [TWO])
    assert text.count("counter conn_18080 {") == 1  # declared once: kept across swaps
    assert text.count('counter name "conn_18080"') == 2  # prerouting and output
